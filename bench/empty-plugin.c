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
 * With returns=on it also tests, at the start of every block of kernel
 * code (a negative address), whether a per-vCPU word holds the block's
 * address, and calls back when it does; the word stays 0, so it never
 * does. That is what fputrace's watch for a timed probe's return costs on
 * blocks that are not the return: with count=on, the floor of what
 * fputrace adds to every block it runs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static bool count, returns;
static struct qemu_plugin_scoreboard *insns, *return_due;

static void empty_return_exec(unsigned int vcpu_index G_GNUC_UNUSED,
                              void *udata G_GNUC_UNUSED)
{
}

static void empty_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED, struct qemu_plugin_tb *tb)
{
    if (count) {
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb, QEMU_PLUGIN_INLINE_ADD_U64, qemu_plugin_scoreboard_u64(insns),
            qemu_plugin_tb_n_insns(tb));
    }
    if (returns && qemu_plugin_tb_n_insns(tb) && (qemu_plugin_tb_vaddr(tb) >> 63)) {
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            qemu_plugin_tb_get_insn(tb, 0), empty_return_exec, QEMU_PLUGIN_CB_NO_REGS,
            QEMU_PLUGIN_COND_EQ, qemu_plugin_scoreboard_u64(return_due),
            qemu_plugin_tb_vaddr(tb), NULL);
    }
}

static void empty_exit(qemu_plugin_id_t id G_GNUC_UNUSED, void *udata G_GNUC_UNUSED)
{
    if (insns) {
        qemu_plugin_scoreboard_free(insns);
    }
    if (return_due) {
        qemu_plugin_scoreboard_free(return_due);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info G_GNUC_UNUSED,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        g_auto(GStrv) kv = g_strsplit(argv[i], "=", 2);
        bool *flag = !strcmp(kv[0], "count") ? &count
                     : !strcmp(kv[0], "returns") ? &returns : NULL;

        if (!flag || !kv[1] || !qemu_plugin_bool_parse(kv[0], kv[1], flag)) {
            fprintf(stderr, "emptyplugin: bad option '%s' (count=on|off, returns=on|off)\n",
                    argv[i]);
            return -1;
        }
    }
    if (count) {
        insns = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    }
    if (returns) {
        return_due = qemu_plugin_scoreboard_new(sizeof(uint64_t));
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, empty_tb_trans);
    qemu_plugin_register_atexit_cb(id, empty_exit, NULL);
    return 0;
}
