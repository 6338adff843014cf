"""Flat, named numbers from an analysis, for comparing two runs, and the
--fail-if expressions that gate on them.

Metric names (all in `fputrace compare --json` under "metrics"):
  events, events.KIND                      events in the trace, per kind
  findings, findings.KIND                  findings (lost or corrupted state)
  saves_restores, necessary, redundant_save, redundant_restore, unknown, ...
                                           saves and restores per class
  redundant_save_pct, redundant_restore_pct, redundant_bytes_pct
  bytes_moved, redundant_bytes             bytes saved and restored
  bytes.COMPONENT.{saved,restored,redundant}   per XSAVE component (x86)
  OP.count, saves_per_OP, restores_per_OP, bytes_per_OP
                                           (context_switch: also
                                           skipped_restores_per_context_switch)
                                           OP: vm_entry, context_switch, signal
  redundant_save_per_vm_entry, redundant_restore_per_vm_entry
                                           all redundant saves (restores) of
                                           the trace divided by its VM entries
  [in_kernel_|via_user_|guest_fp_trap_]instructions_per_vm_exit,
  [in_kernel_|via_user_|guest_fp_trap_]fpu_path_instructions_per_vm_exit,
  instructions_per_context_switch          time in instructions (format 4)
  fpu_path.FUNCTION.calls, fpu_path.FUNCTION.instructions_per_call
  arm64: kvm_runs, traps, guest_traps_per_kvm_run,
         host_traps_per_context_switch, traps_after_own_save,
         sve_downgrades, sve_traps_after_downgrade
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from analyzers.costs import CLASSES
from analyzers.ownership import Class
from analyzers.ratio import ratio
from analyzers.run import Analysis
from analyzers.verdict import KINDS as FINDING_KINDS
from fputrace.errors import FputraceError
from fputrace.trace import format as fmt

# A figure per operation over no operations is None: unknown, never 0
# (JSON null), and a gate on it cannot be judged.
Metrics = dict[str, float | None]


class MetricUnknown(FputraceError):
    """A --fail-if names a metric that a run has as unknown."""


def _num(x: float | None) -> float | None:
    return None if x is None else float(x)


def metrics_of(a: Analysis) -> Metrics:
    ev = a.run.trace.events
    m: Metrics = {"events": float(len(ev))}
    kinds, n = np.unique(ev["kind"], return_counts=True)
    for k, c in zip(kinds.tolist(), n.tolist(), strict=True):
        m[f"events.{fmt.kind_name(k)}"] = float(c)
    m["findings"] = float(len(a.verdict.findings))
    for kind, c in a.verdict.by_kind.items():
        m[f"findings.{kind}"] = float(c)
    costs = a.costs
    m["saves_restores"] = float(sum(costs.classes.values()))
    for cls, c in costs.classes.items():
        m[cls.key] = float(c)
    for what, pct in costs.redundant_pct.items():
        m[f"redundant_{what.rstrip('s')}_pct" if what != "bytes" else "redundant_bytes_pct"] = \
            _num(pct)
    m["bytes_moved"] = float(sum(costs.class_bytes.values()))
    m["redundant_bytes"] = float(costs.class_bytes.get(Class.REDUNDANT_SAVE, 0)
                                 + costs.class_bytes.get(Class.REDUNDANT_RESTORE, 0))
    for comp, b in costs.per_component.items():
        for what, v in b.items():
            m[f"bytes.{comp}.{what}"] = float(v)
    for op, o in costs.per_operation.items():
        m[f"{op}.count"] = float(o["count"] or 0)
        for what in ("saves", "restores", "bytes"):
            m[f"{what}_per_{op}"] = _num(o[what])
    if a.switches is not None:
        o = a.switches.per_switch()
        m["context_switch.count"] = float(o["count"] or 0)
        for what in ("saves", "restores", "bytes", "skipped_restores"):
            m[f"{what}_per_context_switch"] = _num(o[what])
    if a.instructions is not None:
        ic = a.instructions
        for prefix, w in (("", ic.all_exits()), ("in_kernel_", ic.in_kernel),
                          ("via_user_", ic.via_user), ("guest_fp_trap_", ic.fp_trap)):
            j = w.as_json()
            m[f"{prefix}instructions_per_vm_exit"] = _num(j["instructions"])
            m[f"{prefix}fpu_path_instructions_per_vm_exit"] = _num(j["fpu_path_instructions"])
        m["instructions_per_context_switch"] = _num(ic.per_switch())
        for p in ic.paths:
            key = p.name.replace(" ", "")
            m[f"fpu_path.{key}.calls"] = float(p.calls)
            m[f"fpu_path.{key}.instructions_per_call"] = _num(p.mean)
    entries = float(costs.per_operation.get("vm_entry", {}).get("count", 0) or 0)
    m["redundant_save_per_vm_entry"] = ratio(costs.classes.get(Class.REDUNDANT_SAVE, 0),
                                             entries, 4)
    m["redundant_restore_per_vm_entry"] = ratio(costs.classes.get(Class.REDUNDANT_RESTORE, 0),
                                                entries, 4)
    if a.traps is not None:
        t = a.traps
        m["kvm_runs"] = float(t.kvm_runs)
        m["traps"] = float(sum(sum(row.values()) for row in t.traps.values()))
        m["guest_traps_per_kvm_run"] = t.per(t.guest_traps, t.kvm_runs)
        m["host_traps_per_context_switch"] = t.per(t.host_traps, t.context_switches)
        m["traps_after_own_save"] = float(t.save_undone)
        m["sve_downgrades"] = float(t.sve_downgrades)
        m["sve_traps_after_downgrade"] = float(t.sve_retraps)
    return m


def callsite_events(a: Analysis) -> dict[str, dict[str, int]]:
    """Per kernel function (call sites merged, offsets dropped): classified
    operations and redundant bytes; offsets differ between kernels."""
    out: dict[str, dict[str, int]] = {}
    for row in a.costs.per_callsite:
        fn = re.sub(r"\+0x[0-9a-f]+", "", row.label)
        d = out.setdefault(fn, {"events": 0, "redundant": 0, "redundant_bytes": 0})
        d["events"] += row.events
        d["redundant"] += row.by_class.get(Class.REDUNDANT_SAVE, 0) + \
            row.by_class.get(Class.REDUNDANT_RESTORE, 0)
        d["redundant_bytes"] += row.redundant_bytes
    return out


def change_pct(a: float, b: float) -> float:
    """100 * (b - a) / a; +inf when a is 0 and b is not."""
    if a == 0:
        return 0.0 if b == 0 else math.copysign(math.inf, b)
    return 100.0 * (b - a) / abs(a)


# ---- --fail-if ---------------------------------------------------------------

FAIL_IF_HELP = """\
--fail-if EXPR (repeatable): exit 1 if EXPR holds. EXPR is METRIC OP VALUE
with OP one of > >= < <= == != and VALUE one of:
  N       B's own value, e.g. findings>0
  +N, -N  the change B - A, e.g. events.xsave>+100
  N%, +N%, -N%
          the relative change 100 * (B - A) / A, e.g.
          redundant_save_per_vm_entry>+10%  (from A at 0: infinite)
