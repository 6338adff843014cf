"""Who owns the FPU registers, and which saves and restores were needed.

The model is written down in docs/analysis.md. In short: a *context* is a
save buffer, found by address (a task's fpstate, a vCPU's guest fpstate, a
signal frame, init_fpstate). Per CPU, the register file is *synced* with a
context at each save (registers = what was written) and restore (registers =
regs_after_hash). Between two syncs the registers may be *modified*: by the
owner, or by in-kernel FPU use (flag KERNEL_SIMD), which discards them.

Every save and restore gets one class:
  necessary, redundant_save, redundant_restore, lost_state, stale_restore,
  unknown (with the reason).

Everything here is vectorized over the event arrays; Python loops run only
over findings. Nothing is printed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt

U64 = np.uint64
USER_LIMIT = 1 << 47  # addresses below: user space (signal frames)
INIT_FPSTATE_SPAN = 0x3000  # bytes of init_fpstate an address may fall into
MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


# Hash of the AVX upper halves in their init state (all zero), as the plugin
# would compute it over offsets 576..831 (docs/trace-format.md).
AVX_INIT_HASH = sum(_mix64(off << 8) for off in range(576, 832)) & MASK64


class Class(enum.IntEnum):
    NECESSARY = 0
    REDUNDANT_SAVE = 1
    REDUNDANT_RESTORE = 2
    LOST_STATE = 3
    STALE_RESTORE = 4
    UNKNOWN = 5
    NOT_CLASSIFIED = 255  # not a save or restore


class ContextKind(enum.IntEnum):
    TASK = 0
    GUEST = 1
    SIGNAL_FRAME = 2
    INIT = 3


class Unknown(enum.IntEnum):
    """Why a save or restore could not be classified."""

    NONE = 0
    NO_MEMORY_ACCESS = 1  # the instruction moved nothing (e.g. not implemented by TCG)
    FIRST_SIGHT = 2  # the buffer's earlier contents are not in the trace
    NO_PREVIOUS_OWNER = 3  # the registers' earlier owner is not in the trace
    REGISTERS_NOT_READ = 4  # a register hash this decision needs was not read
    MASKS_DIFFER = 5  # the two operations cover different state components
    NESTED_GUEST = 6  # executed inside the L2 guest: the guest kernel's contexts


UNKNOWN_REASONS = {
    Unknown.NO_MEMORY_ACCESS: "no memory access observed (the instruction did not move state)",
    Unknown.FIRST_SIGHT: "first sight of the buffer: what it held before the trace is unknown",
    Unknown.NO_PREVIOUS_OWNER: "first operation on this CPU: the registers' earlier owner "
                               "is unknown",
    Unknown.REGISTERS_NOT_READ: "a register-file hash needed for the decision was not read",
    Unknown.MASKS_DIFFER: "the save and the buffer's last operation cover different "
                          "components",
    Unknown.NESTED_GUEST: "inside the nested guest (its contexts belong to the guest kernel)",
}


@dataclass
class Finding:
    """A lost or stale state: the event that destroyed or bypassed the newer
    state, the context it belonged to, and the events around it."""

    cls: Class
    event: int  # index of the restore that overwrote (lost) or was stale
    context_buffer: int
    last_sync: int  # index of the context's last sync before it (save/restore)
    resumed: int  # lost: index of the restore that resumed the context from its stale buffer
    description: str


@dataclass
class Ownership:
    """Per-event results (arrays aligned with the trace's events) and findings."""

    cls: npt.NDArray[np.uint8]
    unknown_reason: npt.NDArray[np.uint8]
    context_kind: npt.NDArray[np.int8]  # of the event's buffer, -1 for non save/restore
    prev_on_cpu: npt.NDArray[np.int64]  # previous save/restore on the same CPU, or -1
    prev_on_buffer: npt.NDArray[np.int64]  # previous save/restore of the same buffer, or -1
    modified: npt.NDArray[np.bool_]  # registers changed since the previous sync on the CPU
    kernel_use: npt.NDArray[np.bool_]  # in-kernel FPU use since the previous sync on the CPU
    guest_buffers: dict[int, int]  # buffer -> VMCB of the vCPU it holds the state of
    findings: list[Finding] = field(default_factory=list)


def _prev_in_groups(keys: npt.NDArray[np.uint64], idx: npt.NDArray[np.int64]
                    ) -> npt.NDArray[np.int64]:
    """For events idx (in seq order), the previous one with the same key, or -1."""
    order = np.argsort(keys, kind="stable")  # stable: seq order kept inside a key
    sk = keys[order]
    si = idx[order]
    prev_sorted = np.full(len(idx), -1, dtype=np.int64)
    if len(idx) > 1:
        same = sk[1:] == sk[:-1]
        prev_sorted[1:][same] = si[:-1][same]
    out = np.empty(len(idx), dtype=np.int64)
    out[order] = prev_sorted
    return out


def _next_in_groups(keys: npt.NDArray[np.uint64], idx: npt.NDArray[np.int64]
                    ) -> npt.NDArray[np.int64]:
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    si = idx[order]
    next_sorted = np.full(len(idx), -1, dtype=np.int64)
    if len(idx) > 1:
        same = sk[1:] == sk[:-1]
        next_sorted[:-1][same] = si[1:][same]
    out = np.empty(len(idx), dtype=np.int64)
    out[order] = next_sorted
    return out


def _guest_buffers(ev: npt.NDArray[np.void], is_restore: npt.NDArray[np.bool_]
                   ) -> dict[int, int]:
    """Buffers whose contents are in the registers at a VM entry: the last
    restore on that CPU before it loaded the vCPU's guest state."""
    entries = np.flatnonzero(ev["kind"] == fmt.Kind.VM_ENTRY)
    out: dict[int, int] = {}
    if not len(entries):
        return out
    restores = np.flatnonzero(is_restore)
    for cpu in np.unique(ev["vcpu"][entries]):
        r = restores[ev["vcpu"][restores] == cpu]
        e = entries[ev["vcpu"][entries] == cpu]
        if not len(r):
            continue
        pos = np.searchsorted(r, e) - 1
        ok = pos >= 0
        bufs = ev["addr"][r[pos[ok]]]
        vmcbs = ev["addr"][e[ok]]
        # One pass over unique (buffer, vmcb) pairs: few per vCPU.
        for buf, vmcb in set(zip(bufs.tolist(), vmcbs.tolist(), strict=True)):
            out.setdefault(int(buf), int(vmcb))
    return out


def analyze(ev: npt.NDArray[np.void], init_fpstate: int | None = None) -> Ownership:
    """Classify every save and restore of a trace's events (in seq order)."""
    n = len(ev)
    kind = ev["kind"]
    flags = ev["flags"].astype(np.uint32)
    is_save = np.isin(kind, [int(k) for k in fmt.SAVE_KINDS])
    is_restore = np.isin(kind, [int(k) for k in fmt.RESTORE_KINDS])
    moved = (is_save | is_restore) & ((flags & fmt.Flag.MEM_VALID) != 0)
    in_l2 = (flags & fmt.Flag.L2) != 0
    regs_ok = (flags & fmt.Flag.REGS_VALID) != 0
    after_ok = (flags & fmt.Flag.REGS_AFTER_VALID) != 0
    addr = ev["addr"]
    cls = np.full(n, Class.NOT_CLASSIFIED, dtype=np.uint8)
    why = np.zeros(n, dtype=np.uint8)
    cls[(is_save | is_restore) & ~moved] = Class.UNKNOWN
    why[(is_save | is_restore) & ~moved] = Unknown.NO_MEMORY_ACCESS

    # Contexts by buffer address.
    guest = _guest_buffers(ev, moved & is_restore & ~in_l2)
    ctx_kind = np.full(n, -1, dtype=np.int8)
    ctx_kind[moved] = ContextKind.TASK
    if guest:
        ctx_kind[moved & np.isin(addr, np.fromiter(guest, dtype=U64))] = ContextKind.GUEST
    # A user address written by the kernel on behalf of a task: a signal frame.
    ctx_kind[moved & (addr < USER_LIMIT) & ((flags & fmt.Flag.TASK_VALID) != 0)] = \
        ContextKind.SIGNAL_FRAME
    if init_fpstate is not None:
        at_init = (addr >= init_fpstate) & (addr < init_fpstate + INIT_FPSTATE_SPAN)
        ctx_kind[moved & at_init] = ContextKind.INIT

    # L1 operations only; the nested guest's own saves are the guest kernel's.
    op = moved & ~in_l2
    cls[moved & in_l2] = Class.UNKNOWN
    why[moved & in_l2] = Unknown.NESTED_GUEST
    idx = np.flatnonzero(op).astype(np.int64)
    o_save = is_save[idx]

    # Chains: previous operation on the same CPU and on the same buffer.
    prev_cpu = np.full(n, -1, dtype=np.int64)
    prev_buf = np.full(n, -1, dtype=np.int64)
    next_buf = np.full(n, -1, dtype=np.int64)
    prev_cpu[idx] = _prev_in_groups(ev["vcpu"][idx].astype(U64), idx)
    prev_buf[idx] = _prev_in_groups(addr[idx], idx)
    next_buf[idx] = _next_in_groups(addr[idx], idx)

    # The register content each operation leaves behind ("sync").
    sync = np.where(is_save, ev["regs_hash"], ev["regs_after_hash"])
    sync_ok = np.where(is_save, regs_ok, after_ok)

    # Registers modified since the previous sync on the CPU, and by whom.
    p = prev_cpu[idx]
    has_p = p >= 0
    pc_ = np.where(has_p, p, 0)
    known = has_p & sync_ok[pc_] & regs_ok[idx]
    modified = np.zeros(n, dtype=bool)
    modified[idx] = known & (ev["regs_hash"][idx] != sync[pc_])
    # KERNEL_SIMD on any event of the CPU after p, up to and including this one.
    ksimd = ((flags & fmt.Flag.KERNEL_SIMD) != 0).astype(np.int64)
    kernel_use = np.zeros(n, dtype=bool)
    for cpu in np.unique(ev["vcpu"][idx]):
        on_cpu = np.flatnonzero(ev["vcpu"] == cpu)
        csum = np.cumsum(ksimd[on_cpu])
        pos = np.searchsorted(on_cpu, idx[ev["vcpu"][idx] == cpu])
        mine = idx[ev["vcpu"][idx] == cpu]
        pp = p[ev["vcpu"][idx] == cpu]
        ppos = np.searchsorted(on_cpu, np.where(pp >= 0, pp, 0))
        before = np.where(pp >= 0, csum[ppos], 0)
        kernel_use[mine] = (csum[pos] - before) > 0

    owner_same = has_p & (addr[pc_] == addr[idx])
    # What the owner's registers held became garbage when the kernel used them.
    owner_dirty = modified[idx] & ~kernel_use[idx]

    # ---- saves: redundant when the buffer already held these bytes ----
    q = prev_buf[idx]
    has_q = q >= 0
    qc = np.where(has_q, q, 0)
    q_save = is_save[qc]
    # Components each operation covers: RFBM & XCR0; FXSAVE/FXRSTOR always
    # x87|SSE whatever EDX:EAX hold.
    fx = np.isin(kind, [int(fmt.Kind.FXSAVE), int(fmt.Kind.FXRSTOR)])
    covers = np.where(fx, U64(3), ev["value"] & ev["xcr0"])
    mask_s = covers[idx]
    mask_q = covers[qc]
    # Previous op a save: the bytes compare directly.
    same_bytes_save = (ev["mem_hash"][idx] == ev["mem_hash"][qc]) & (mask_s == mask_q)
    # Previous op a restore: registers after it vs registers now (x87/SSE), and
    # the AVX upper halves it loaded (or their init state) vs those written now.
    avx_s = (ev["mem_hash"][idx] - ev["mem_legacy_hash"][idx]).astype(U64)
    avx_q = np.where((ev["xstate_bv"][qc] & U64(4)) != 0,
                     (ev["mem_hash"][qc] - ev["mem_legacy_hash"][qc]).astype(U64),
                     U64(AVX_INIT_HASH))
    wants_avx = (mask_s & U64(4)) != 0
    q_has_avx = (mask_q & U64(4)) != 0
    same_after_restore = (regs_ok[idx] & after_ok[qc]
                          & (ev["regs_hash"][idx] == ev["regs_after_hash"][qc])
                          & (~wants_avx | (avx_s == avx_q)))
    save_cls = np.full(len(idx), Class.NECESSARY, dtype=np.uint8)
    save_why = np.zeros(len(idx), dtype=np.uint8)
    redundant = has_q & np.where(q_save, same_bytes_save, same_after_restore)
    save_cls[redundant] = Class.REDUNDANT_SAVE
    undecidable = has_q & ~redundant & np.where(
        q_save, mask_s != mask_q, ~(regs_ok[idx] & after_ok[qc]) | (wants_avx & ~q_has_avx))
    save_cls[undecidable] = Class.UNKNOWN
    save_why[undecidable] = Unknown.MASKS_DIFFER
    save_why[undecidable & ~q_save & ~(regs_ok[idx] & after_ok[qc])] = Unknown.REGISTERS_NOT_READ
    save_cls[~has_q] = Class.UNKNOWN
    save_why[~has_q] = Unknown.FIRST_SIGHT

    # ---- restores ----
    rest_cls = np.full(len(idx), Class.NECESSARY, dtype=np.uint8)
    rest_why = np.zeros(len(idx), dtype=np.uint8)
    unchanged_by_restore = after_ok[idx] & regs_ok[idx] & (
        ev["regs_after_hash"][idx] == ev["regs_hash"][idx])
    rest_cls[owner_same & known & ~modified[idx] & unchanged_by_restore] = Class.REDUNDANT_RESTORE
    # Stale: the owner's live registers were newer than the buffer restored over
    # them, and the buffer still held what it held at that sync (it was not
    # rewritten by software since, as exec() or sigreturn do with a memory copy).
    buffer_unchanged = after_ok[idx] & sync_ok[pc_] & (ev["regs_after_hash"][idx] == sync[pc_])
    rest_cls[owner_same & owner_dirty & buffer_unchanged
             & (ctx_kind[idx] != ContextKind.INIT)] = Class.STALE_RESTORE
    # Lost: another context's newer registers overwritten without a save, and
    # that context later resumes from its (older) buffer.
    owner_kind = ctx_kind[pc_]
    victim_resumes = has_p & (next_buf[pc_] >= 0)
    nb = np.where(victim_resumes, next_buf[pc_], 0)
    # ... and resumes with exactly the bytes of its last sync: the buffer was
    # not rewritten (a reset on exec would load something else).
    resumes_stale = (victim_resumes & is_restore[nb] & (nb > idx) & after_ok[nb]
                     & sync_ok[pc_] & (ev["regs_after_hash"][nb] == sync[pc_]))
    # The init state is nobody's context: what is built on it belongs to the
    # task that loaded it, and is saved to that task's own buffer if kept.
    lost = has_p & ~owner_same & owner_dirty & (owner_kind != ContextKind.INIT) & resumes_stale
    rest_cls[lost] = Class.LOST_STATE
    no_prev = ~has_p
    rest_cls[no_prev] = Class.UNKNOWN
    rest_why[no_prev] = Unknown.NO_PREVIOUS_OWNER
    needs_regs = has_p & ~known & (rest_cls == Class.NECESSARY)
    rest_cls[needs_regs] = Class.UNKNOWN
    rest_why[needs_regs] = Unknown.REGISTERS_NOT_READ

    cls[idx] = np.where(o_save, save_cls, rest_cls)
    why[idx] = np.where(o_save, save_why, rest_why)

    findings: list[Finding] = []
    for i in np.flatnonzero((cls == Class.LOST_STATE) | (cls == Class.STALE_RESTORE)):
        last = int(prev_cpu[i])
        if cls[i] == Class.LOST_STATE:
            victim = int(addr[last])
            findings.append(Finding(
                Class.LOST_STATE, int(i), victim, last, int(next_buf[last]),
                f"registers of buffer {victim:#x} changed after its last sync and were "
                f"overwritten by a restore of {int(addr[i]):#x} without a save; the context "
                "later resumed from its older buffer"))
        else:
            findings.append(Finding(
                Class.STALE_RESTORE, int(i), int(addr[i]), last, -1,
                f"buffer {int(addr[i]):#x} restored over newer live registers of the same "
                "context"))
    return Ownership(cls, why, ctx_kind, prev_cpu, prev_buf, modified, kernel_use, guest,
                     findings)
