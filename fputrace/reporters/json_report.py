"""The --json objects of report (and the timeline): the schema docs/report.md
describes. Renders only; every number comes from the analyzers or the reader."""

from __future__ import annotations

from typing import Any

from analyzers.boundaries import BoundaryCheck, kernel_text_high
from analyzers.costs import Row
from analyzers.counts import Counts, Group, task_identity, task_label
from analyzers.mechanisms import kernel_mechanisms
from analyzers.ownership import UNKNOWN_REASONS, Class, ContextKind, Ownership
from analyzers.run import Analysis
from analyzers.verdict import Verdict
from fputrace.trace import format as fmt
from fputrace.trace.run import Run


def _group_json(groups: list[Group]) -> list[dict[str, Any]]:
    return [{"label": g.label, "events": g.events, "by_kind": g.by_kind} for g in groups]


def counts_json(run: Run, counts: Counts) -> dict[str, Any]:
    t = run.trace
    return {
        "trace": {
            "path": str(t.path),
            "complete": t.complete,
            "problems": t.problems,
            "format_version": t.header.version,
            "arch": t.header.arch.name.lower(),
            "kernel": t.header.kernel,
            "qemu": t.header.qemu,
            "footer_events_total": t.footer.events_total if t.footer else None,
        },
        "recording": run.meta,
        "events_total": counts.events_total,
        "events_by_kind": counts.events_by_kind,
        "events_by_instruction": counts.events_by_instruction,
        "bytes_saved": counts.bytes_saved,
        "bytes_restored": counts.bytes_restored,
        "per_task": _group_json(counts.per_task),
        "per_cpu": _group_json(counts.per_cpu),
        "per_level": _group_json(counts.per_level),
        "per_function": _group_json(counts.per_function),
    }


def _event_json(run: Run, ident: Any, i: int, role: str = "",
                within: dict[int, str] | None = None) -> dict[str, Any]:
    ev = run.trace.events[i]
    kind = int(ev["kind"])
    out = {
        "seq": int(ev["seq"]),
        "cpu": int(ev["vcpu"]),
        "kind": fmt.kind_name(kind),
        "task": task_label(run.trace.tasks, int(ident[i])),
        "site": run.symbols.describe(int(ev["pc"])),
    }
    if run.trace.header.features & fmt.Feature.ICOUNT:
        out["icount"] = int(ev["icount"])
    if role == "simd":
        # The kernel SIMD code that ran just before this event.
        out["kind"] = f"kernel SIMD before {out['kind']}"
        out["site"] = run.symbols.describe(int(ev["simd_pc"]) | kernel_text_high(run.symbols))
    elif kind in fmt.BUFFER_KINDS:
        out["buffer"] = f"{int(ev['addr']):#x}"
    elif kind == fmt.Kind.USER_RETURN and ev["addr"]:
        out["entry_site"] = run.symbols.describe(int(ev["addr"]))
    elif kind == fmt.Kind.PROBE and int(ev[fmt.PROBE_CALLER]):
        out["caller"] = run.symbols.describe(int(ev[fmt.PROBE_CALLER]))
    if within and role != "simd" and i in within:
        out["within"] = within[i]
    return out


def findings_json(run: Run, verdict: Verdict, ident: Any, limit: int = 0
                  ) -> list[dict[str, Any]]:
    """The findings in trace order, the first `limit` of them (0: all)."""
    out = []
    for f in verdict.findings[:limit] if limit > 0 else verdict.findings:
        item: dict[str, Any] = {
            "kind": f.kind,
            "description": f.description,
            "task": task_label(run.trace.tasks, f.task),
            "event": _event_json(run, ident, f.event, within=verdict.within),
            "events": {role: _event_json(run, ident, i, role, verdict.within)
                       for role, i in f.events.items() if i >= 0 and role != "event"},
        }
        if f.buffer:
            item["buffer"] = f"{f.buffer:#x}"
        if f.vmcb:
            item["vcpu"] = f"{f.vmcb:#x}"
        if f.confirmed_by >= 0:
            item["confirmed_by"] = _event_json(run, ident, f.confirmed_by)
        out.append(item)
    return out


