"""Ownership timelines: per CPU, intervals of (owner, content) over the
global sequence order, each with how it began and how it ended; per context
(buffer), where its live state was and whether its buffer was current.

Boundaries are the L1 saves and restores that moved state and the VM entries
and exits. The owner after each boundary is the classification pass's
(Ownership.owner): this module only groups it. A VM entry or exit does not
change the owner (the guest buffer was loaded before entry): its interval
carries the owner and content on.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

from analyzers.ownership import Class, Ownership
from fputrace.trace import format as fmt


class Begin(enum.IntEnum):
    FIRST_USE = 0  # the CPU's first boundary in the trace, if not a restore
    RESTORE = 1
    SAVE = 2  # the owner's registers were written to its buffer; they stay live
    VM_ENTRY = 3
    VM_EXIT = 4


class End(enum.IntEnum):
    SAVE = 0  # the owner saved its registers
    OVERWRITE = 1  # another buffer was restored over them
    RELOAD = 2  # the owner's own buffer was restored over them
    VM_ENTRY = 3
    VM_EXIT = 4
    END_OF_TRACE = 5


TIMELINE_DTYPE = np.dtype([
    ("cpu", "<u2"),
    ("start_seq", "<u8"),
    ("end_seq", "<u8"),  # seq of the boundary that ended it (inclusive end: start of the next)
    ("owner", "<u8"),  # buffer address of the owning context (0: unknown)
    ("owner_kind", "i1"),  # ContextKind, -1 unknown
    ("content", "<u8"),  # register-file hash at the start (0: unknown)
    ("begin", "u1"),
    ("end", "u1"),
    ("modified", "?"),  # the registers changed during the interval
    ("kernel_use", "?"),  # in-kernel FPU use during the interval
    ("in_guest", "?"),  # the nested guest ran during it (between VM entry and exit)
    ("buffer_current", "?"),  # at its end the owner's buffer held what its registers held
])


def cpu_timeline(ev: npt.NDArray[np.void], own: Ownership) -> npt.NDArray[np.void]:
    """All CPUs' intervals, ordered by CPU then start."""
    kind = ev["kind"]
    flags = ev["flags"]
    l1 = (flags & fmt.Flag.L2) == 0
    is_op = (own.cls != Class.NOT_CLASSIFIED) & l1 & (own.context_kind >= 0)
    is_vm = ((kind == fmt.Kind.VM_ENTRY) | (kind == fmt.Kind.VM_EXIT)) & l1
    bounds = np.flatnonzero(is_op | is_vm)
    if not len(bounds):
        return np.empty(0, dtype=TIMELINE_DTYPE)
    bounds = bounds[np.argsort(ev["vcpu"][bounds], kind="stable")]  # by CPU, then seq
    b_cpu = ev["vcpu"][bounds]
    b_kind = kind[bounds]
    b_op = is_op[bounds]
    b_save = np.isin(b_kind, [int(k) for k in fmt.SAVE_KINDS])
    b_restore = b_op & ~b_save
    b_save &= b_op
    content = np.where(b_save, ev["regs_hash"][bounds], ev["regs_after_hash"][bounds])
    # The owner is the classifier's (Ownership.owner: the buffer last
    # restored, fpu_fpregs_owner_ctx), so the timeline names who report does.
    owner = own.owner[bounds]
    owner_kind = own.owner_kind[bounds]

    # VM entries and exits carry the previous boundary's content on (within
    # the same CPU).
    first = np.r_[True, b_cpu[1:] != b_cpu[:-1]]
    src = np.where(b_op | first, np.arange(len(bounds)), 0)
    src = np.maximum.accumulate(src)
    known = b_op[src]
    content = np.where(known, content[src], np.uint64(0))

    n = len(bounds)
    last = np.r_[b_cpu[1:] != b_cpu[:-1], True]
    nxt = np.minimum(np.arange(n) + 1, n - 1)
    out = np.zeros(n, dtype=TIMELINE_DTYPE)
    out["cpu"] = b_cpu
    out["start_seq"] = ev["seq"][bounds]
    out["end_seq"] = np.where(last, ev["seq"][-1], ev["seq"][bounds[nxt]])
    out["owner"] = owner
    out["owner_kind"] = owner_kind
    out["content"] = content
    begin = np.select([b_restore, b_save, b_kind == fmt.Kind.VM_ENTRY,
                       b_kind == fmt.Kind.VM_EXIT], [Begin.RESTORE, Begin.SAVE,
                                                     Begin.VM_ENTRY, Begin.VM_EXIT])
    begin = np.where(first & ~b_restore & b_op, Begin.FIRST_USE, begin)
    out["begin"] = begin
    n_kind = b_kind[nxt]
    n_save = b_save[nxt]
    n_restore = b_restore[nxt]
    same_buffer = ev["addr"][bounds[nxt]] == owner
    end = np.select([n_save, n_restore & same_buffer, n_restore, n_kind == fmt.Kind.VM_ENTRY,
                     n_kind == fmt.Kind.VM_EXIT],
                    [End.SAVE, End.RELOAD, End.OVERWRITE, End.VM_ENTRY, End.VM_EXIT],
                    End.END_OF_TRACE)
    out["end"] = np.where(last, End.END_OF_TRACE, end)
    n_flags = flags[bounds[nxt]]
    out["modified"] = ~last & b_op[nxt] & ((n_flags & fmt.Flag.REGS_VALID) != 0) & known & (
        ev["regs_hash"][bounds[nxt]] != content)
    out["kernel_use"] = ~last & ((n_flags & fmt.Flag.KERNEL_SIMD) != 0)
    # Between an entry and the next exit on this CPU the guest ran.
    entered = np.where(b_kind == fmt.Kind.VM_ENTRY, 1, np.where(b_kind == fmt.Kind.VM_EXIT, 0, -1))
    state_src = np.where((entered >= 0) | first, np.arange(n), 0)
    state_src = np.maximum.accumulate(state_src)
    out["in_guest"] = entered[state_src] == 1
    # Current unless the registers changed and were not saved at the end.
    out["buffer_current"] = ~out["modified"] | (out["end"] == End.SAVE)
    return out


def context_timeline(timeline: npt.NDArray[np.void], buffer: int) -> npt.NDArray[np.void]:
    """The intervals in which a context's state was live in some CPU's
    registers (outside them it lives only in its buffer), with whether its
    buffer was current at the end of each."""
    selected: npt.NDArray[np.void] = timeline[timeline["owner"] == np.uint64(buffer)]
    return selected
