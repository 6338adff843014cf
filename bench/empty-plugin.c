/*
 * The cheapest possible TCG plugin: it asks to see every translation block
 * and does nothing with it. bench/overhead runs it beside fputrace, to show
 * what QEMU's plugin machinery costs by itself.
 *
 * With count=on it also counts each vCPU's instructions the way fputrace
 * does (an inline add of each block's length into a per-vCPU scoreboard,
 * no callback): the least that an exact instruction count costs through
 * the plugin API, measured beside fputrace's icount=on against icount=off.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static bool count;
static struct qemu_plugin_scoreboard *insns;

static void empty_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED, struct qemu_plugin_tb *tb)
{
    if (count) {
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb, QEMU_PLUGIN_INLINE_ADD_U64, qemu_plugin_scoreboard_u64(insns),
            qemu_plugin_tb_n_insns(tb));
    }
}

static void empty_exit(qemu_plugin_id_t id G_GNUC_UNUSED, void *udata G_GNUC_UNUSED)
{
    if (insns) {
        qemu_plugin_scoreboard_free(insns);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info G_GNUC_UNUSED,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        g_auto(GStrv) kv = g_strsplit(argv[i], "=", 2);

        if (strcmp(kv[0], "count") || !kv[1] || !qemu_plugin_bool_parse(kv[0], kv[1], &count)) {
            fprintf(stderr, "emptyplugin: bad option '%s' (count=on|off)\n", argv[i]);
            return -1;
        }
    }
    if (count) {
        insns = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, empty_tb_trans);
    qemu_plugin_register_atexit_cb(id, empty_exit, NULL);
    return 0;
}