def boundary_json(run: Run, verdict: Verdict) -> dict[str, Any]:
    b = verdict.boundaries

    def one(c: BoundaryCheck) -> dict[str, Any]:
        return {"checked": c.checked, "quiet": c.quiet, "violations": c.violations,
                "changed_on_purpose": dict(c.changed_on_purpose),
                "purpose_checked": dict(c.purpose_checked),
                "unchecked": dict(c.unchecked)}

    return {
        "checked": b.checked,
        "violations": b.violations,
        "by_kind": {"user_return": one(b.user), "vm_entry": one(b.vcpu),
                    "sve_user_return": one(b.sve)},
        "registers": {"compared": b.registers[0], "not_compared": b.registers[1]},
        "findings_by_kind": verdict.by_kind,
        "kfpu_sections": b.kfpu_sections,
        "per_task": [{"task": task_label(run.trace.tasks, b.keys.latest.get(k, -1)),
                      "checked": c, "violations": v}
                     for k, (c, v) in sorted(b.per_task.items()) if k >= 0],
        "per_vcpu": [{"vcpu": f"vmcb={vmcb:#x}",
                      "thread": task_label(run.trace.tasks, b.keys.latest.get(k, -1)),
                      "checked": c, "violations": v}
                     for (vmcb, k), (c, v) in sorted(b.per_vcpu.items())],
    }


def by_key(counts: dict[Class, int]) -> dict[str, int]:
    """Counts per class, by the classes' names."""
    return {c.key: n for c, n in counts.items()}


def _row_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [{"label": r.label, "events": r.events, "by_class": by_key(r.by_class),
             "bytes_by_class": by_key(r.bytes_by_class), "redundant_bytes": r.redundant_bytes,
             **r.extra} for r in rows]


def ident_of(run: Run, own: Ownership) -> Any:
    """Each event's task announcement, as the compiled pass found it."""
    if own.task_ident is not None:
        return own.task_ident
    return task_identity(run.trace.events, run.trace.tasks)


def analysis_json(a: Analysis, max_findings: int = 50) -> dict[str, Any]:
    run, verdict, costs, ident = a.run, a.verdict, a.costs, a.ident
    return {
        "findings_total": len(verdict.findings),
        "own_check_failures": run.own_check_failures,
        "findings": findings_json(run, verdict, ident, max_findings),
        "unconfirmed": [{"kind": u.kind, "reason": u.reason,
                         "task": task_label(run.trace.tasks, u.task),
                         "event": _event_json(run, ident, u.event)}
                        for u in verdict.unconfirmed[:max_findings or None]],
        "unconfirmed_total": len(verdict.unconfirmed),
        "boundary_checks": boundary_json(run, verdict),
        "kernel_mechanisms": [{"name": m.name, "present": m.present, "evidence": m.evidence,
                               "description": m.description}
                              for m in kernel_mechanisms(run.symbols)],
        "classes": by_key(costs.classes),
        "class_bytes": by_key(costs.class_bytes),
        "unknown_reasons": {UNKNOWN_REASONS[u]: n for u, n in costs.unknown_reasons.items()},
        "redundant_percent": costs.redundant_pct,
        "per_callsite": _row_json(costs.per_callsite),
        "per_task": _row_json(costs.per_task),
        "per_vcpu": _row_json(costs.per_vcpu),
        "per_level": _row_json(costs.per_level),
        "per_component": costs.per_component,
        "per_operation": costs.per_operation,
        **({"arm64_traps": a.traps.as_json()} if a.traps is not None else {}),
        **({"context_switches": a.switches.as_json()} if a.switches is not None else {}),
        **({"instructions": a.instructions.as_json()} if a.instructions is not None else {}),
        **({"guest": analysis_json(a.guest, max_findings)} if a.guest is not None else {}),
    }


def timeline_json(timeline: Any, limit: int) -> list[dict[str, Any]]:
    from analyzers.timeline import Begin, End

    rows = timeline[:limit] if limit > 0 else timeline
    return [{"cpu": int(r["cpu"]), "start_seq": int(r["start_seq"]),
             "end_seq": int(r["end_seq"]), "owner": f"{int(r['owner']):#x}",
             "owner_kind": ContextKind(int(r["owner_kind"])).name.lower()
             if r["owner_kind"] >= 0 else "unknown",
             "content": f"{int(r['content']):016x}", "begin": Begin(int(r["begin"])).name.lower(),
             "end": End(int(r["end"])).name.lower(), "modified": bool(r["modified"]),
             "kernel_use": bool(r["kernel_use"]), "in_guest": bool(r["in_guest"]),
             "buffer_current": bool(r["buffer_current"])}
            for r in rows]