METRIC is a name from `compare --json` ("metrics"); a metric that one run
lacks is 0 there. A metric per operation of a run with none of them (per
VM entry, with no VM entries) is unknown (null): a gate on it is not judged
(compare exits 4, check 125). Spaces are allowed around OP."""

_EXPR = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(>=|<=|==|!=|>|<)\s*([+-]?)(\d+(?:\.\d+)?)(%?)\s*$")
_OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__,
        "==": float.__eq__, "!=": float.__ne__}


@dataclass
class Gate:
    expr: str
    metric: str
    op: str
    value: float
    mode: str  # "value" (B's), "delta" (B - A) or "pct" (relative change)

    def measure(self, a: float, b: float) -> float:
        if self.mode == "pct":
            return change_pct(a, b)
        return b - a if self.mode == "delta" else b

    def holds(self, a: float, b: float) -> bool:
        return bool(_OPS[self.op](float(self.measure(a, b)), self.value))


def parse_gate(expr: str) -> Gate:
    m = _EXPR.match(expr)
    if not m:
        raise FputraceError(f"--fail-if {expr!r}: write METRIC OP VALUE, e.g. findings>0 or "
                            "redundant_save_per_vm_entry>+10% (see compare --help)")
    metric, op, sign, number, pct = m.groups()
    value = float(number) * (-1 if sign == "-" else 1)
    mode = "pct" if pct else ("delta" if sign else "value")
    if not is_metric_name(metric):
        # Said before any run is read or recorded: check tells the user's
        # mistake from the commit's by it.
        raise FputraceError(f"--fail-if {expr.strip()!r}: {metric!r} is no metric: "
                            "`fputrace compare A B --json` lists them (see compare --help)")
    return Gate(expr.strip(), metric, op, value, mode)


def check_gate(gate: Gate, a: Metrics, b: Metrics) -> bool:
    """Whether the gate holds; MetricUnknown when a run it reads has the
    metric as unknown (a value gate reads only B)."""
    if gate.metric not in a and gate.metric not in b and gate.metric not in _ALWAYS:
        raise FputraceError(f"--fail-if {gate.expr!r}: no metric {gate.metric!r} in either "
                            "run; `fputrace compare A B --json` lists them")
    va, vb = a.get(gate.metric, 0.0), b.get(gate.metric, 0.0)
    unknown = [name for name, v in (("A", va), ("B", vb))
               if v is None and (name == "B" or gate.mode != "value")]
    if unknown:
        raise MetricUnknown(f"--fail-if {gate.expr!r}: {gate.metric} is unknown in "
                            f"{' and '.join(unknown)} (a figure per operation of a run that "
                            "has none of them), so the gate cannot be judged")
    return gate.holds(0.0 if va is None else va, 0.0 if vb is None else vb)


# Metrics every run has by name, even where a kind never occurred.
_ALWAYS = {f"findings.{k}" for k in FINDING_KINDS} | {
    f"events.{fmt.kind_name(int(k))}" for k in fmt.Kind}

# The names metrics_of() can give, to judge a --fail-if before a run exists
# (check tells the user's mistake from the commit's before it records): the
# names every run has, and families with a part that a run names (a
# component, an operation, an FPU path function).
_OPERATIONS = r"(vm_entry|context_switch|signal)"
_FIXED = _ALWAYS | {"events", "findings", "saves_restores", "bytes_moved", "redundant_bytes",
                    "redundant_save_pct", "redundant_restore_pct", "redundant_bytes_pct",
                    "redundant_save_per_vm_entry", "redundant_restore_per_vm_entry",
                    "instructions_per_context_switch", "kvm_runs", "traps",
                    "guest_traps_per_kvm_run", "host_traps_per_context_switch",
                    "traps_after_own_save", "sve_downgrades", "sve_traps_after_downgrade"} | {
    c.key for c in CLASSES}
_FAMILIES = re.compile(
    r"bytes\.[A-Za-z0-9_]+\.(saved|restored|redundant)"
    rf"|{_OPERATIONS}\.count|(saves|restores|bytes|skipped_restores)_per_{_OPERATIONS}"
    r"|(in_kernel_|via_user_|guest_fp_trap_)?(fpu_path_)?instructions_per_vm_exit"
    r"|fpu_path\.[A-Za-z0-9_]+\.(calls|instructions_per_call)")


def is_metric_name(name: str) -> bool:
    """Whether some run can have a metric of this name."""
    return name in _FIXED or _FAMILIES.fullmatch(name) is not None


# The sections of the table, by metric name prefix or name.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("events per kind", ("events", "events.")),
    ("classes and findings", ("findings", "saves_restores", "necessary", "redundant_save",
                              "redundant_restore", "unknown", "lost_state", "stale_restore",
                              "redundant_save_pct", "redundant_restore_pct",
                              "redundant_bytes_pct")),
    ("bytes moved", ("bytes_moved", "redundant_bytes", "bytes.")),
    ("per operation", ("vm_entry.", "context_switch.", "signal.", "saves_per_",
                       "restores_per_", "bytes_per_", "redundant_save_per_vm_entry",
                       "redundant_restore_per_vm_entry", "kvm_runs", "traps",
                       "guest_traps_per_kvm_run", "host_traps_per_context_switch",
                       "traps_after_own_save", "sve_downgrades",
                       "sve_traps_after_downgrade")),
)


def section_of(name: str) -> str:
    for title, keys in SECTIONS:
        for k in keys:
            if name == k or (k.endswith((".", "_")) and name.startswith(k)):
                return title
    return "other"
