/*
 * The cheapest possible TCG plugin: it asks to see every translation block
 * and does nothing with it. bench/overhead runs it beside fputrace, to show
 * what QEMU's plugin machinery costs by itself.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <glib.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static void empty_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED,
                           struct qemu_plugin_tb *tb G_GNUC_UNUSED)
{
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info G_GNUC_UNUSED,
                                           int argc G_GNUC_UNUSED,
                                           char **argv G_GNUC_UNUSED)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, empty_tb_trans);
    return 0;
}
