"""Who owns the FPU registers, and which saves and restores were needed.

The model is the kernel's, written down in docs/analysis.md. In short: a
*context* is a save buffer, found by address (a task's fpstate, a vCPU's
guest fpstate, a signal frame, init_fpstate). Per CPU the registers are
owned by the context last restored into them (fpu_fpregs_owner_ctx); a save
copies them and changes no owner. The state live in them belongs to a task
(its user state, or a vCPU's guest state it loaded); kernel SIMD use, exec
and exit leave them nobody's. At each save and restore the registers are
*synced* with a buffer; between two syncs they may be *modified*, by their
owner or by in-kernel FPU use (flag KERNEL_SIMD), which discards them.

Every save and restore gets one class:
  necessary, redundant_save, redundant_restore, lost_state, stale_restore,
  unknown (with the reason).
Findings: lost_state, stale_restore, and foreign_save (a task saving
registers that hold another context's state, or nobody's).

The per-event pass is analyzers/engine/classify.c (fpa_classify), the one
implementation of these rules; tests/oracle.py restates them event by event
as the oracle it is tested against. Nothing is printed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from analyzers.findings import Kind
from fputrace.trace import format as fmt

if TYPE_CHECKING:
    from analyzers.native import Aggregates

INIT_FPSTATE_SPAN = 0x3000  # bytes of init_fpstate an address may fall into
MASK64 = (1 << 64) - 1


class Class(enum.IntEnum):
    NECESSARY = 0
    REDUNDANT_SAVE = 1
    REDUNDANT_RESTORE = 2
    LOST_STATE = 3
    STALE_RESTORE = 4
    UNKNOWN = 5
    NOT_CLASSIFIED = 255  # not a save or restore

    @property
    def key(self) -> str:
        """The class's name in reports, JSON and metrics (docs/analysis.md,
        "Classes"): necessary, redundant_save, ..."""
        return self.name.lower()


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
    USER_MODE = 7  # executed by a program in user mode, not by the kernel


UNKNOWN_REASONS = {
    Unknown.NO_MEMORY_ACCESS: "no memory access observed (the instruction did not move state)",
    Unknown.FIRST_SIGHT: "first sight of the buffer: what it held before the trace is unknown",
    Unknown.NO_PREVIOUS_OWNER: "first operation on this CPU: the registers' earlier owner "
                               "is unknown",
    Unknown.REGISTERS_NOT_READ: "a register-file hash needed for the decision was not read",
    Unknown.MASKS_DIFFER: "the save and the buffer's last operation cover different "
                          "components",
    Unknown.NESTED_GUEST: "inside the nested guest (its contexts belong to the guest kernel)",
    Unknown.USER_MODE: "executed in user mode (a program's own save or restore)",
}


class FindingKind(enum.IntEnum):
    """A finding's kind as the compiled pass reports it."""

    LOST_STATE = Class.LOST_STATE
    STALE_RESTORE = Class.STALE_RESTORE
    FOREIGN_SAVE = 6  # the registers held another task's state
    DROPPED_SAVE = 7  # the registers held nobody's state (kernel scratch, dropped)

    @property
    def label(self) -> Kind:
        """The report's kind: a dropped save is a foreign save of nobody's state."""
        return Kind.FOREIGN_SAVE if self >= FindingKind.FOREIGN_SAVE else Kind(self.name.lower())


@dataclass
class Finding:
    """What an operation did wrong: the event, the context it harmed, and
    the events around it."""

    kind: FindingKind
    event: int  # the restore that overwrote (lost), was stale, or the foreign save
    context_buffer: int
    last_sync: int  # lost/stale: the context's last sync before it; foreign: what made
    # the registers' state live (or -1)
    resumed: int  # lost: index of the restore that resumed the context from its stale buffer
    description: str


@dataclass
class Ownership:
    """Per-event results (arrays aligned with the trace's events) and findings."""

    cls: npt.NDArray[np.uint8]
    unknown_reason: npt.NDArray[np.uint8]
    context_kind: npt.NDArray[np.int8]  # of the event's buffer, -1 for non save/restore
    guest_buffers: dict[int, int]  # buffer -> VMCB of the vCPU it holds the state of
    guest_of: npt.NDArray[np.uint64]  # the vCPU whose guest state an operation moved, or 0
    # The owner of the registers of the event's CPU after it (fpu_fpregs_owner_ctx as the
    # pass rebuilds it): the buffer, 0 while unknown, and its ContextKind (-1 unknown).
    owner: npt.NDArray[np.uint64]
    owner_kind: npt.NDArray[np.int8]
    findings: list[Finding] = field(default_factory=list)  # in trace order
    findings_total: int = -1  # all of them, if more than are listed
    task_ident: npt.NDArray[np.int64] | None = None  # task_identity(), when computed on the way
    tables: Aggregates | None = None  # the report's tables, when filled on the way

    def __post_init__(self) -> None:
        if self.findings_total < 0:
            self.findings_total = len(self.findings)



def describe(kind: FindingKind, buffer: int, by: int) -> str:
    if kind == FindingKind.LOST_STATE:
        return (f"registers of buffer {buffer:#x} changed after its last sync and were "
                f"overwritten by a restore of {by:#x} without a save; the context later "
                "resumed from its older buffer")
    if kind == FindingKind.STALE_RESTORE:
        return f"buffer {buffer:#x} restored over newer live registers of the same context"
    if kind == FindingKind.FOREIGN_SAVE:
        return (f"a task saved registers holding another task's state into buffer "
                f"{buffer:#x} (the kernel saves only the current task's registers)")
    return (f"a task saved registers holding nobody's state (kernel SIMD scratch, or "
            f"dropped by exec or exit) into buffer {buffer:#x}")


def analyze(ev: npt.NDArray[np.void], init_fpstate: int | None = None,
            tasks: npt.NDArray[np.void] | None = None, tables: bool = False) -> Ownership:
    """Classify every save and restore of a trace's events (in seq order).

    With `tasks`, also each event's task announcement, and with `tables` the
    report's tables (analyzers.native.Aggregates), filled in the same pass."""
    from analyzers import native

    init_lo = init_fpstate or 0
    init_hi = init_lo + INIT_FPSTATE_SPAN if init_fpstate is not None else 0
    empty_tasks = np.empty(0, dtype=fmt.TASK_DTYPE)
    r = native.classify(ev, tasks if tasks is not None else empty_tasks, init_lo, init_hi,
                        tables)
    findings = []
    for event, last, resumed, buffer, c in sorted(r.findings):
        kind = FindingKind(c)
        findings.append(Finding(kind, event, buffer, last, resumed,
                                describe(kind, buffer, int(ev["addr"][event]))))
    return Ownership(r.cls, r.why, r.ctx, r.guest, r.guest_of, r.owner, r.owner_ctx, findings,
                     r.findings_total, r.ident if tasks is not None else None, r.tables)
