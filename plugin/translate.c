/*
 * translate.c: what translation learns and keeps: the instructions
 * recognised (insn_intern()), the sites after them that need a callback of
 * their own, and the helpers with which an architecture's tb_trans
 * instruments an instruction.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <string.h>

#include "fputrace.h"

/* Touched only under insn_lock. */
GMutex insn_lock;
static GHashTable *insn_table;  /* (vaddr, the architecture's key) -> struct fpu_insn */
static uint64_t site_pc[SITE_TABLE_SIZE];       /* 0: empty slot */
static uint32_t site_types[SITE_TABLE_SIZE];

void translate_init(void)
{
    insn_table = g_hash_table_new_full(g_bytes_hash, g_bytes_equal,
                                       (GDestroyNotify)g_bytes_unref, g_free);
}

void translate_exit(void)
{
    g_hash_table_destroy(insn_table);
    insn_table = NULL;
}

/*
 * The one shared copy of what translation learnt about the instruction at
 * fi->vaddr, by that address and the architecture's key (what else makes
 * the same address mean something else: x86's mode and bytes, arm64's EL
 * and opcode). Under insn_lock.
 */
const struct fpu_insn *insn_intern(const struct fpu_insn *fi, const void *key_bytes,
                                   size_t key_len)
{
    g_autoptr(GByteArray) keybuf = g_byte_array_sized_new(sizeof(fi->vaddr) + key_len);
    g_autoptr(GBytes) key = NULL;
    struct fpu_insn *found;

    g_byte_array_append(keybuf, (const guint8 *)&fi->vaddr, sizeof(fi->vaddr));
    g_byte_array_append(keybuf, key_bytes, key_len);
    key = g_bytes_new(keybuf->data, keybuf->len);
    found = g_hash_table_lookup(insn_table, key);
    if (!found) {
        found = g_memdup2(fi, sizeof(*fi));
        g_hash_table_insert(insn_table, g_bytes_ref(key), found);
    }
    return found;
}

/*
 * Sites are added under insn_lock; a slot's types are set before its pc is
 * published with a release store, so translation looks sites up without a
 * lock. A type added to a published site can be missed by a translation
 * running at that moment: the callback is then absent from that one TB.
 */
uint32_t site_lookup(uint64_t pc)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);
        uint64_t p = __atomic_load_n(&site_pc[slot], __ATOMIC_ACQUIRE);

        if (p == 0) {
            return 0;
        }
        if (p == pc) {
            return __atomic_load_n(&site_types[slot], __ATOMIC_RELAXED);
        }
    }
    return 0;
}

void site_add(uint64_t pc, uint32_t type)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);

        if (site_pc[slot] == pc) {
            __atomic_fetch_or(&site_types[slot], type, __ATOMIC_RELAXED);
            return;
        }
        if (site_pc[slot] == 0) {
            site_types[slot] = type;
            __atomic_store_n(&site_pc[slot], pc, __ATOMIC_RELEASE);
            return;
        }
    }
    /* Table full: these sites go without the follow-up callback. */
}

/*
 * A register at translation time: the CPU is in the mode the TB is for.
 * The buffer is the translating thread's own, freed when it exits. Its
 * length says how much was read, whatever the API returns on success (a
 * byte count in QEMU 10.0, a boolean in later versions).
 */
static GPrivate translation_buf = G_PRIVATE_INIT((GDestroyNotify)g_byte_array_unref);

uint64_t translation_reg_u64(struct qemu_plugin_register *reg)
{
    GByteArray *buf = g_private_get(&translation_buf);
    uint64_t v = 0;

    if (!reg) {
        return 0;
    }
    if (!buf) {
        buf = g_byte_array_new();
        g_private_set(&translation_buf, buf);
    }
    g_byte_array_set_size(buf, 0);
    if (qemu_plugin_read_register(reg, buf) > 0) {
        memcpy(&v, buf->data, MIN((size_t)buf->len, sizeof(v)));
    }
    return v;
}

/*
 * A translated FP/SIMD instruction outside the state handling code: it may
 * change the registers (regs_dirty, for regs=derive), and in the host
 * kernel it is kernel SIMD use. Inline stores, no callback, so that SIMD
 * loops stay at full speed; only the first one after a user entry calls
 * back, to read the registers the task entered with.
 */
void simd_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, bool host_kernel)
{
    if (cfg.derive_regs) {
        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
            insn, QEMU_PLUGIN_INLINE_STORE_U64, inline_entry.regs_dirty, 1);
    }
    if (!host_kernel) {
        return;
    }
    if (cfg.boundaries) {
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            insn, vcpu_simd_after_entry_exec, QEMU_PLUGIN_CB_R_REGS,
            QEMU_PLUGIN_COND_EQ, inline_entry.entry_pending, 1, NULL);
    }
    qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
        insn, QEMU_PLUGIN_INLINE_STORE_U64, inline_entry.kernel_simd, vaddr);
}

/*
 * The instruction being instrumented, as its distance from its block's end
 * (the block's inline add counted it and those after it ahead). A block is
 * translated by one thread: thread-local, no lock.
 */
static __thread uint64_t insn_tail_now;
static __thread const struct qemu_plugin_insn *insn_tail_marked;

void insn_begin(size_t index, size_t n_insns)
{
    insn_tail_now = n_insns - index;
    insn_tail_marked = NULL;
}

/*
 * Every instruction callback that may begin an event is registered here:
 * first an inline store of the instruction's distance from its block's end
 * (once per instruction), so event_begin() knows its instruction count.
 */
void insn_mark(struct qemu_plugin_insn *insn)
{
    if (cfg.icount && insn_tail_marked != insn) {
        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
            insn, QEMU_PLUGIN_INLINE_STORE_U64, inline_entry.insn_tail, insn_tail_now);
        insn_tail_marked = insn;
    }
}

void insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                  void *udata)
{
    insn_mark(insn);
    qemu_plugin_register_vcpu_insn_exec_cb(insn, cb, QEMU_PLUGIN_CB_R_REGS, udata);
}

