"""The report's findings: what the boundary truth and the operation classes
say together.

- `corrupted_state` and `kernel_fpu_misuse` come from the boundaries
  (analyzers/boundaries.py): a context got back registers it did not leave,
  or kernel code used SIMD registers outside a kernel_fpu section.
- `lost_state`, `stale_restore` and `foreign_save` come from the operation
  classes (analyzers/ownership.py). Each must be confirmed at a boundary: the
  context it harmed must be found corrupted at its first boundary after the
  operation (a user return, or a VM entry for guest state). One that is not
  confirmed is listed apart, with the reason, and is not a finding: the
  boundary showed the context's registers intact, or the context never
  reached a boundary again in the trace.

Exit status 3 of `fputrace report` means: at least one finding.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analyzers.boundaries import GAP_UNCHECKED, Boundaries, BoundaryFinding, spans_gap
from analyzers.costs import vcpu_vmcb
from analyzers.findings import Kind
from analyzers.ownership import FindingKind, Ownership
from fputrace.trace import format as fmt

KINDS = tuple(Kind)


@dataclass
class Finding:
    kind: Kind
    event: int  # the event where it is seen
    task: int  # announcement index of the context's task (or vCPU thread), -1
    description: str
    # role -> event index, in trace order after the first boundary; the
    # "simd" role stands for the kernel SIMD code that ran before its event
    events: dict[str, int] = field(default_factory=dict)
    buffer: int = 0  # the context's buffer, for operation findings
    vmcb: int = 0  # a guest context's vCPU
    confirmed_by: int = -1  # the boundary event that confirms an operation finding


@dataclass
class Unconfirmed:
    kind: Kind
    event: int
    task: int
    reason: str


@dataclass
class Verdict:
    findings: list[Finding]
    unconfirmed: list[Unconfirmed]
    boundaries: Boundaries
    # The FPU path each finding's events ran inside (instructions.enclosing_paths)
    within: dict[int, str] = field(default_factory=dict)

    @property
    def by_kind(self) -> dict[Kind, int]:
        out = dict.fromkeys(KINDS, 0)
        for f in self.findings:
            out[f.kind] += 1
        return out


def _boundary_finding(b: BoundaryFinding) -> Finding:
    if b.kind == Kind.KERNEL_FPU_MISUSE:
        return Finding(b.kind, b.after, b.task, b.explanation, {"event": b.after})
    first, last = {"task": ("entry", "return"), "purpose": ("purpose", "return"),
                   "signal_frame": ("entry", "frame_save"),
                   "vcpu": ("vm_exit", "vm_entry")}[b.context]
    roles = {first: b.before}
    roles.update(b.trail)
    roles[last] = b.after
    if b.cause >= 0:
        roles["cause"] = b.cause
    return Finding(b.kind, b.after, b.task, b.explanation, roles, vmcb=b.vmcb)


def combine(ev: npt.NDArray[np.void], ident: npt.NDArray[np.int64], own: Ownership,
            bounds: Boundaries, gaps: npt.NDArray[np.uint64] | None = None) -> Verdict:
    """Boundary findings, plus the operation findings a boundary confirms;
    none whose events have a gap of the trace (Trace.gaps) between them."""
    keys = bounds.keys
    findings = [_boundary_finding(b) for b in bounds.findings]
    # The windows (earlier boundary, later boundary) in which each task key
    # was found corrupted.
    corrupted: dict[int, list[tuple[int, int]]] = {}
    for b in bounds.findings:
        if b.kind == Kind.CORRUPTED_STATE and b.after >= 0:
            corrupted.setdefault(keys.of(b.after), []).append((b.before, b.after))
    # Each context's boundaries in trace order: a task's user returns under
    # (key, None), a vCPU's VM entries under (key, VMCB); not the nested
    # guest's own. Built at the first operation finding.
    boundaries: dict[tuple[int, int | None], list[int]] | None = None

    def index_boundaries() -> dict[tuple[int, int | None], list[int]]:
        kind = ev["kind"]
        idx = np.flatnonzero(((ev["flags"] & np.uint32(fmt.Flag.L2)) == 0) &
                             ((kind == fmt.Kind.USER_RETURN) | (kind == fmt.Kind.VM_ENTRY)))
        out: dict[tuple[int, int | None], list[int]] = {}
        for i, key, entry, vmcb in zip(idx.tolist(), keys.at(idx).tolist(),
                                       (kind[idx] == fmt.Kind.VM_ENTRY).tolist(),
                                       ev["addr"][idx].tolist(), strict=True):
            out.setdefault((key, vmcb if entry else None), []).append(i)
        return out

    def first_boundary_after(key: int, i: int, vmcb: int) -> int:
        """The harmed context's first boundary after event i, or -1: a
        vCPU's (vmcb) next VM entry, a task's next user return."""
        nonlocal boundaries
        if boundaries is None:
            boundaries = index_boundaries()
        mine = boundaries.get((key, vmcb or None), [])
        at = bisect.bisect_right(mine, i)
        return mine[at] if at < len(mine) else -1

    unconfirmed: list[Unconfirmed] = []
    for f in own.findings:
        kind = f.kind.label
        # The context harmed: the one whose registers were overwritten (lost),
        # or whose buffer now holds what it should not (stale, foreign save).
        victim = f.last_sync if f.kind == FindingKind.LOST_STATE else f.event
        key = keys.of(victim) if victim >= 0 else -1
        task = int(ident[victim]) if victim >= 0 else -1
        # A vCPU's state (the buffer is a guest fpstate, or held the guest's
        # registers) is checked at the vCPU's next VM entry, not at its
        # thread's next user return: a save into the guest's fpstate of
        # registers that were not the guest's shows only when it is loaded.
        vcpu = (int(own.guest_of[victim]) or own.guest_buffers.get(f.context_buffer, 0)
                if victim >= 0 else 0)
        vmcb = vcpu_vmcb(vcpu) if vcpu else 0
        # Confirmed when the context's first boundary after the operation
        # found it corrupted.
        first = first_boundary_after(key, f.event, vmcb)
        hit = next(((lo, hi) for lo, hi in corrupted.get(key, []) if hi == first), None)
        if hit is not None and gaps is not None and \
                spans_gap(gaps, int(ev["seq"][min(x for x in (f.event, f.last_sync, hit[0])
                                                  if x >= 0)]), int(ev["seq"][hit[1]])):
            unconfirmed.append(Unconfirmed(kind, f.event, task, GAP_UNCHECKED))
            continue
        if hit is not None:
            roles = {"event": f.event}
            if f.last_sync >= 0:
                roles["last_sync" if f.kind < FindingKind.FOREIGN_SAVE else "made_live"] = \
                    f.last_sync
            if f.resumed >= 0:
                roles["resumed"] = f.resumed
            findings.append(Finding(kind, f.event, task, f.description, roles,
                                    f.context_buffer,
                                    int(own.guest_of[f.event]) or
                                    own.guest_buffers.get(f.context_buffer, 0), hit[1]))
            continue
        reason = ("the context's next boundary showed its registers intact" if first >= 0
                  else "the context reached no boundary after it in the trace")
        unconfirmed.append(Unconfirmed(kind, f.event, task, reason))
    findings.sort(key=lambda x: (x.event, x.kind))
    return Verdict(findings, unconfirmed, bounds)
