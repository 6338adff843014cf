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
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt

if TYPE_CHECKING:
    from analyzers.native import Aggregates

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
    guest_buffers: dict[int, int]  # buffer -> VMCB of the vCPU it holds the state of
    findings: list[Finding] = field(default_factory=list)  # in trace order
    findings_total: int = -1  # all of them, if more than are listed
    task_ident: npt.NDArray[np.int64] | None = None  # task_identity(), when computed on the way
    tables: Aggregates | None = None  # the report's tables, when filled on the way

    def __post_init__(self) -> None:
        if self.findings_total < 0:
            self.findings_total = len(self.findings)


def _kind_table(kinds: frozenset[fmt.Kind]) -> npt.NDArray[np.bool_]:
    table = np.zeros(256, dtype=bool)
    table[[int(k) for k in kinds]] = True
    return table


SAVE_TABLE = _kind_table(fmt.SAVE_KINDS)
RESTORE_TABLE = _kind_table(fmt.RESTORE_KINDS)
FX_TABLE = _kind_table(frozenset({fmt.Kind.FXSAVE, fmt.Kind.FXRSTOR}))


def _chain(keys: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions (in seq order) of the previous and next element with the same
    key, or -1: one stable sort."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    prev = np.full(len(keys), -1, dtype=np.int64)
    nxt = np.full(len(keys), -1, dtype=np.int64)
    if len(keys) > 1:
        same = np.flatnonzero(sk[1:] == sk[:-1])
        prev[order[same + 1]] = order[same]
        nxt[order[same]] = order[same + 1]
    return prev, nxt


def _lost_description(victim: int, by: int) -> str:
    return (f"registers of buffer {victim:#x} changed after its last sync and were "
            f"overwritten by a restore of {by:#x} without a save; the context later resumed "
            "from its older buffer")


def _stale_description(buffer: int) -> str:
    return f"buffer {buffer:#x} restored over newer live registers of the same context"


def analyze(ev: npt.NDArray[np.void], init_fpstate: int | None = None,
            tasks: npt.NDArray[np.void] | None = None, tables: bool = False) -> Ownership:
    """Classify every save and restore of a trace's events (in seq order).

    Uses the compiled pass when it is built (analyzers/native), else the
    numpy implementation; both give the same result. With `tasks`, the
    compiled pass also returns each event's task announcement, and with
    `tables` the report's tables (analyzers.native.Aggregates)."""
    from analyzers import native

    if not native.available():
        return analyze_reference(ev, init_fpstate)
    init_lo = init_fpstate or 0
    init_hi = init_lo + INIT_FPSTATE_SPAN if init_fpstate is not None else 0
    empty_tasks = np.empty(0, dtype=fmt.TASK_DTYPE)
    r = native.classify(ev, tasks if tasks is not None else empty_tasks, init_lo, init_hi,
                        AVX_INIT_HASH, tables)
    findings = []
    for event, last, resumed, buffer, c in sorted(r.findings):
        if c == Class.LOST_STATE:
            desc = _lost_description(buffer, int(ev["addr"][event]))
        else:
            desc = _stale_description(buffer)
        findings.append(Finding(Class(c), event, buffer, last, resumed, desc))
    return Ownership(r.cls, r.why, r.ctx, r.guest, findings, r.findings_total,
                     r.ident if tasks is not None else None, r.tables)


def analyze_reference(ev: npt.NDArray[np.void], init_fpstate: int | None = None) -> Ownership:
    """The numpy implementation of analyze(): the specification the compiled
    pass is tested against."""
    n = len(ev)
    kind = ev["kind"]
    flags = ev["flags"]
    is_save_all = SAVE_TABLE[kind]
    is_saverest = is_save_all | RESTORE_TABLE[kind]
    moved_all = is_saverest & ((flags & fmt.Flag.MEM_VALID) != 0)
    in_l2_all = (flags & fmt.Flag.L2) != 0
    cls = np.full(n, Class.NOT_CLASSIFIED, dtype=np.uint8)
    why = np.zeros(n, dtype=np.uint8)
    cls[is_saverest & ~moved_all] = Class.UNKNOWN
    why[is_saverest & ~moved_all] = Unknown.NO_MEMORY_ACCESS
    cls[moved_all & in_l2_all] = Class.UNKNOWN
    why[moved_all & in_l2_all] = Unknown.NESTED_GUEST

    # The L1 saves and restores, as compact contiguous columns.
    ops = np.flatnonzero(moved_all & ~in_l2_all)
    del moved_all, in_l2_all, is_saverest
    addr = ev["addr"][ops]
    cpu = ev["vcpu"][ops]
    f = flags[ops]
    save = is_save_all[ops]
    regs = ev["regs_hash"][ops]
    after = ev["regs_after_hash"][ops]
    regs_ok = (f & fmt.Flag.REGS_VALID) != 0
    after_ok = (f & fmt.Flag.REGS_AFTER_VALID) != 0
    task_ok = (f & fmt.Flag.TASK_VALID) != 0

    # Contexts by buffer address; guest buffers from the VM entries.
    entries = np.flatnonzero((kind == fmt.Kind.VM_ENTRY) & ((flags & fmt.Flag.L2) == 0))
    # Each guest buffer belongs to the vCPU (VMCB) of its first VM entry.
    restore_pos = np.flatnonzero(~save)
    e_idx: list[npt.NDArray[np.int64]] = []
    e_buf: list[npt.NDArray[np.uint64]] = []
    for c in np.unique(ev["vcpu"][entries]).tolist():
        r = restore_pos[cpu[restore_pos] == c]
        e = entries[ev["vcpu"][entries] == c]
        if not len(r):
            continue
        last = np.searchsorted(ops[r], e) - 1  # the last restore before each entry
        ok = last >= 0
        e_idx.append(e[ok])
        e_buf.append(addr[r[last[ok]]])
    guest: dict[int, int] = {}
    if e_idx:
        order = np.argsort(np.concatenate(e_idx), kind="stable")
        bufs = np.concatenate(e_buf)[order]
        first_entry = np.concatenate(e_idx)[order]
        uniq, first = np.unique(bufs, return_index=True)
        vmcbs = ev["addr"][first_entry[first]]
        guest = dict(zip(uniq.tolist(), vmcbs.tolist(), strict=True))
    ctx = np.full(len(ops), ContextKind.TASK, dtype=np.int8)
    if guest:
        ctx[np.isin(addr, np.fromiter(guest, dtype=U64))] = ContextKind.GUEST
    # A user address written by the kernel on behalf of a task: a signal frame.
    ctx[(addr < USER_LIMIT) & task_ok] = ContextKind.SIGNAL_FRAME
    if init_fpstate is not None:
        ctx[(addr >= init_fpstate) & (addr < init_fpstate + INIT_FPSTATE_SPAN)] = \
            ContextKind.INIT

    # Chains: previous operation on the same CPU; previous and next on the buffer.
    p, _ = _chain(cpu)
    q, nb = _chain(addr)
    has_p = p >= 0
    pc_ = np.where(has_p, p, 0)

    # The register content each operation leaves behind ("sync").
    sync = np.where(save, regs, after)
    sync_ok = np.where(save, regs_ok, after_ok)
    known = has_p & sync_ok[pc_] & regs_ok
    modified = known & (regs != sync[pc_])
    # In-kernel FPU use between p and this operation: KERNEL_SIMD events on the
    # CPU, counted cumulatively per CPU over all events.
    ksimd = (flags & fmt.Flag.KERNEL_SIMD) != 0
    kernel_use = np.zeros(len(ops), dtype=bool)
    if ksimd.any():
        by_cpu = np.argsort(ev["vcpu"], kind="stable")
        cum = np.empty(n, dtype=np.int64)
        cpu_sorted = ev["vcpu"][by_cpu]
        counts = np.cumsum(ksimd[by_cpu])
        # restart the count at each CPU's first event
        starts = np.flatnonzero(np.r_[True, cpu_sorted[1:] != cpu_sorted[:-1]])
        base = np.repeat(counts[starts] - ksimd[by_cpu][starts],
                         np.diff(np.r_[starts, n]))
        cum[by_cpu] = counts - base
        del by_cpu, cpu_sorted, counts, base
        c_ops = cum[ops]
        kernel_use = has_p & ((c_ops - c_ops[pc_]) > 0)
        del cum, c_ops
    owner_same = has_p & (addr[pc_] == addr)
    # What the owner's registers held became garbage when the kernel used them.
    owner_dirty = modified & ~kernel_use

    # ---- saves: redundant when the buffer already held these bytes ----
    has_q = q >= 0
    qc = np.where(has_q, q, 0)
    q_save = save[qc]
    # Components each operation covers: RFBM & XCR0; FXSAVE/FXRSTOR always
    # x87|SSE whatever EDX:EAX hold.
    covers = np.where(FX_TABLE[kind[ops]], U64(3), ev["value"][ops] & ev["xcr0"][ops])
    mem = ev["mem_hash"][ops]
    legacy = ev["mem_legacy_hash"][ops]
    xbv = ev["xstate_bv"][ops]
    mask_q = covers[qc]
    same_bytes_save = (mem == mem[qc]) & (covers == mask_q)
    # Previous op a restore: registers after it vs registers now (x87/SSE), and
    # the AVX upper halves it loaded (or their init state) vs those written now.
    avx = mem - legacy
    avx_q = np.where((xbv[qc] & U64(4)) != 0, avx[qc], U64(AVX_INIT_HASH))
    wants_avx = (covers & U64(4)) != 0
    both_read = regs_ok & after_ok[qc]
    same_after_restore = both_read & (regs == after[qc]) & (~wants_avx | (avx == avx_q))
    redundant = has_q & np.where(q_save, same_bytes_save, same_after_restore)
    undecidable = has_q & ~redundant & np.where(
        q_save, covers != mask_q, ~both_read | (wants_avx & ((mask_q & U64(4)) == 0)))
    save_cls = np.where(redundant, Class.REDUNDANT_SAVE, Class.NECESSARY).astype(np.uint8)
    save_why = np.zeros(len(ops), dtype=np.uint8)
    save_cls[undecidable] = Class.UNKNOWN
    save_why[undecidable] = np.where(~q_save[undecidable] & ~both_read[undecidable],
                                     Unknown.REGISTERS_NOT_READ, Unknown.MASKS_DIFFER)
    save_cls[~has_q] = Class.UNKNOWN
    save_why[~has_q] = Unknown.FIRST_SIGHT

    # ---- restores ----
    rest_cls = np.full(len(ops), Class.NECESSARY, dtype=np.uint8)
    rest_why = np.zeros(len(ops), dtype=np.uint8)
    unchanged_by_restore = after_ok & regs_ok & (after == regs)
    rest_cls[owner_same & known & ~modified & unchanged_by_restore] = Class.REDUNDANT_RESTORE
    # Stale: the owner's live registers were newer than the buffer restored over
    # them, and the buffer still held what it held at that sync (it was not
    # rewritten by software since, as exec() or sigreturn do with a memory copy).
    buffer_unchanged = after_ok & sync_ok[pc_] & (after == sync[pc_])
    rest_cls[owner_same & owner_dirty & buffer_unchanged & (ctx != ContextKind.INIT)] = \
        Class.STALE_RESTORE
    # Lost: another context's newer registers overwritten without a save, and
    # that context later resumes from its buffer with exactly the bytes of its
    # last sync (a reset on exec would load something else).
    resume = nb[pc_]
    rc = np.where(resume >= 0, resume, 0)
    resumes_stale = (has_p & (resume > np.arange(len(ops))) & ~save[rc] & after_ok[rc]
                     & sync_ok[pc_] & (after[rc] == sync[pc_]))
    # The init state is nobody's context: what is built on it belongs to the
    # task that loaded it, and is saved to that task's own buffer if kept.
    lost = has_p & ~owner_same & owner_dirty & (ctx[pc_] != ContextKind.INIT) & resumes_stale
    rest_cls[lost] = Class.LOST_STATE
    rest_cls[~has_p] = Class.UNKNOWN
    rest_why[~has_p] = Unknown.NO_PREVIOUS_OWNER
    needs_regs = has_p & ~known & (rest_cls == Class.NECESSARY)
    rest_cls[needs_regs] = Class.UNKNOWN
    rest_why[needs_regs] = Unknown.REGISTERS_NOT_READ

    cls[ops] = np.where(save, save_cls, rest_cls)
    why[ops] = np.where(save, save_why, rest_why)
    context_kind = np.full(n, -1, dtype=np.int8)
    context_kind[ops] = ctx

    findings: list[Finding] = []
    flagged = ((rest_cls == Class.LOST_STATE) | (rest_cls == Class.STALE_RESTORE)) & ~save
    for j in np.flatnonzero(flagged).tolist():
        i, last = int(ops[j]), int(ops[p[j]])
        if rest_cls[j] == Class.LOST_STATE:
            victim = int(addr[p[j]])
            findings.append(Finding(Class.LOST_STATE, i, victim, last, int(ops[nb[p[j]]]),
                                    _lost_description(victim, int(addr[j]))))
        else:
            findings.append(Finding(Class.STALE_RESTORE, i, int(addr[j]), last, -1,
                                    _stale_description(int(addr[j]))))
    return Ownership(cls, why, context_kind, guest, findings)
