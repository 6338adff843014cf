/*
 * x86-mmu.c: the nested guest's memory, read in L1 after a VM exit.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "fputrace.h"

/*
 * The nested guest's memory, read in L1 after a VM exit. QEMU 10.0's
 * plugin reads translate without the nested page tables (mem_read()), so
 * the walk is done here: the guest's page tables map its virtual address
 * to a guest-physical one, KVM's nested page tables (NPT) map that and
 * every table the walk reads to L1-physical, and L1's direct map makes an
 * L1-physical address readable. The VMCB, where the CPU stored the guest's
 * CR3 and CR4 at the exit, gives the roots (AMD APM vol. 2, appendix B;
 * Linux's struct vmcb_control_area and vmcb_save_area).
 */
#define VMCB_EXITCODE           0x070
#define VMCB_NESTED_CTL         0x090   /* bit 0: nested paging enabled */
#define VMCB_NESTED_CR3         0x0b0
#define VMCB_SAVE_CR4           0x548   /* the save area (0x400) + 0x148 */
#define VMCB_SAVE_CR3           0x550
#define VMCB_SAVE_RIP           0x578
#define X86_PTE_PRESENT         (1ull << 0)
#define X86_PTE_LARGE           (1ull << 7)     /* a 1 GiB or 2 MiB page (PS) */
#define X86_PTE_ADDR            0x000ffffffffff000ull
#define X86_PAGE_SIZE           4096u

static bool x86_l1_phys_read(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                             uint64_t pa, void *out, size_t len)
{
    return mem_read(vs, m->dmap + pa, out, len);
}

static bool x86_npt_translate(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                              uint64_t gpa, uint64_t *pa);

/*
 * A 4- or 5-level walk from root of va; guest_tables: the tables are at
 * guest-physical addresses, each translated through the NPT first.
 */
static bool x86_pt_walk(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                        bool guest_tables, uint64_t root, unsigned levels, uint64_t va,
                        uint64_t *out)
{
    uint64_t table = root & X86_PTE_ADDR;

    for (unsigned level = levels; level >= 1; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t slot = table + ((va >> shift) & 511) * 8, where = slot, entry;

        if ((guest_tables && !x86_npt_translate(vs, m, slot, &where)) ||
            !x86_l1_phys_read(vs, m, where, &entry, sizeof(entry)) ||
            !(entry & X86_PTE_PRESENT)) {
            return false;
        }
        if (level == 1 || (level <= 3 && (entry & X86_PTE_LARGE))) {
            uint64_t offset_mask = (1ull << shift) - 1;
            *out = (entry & X86_PTE_ADDR & ~offset_mask) | (va & offset_mask);
            return true;
        }
        table = entry & X86_PTE_ADDR;
    }
    return false;
}

static bool x86_npt_translate(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                              uint64_t gpa, uint64_t *pa)
{
    if (!m->npt) {
        *pa = gpa;
        return true;
    }
    return x86_pt_walk(vs, m, false, m->ncr3, m->nlevels, gpa, pa);
}

/*
 * The roots of the last VM entry's guest, as the exit left them: L1's
 * direct map at dmap, or in L1's variable at dmap_var; host_la57: L1 runs
 * with 5-level paging, and so do KVM's nested tables.
 */
bool x86_guest_mmu_load(struct vcpu_state *vs, struct x86_guest_mmu *m,
                        uint64_t dmap, uint64_t dmap_var, bool host_la57)
{
    uint64_t vmcb = vs->vmcb, nested_ctl, cr4;

    m->dmap = dmap;
    if (dmap_var && !mem_read(vs, dmap_var, &m->dmap, sizeof(m->dmap))) {
        return false;
    }
    if (!m->dmap || !vmcb ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_NESTED_CTL, &nested_ctl,
                          sizeof(nested_ctl)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_NESTED_CR3, &m->ncr3, sizeof(m->ncr3)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_SAVE_CR4, &cr4, sizeof(cr4)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_SAVE_CR3, &m->cr3, sizeof(m->cr3))) {
        return false;
    }
    m->npt = nested_ctl & 1;
    m->levels = cr4 & X86_CR4_LA57 ? 5 : 4;
    m->nlevels = host_la57 ? 5 : 4;
    return true;
}

/* Why and where the guest left: the VMCB's exit code and the guest's RIP. */
bool x86_vmcb_exit_read(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                        uint64_t *exit_code, uint64_t *rip)
{
    return x86_l1_phys_read(vs, m, vs->vmcb + VMCB_EXITCODE, exit_code,
                            sizeof(*exit_code)) &&
           x86_l1_phys_read(vs, m, vs->vmcb + VMCB_SAVE_RIP, rip, sizeof(*rip));
}

/* The guest's memory at vaddr, through the roots that x86_guest_mmu_load() found. */
bool x86_guest_mem_read(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                        uint64_t vaddr, void *out, size_t len)
{
    uint8_t *dst = out;

    while (len) {
        size_t n = MIN(len, X86_PAGE_SIZE - (vaddr & (X86_PAGE_SIZE - 1)));
        uint64_t gpa, pa;

        if (!x86_pt_walk(vs, m, m->npt, m->cr3, m->levels, vaddr, &gpa) ||
            !x86_npt_translate(vs, m, gpa, &pa) ||
            !x86_l1_phys_read(vs, m, pa, dst, n)) {
            return false;
        }
        vaddr += n;
        dst += n;
        len -= n;
    }
    return true;
}
