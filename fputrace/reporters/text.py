"""The report as a person reads it: summary lines and rich tables. Renders
only; every number comes from the analyzers or the reader."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from analyzers.arm64 import TrapCosts
from analyzers.costs import Costs, Row
from analyzers.counts import Counts, Group, task_label
from analyzers.instructions import InstructionCosts
from analyzers.mechanisms import kernel_mechanisms
from analyzers.ownership import UNKNOWN_REASONS, Class, Ownership
from analyzers.run import Analysis
from analyzers.switches import SwitchCosts
from analyzers.verdict import Verdict
from fputrace.reporters.json_report import findings_json, ident_of, timeline_json
from fputrace.trace.run import Run

# Rich wraps at the terminal's width; piped, at this one.
PIPED_WIDTH = 200


def console() -> Console:
    """The console every report writes to: no emoji or highlighting."""
    out = Console(emoji=False, highlight=False)
    if not out.is_terminal:
        out = Console(emoji=False, highlight=False, width=PIPED_WIDTH)
    return out


def _group_table(title: str, what: str, groups: list[Group], top: int,
                 kinds: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(what, overflow="fold")
    table.add_column("events", justify="right")
    for k in kinds:
        table.add_column(k, justify="right")
    for g in groups[:top]:
        table.add_row(escape(g.label), str(g.events), *(str(g.by_kind.get(k, "")) for k in kinds))
    if len(groups) > top:
        table.caption = f"{len(groups) - top} more rows (--top)"
    return table


def render_counts(console: Console, run: Run, counts: Counts, top: int) -> None:
    t = run.trace
    console.print(f"[bold]{escape(str(t.path))}[/]  "
                  + escape(f"{t.header.kernel or 'unknown kernel'}, QEMU {t.header.qemu or '?'}"))
    if run.meta:
        wl = ", ".join(f"{w['label']} {' '.join(f'{k}={v}' for k, v in w['summary'].items())}"
                       for w in run.meta.get("workloads", []))
        clock = "deterministic" if run.meta.get("deterministic") else "host clock"
        console.print(f"recording: [bold]{escape(str(run.meta.get('status')))}[/] "
                      f"({escape(wl)}; {clock})")
    if not t.complete:
        console.print("[red]incomplete trace:[/] " + escape("; ".join(t.problems)))
    kinds = list(counts.events_by_kind)
    summary = Table(title="events by instruction", title_justify="left", show_edge=False)
    summary.add_column("instruction")
    summary.add_column("events", justify="right")
    for name, n in counts.events_by_instruction.items():
        summary.add_row(name, str(n))
    summary.add_row("[bold]total[/]", f"[bold]{counts.events_total}[/]")
    console.print(summary)
    console.print(f"bytes saved {counts.bytes_saved}, restored {counts.bytes_restored}")
    console.print(_group_table("per task", "task", counts.per_task, top, kinds))
    console.print(_group_table("per CPU", "cpu", counts.per_cpu, top, kinds))
    console.print(_group_table("L1 host / L2 guest", "level", counts.per_level, top, kinds))
    console.print(_group_table("per kernel function", "function", counts.per_function, top,
                               kinds))


def _class_table(title: str, what: str, rows: list[Row], top: int) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(what, overflow="fold")
    for name in ("events", "necessary", "red.save", "red.restore", "lost", "stale",
                 "unknown", "redundant bytes"):
        table.add_column(name, justify="right")
    for r in rows[:top]:
        c = r.by_class
        table.add_row(escape(r.label), str(r.events), str(c.get(Class.NECESSARY, "")),
                      str(c.get(Class.REDUNDANT_SAVE, "")),
                      str(c.get(Class.REDUNDANT_RESTORE, "")),
                      f"[red]{c[Class.LOST_STATE]}[/]" if c.get(Class.LOST_STATE) else "",
                      f"[red]{c[Class.STALE_RESTORE]}[/]" if c.get(Class.STALE_RESTORE) else "",
                      str(c.get(Class.UNKNOWN, "")), str(r.redundant_bytes or ""))
    if len(rows) > top:
        table.caption = f"{len(rows) - top} more rows (--top)"
    return table


def _render_event(console: Console, role: str, e: dict[str, Any]) -> None:
    where = f" {e['buffer']}" if "buffer" in e else ""
    caller = f", called from {e['caller']}" if "caller" in e else ""
    inside = f" in {e['within']}()" if "within" in e else ""
    console.print(escape(f"    {role:<13} seq {e['seq']} cpu{e['cpu']} {e['kind']}{where} "
                         f"at {e['site']}{inside}{caller} ({e['task']})"))


def render_boundaries(console: Console, verdict: Verdict) -> None:
    b = verdict.boundaries
    sve = [("SVE state at user returns", b.sve)] if b.sve.checked or b.sve.unchecked else []
    for name, c in (("user returns", b.user), ("VM entries", b.vcpu), *sve):
        purposeful = ", ".join(f"{n} {why}" for why, n in c.changed_on_purpose.items())
        quiet = f" ({c.quiet} with no FP activity in between)" if c is b.user else ""
        against = ", ".join(f"{n} {what}" for what, n in c.purpose_checked.items())
        against = f"; checked against their purpose: {against}" if against else ""
        console.print(escape(
            f"boundary checks, {name}: {c.checked} checked{quiet}, {c.violations} violations"
            + against + (f"; changed on purpose, unchecked: {purposeful}" if purposeful
                         else "")))
        for why, n in c.unchecked.items():
            console.print(escape(f"  not checked: {n} x {why}"))
    compared, left_out = b.registers
    if compared:
        console.print(escape(f"  registers compared: {compared}; not compared: {left_out}"))


def render_findings(console: Console, run: Run, own: Ownership, verdict: Verdict,
                    max_findings: int = 50) -> None:
    ident = ident_of(run, own)
    findings = findings_json(run, verdict, ident, max_findings)
    if findings and run.own_check_failures:
        console.print("[bold red]" + escape("the run's own check failed too: "
                                            + "; ".join(run.own_check_failures)) + "[/]")
    if findings:
        total = len(verdict.findings)
        shown = "" if len(findings) == total else \
            f", the first {len(findings)} shown (--max-findings)"
        kinds = ", ".join(f"{n} {k}" for k, n in verdict.by_kind.items() if n)
        console.print(f"[bold red]{total} finding(s): FPU state lost or corrupted ({kinds})"
                      f"{shown}[/]")
        for f in findings:
            console.print(f"[red]{f['kind']}[/] " + escape(f"{f['task']}: {f['description']}"))
            if all(e["seq"] != f["event"]["seq"] for e in f["events"].values()):
                _render_event(console, "seen at", f["event"])
            shown_events: set[tuple[int, str]] = set()
            for role, e in f["events"].items():
                # The cause is often one of the events already told.
                if (e["seq"], e["site"]) not in shown_events:
                    _render_event(console, role.replace("_", " "), e)
                    shown_events.add((e["seq"], e["site"]))
            if "confirmed_by" in f:
                _render_event(console, "confirmed", f["confirmed_by"])
    elif run.own_check_failures:
        console.print("[bold red]" + escape(
            "fputrace found no lost or corrupted FPU state, but the run's own check failed: "
            + "; ".join(run.own_check_failures) + " (see its console log)") + "[/]")
    elif not run.complete:
        # Never a clean verdict on a run that did not finish, was not read
        # whole, or whose symbols or metadata are missing.
        why = run.problems[0] if run.problems else "no footer"
        console.print("[yellow]" + escape(f"no lost or corrupted FPU state in what was read, "
                                          f"but the run is not complete ({why}): this "
                                          "is not a clean run") + "[/]")
    else:
        console.print("[green]no lost or corrupted FPU state[/]")


def figure(x: float | int | None) -> str:
    """A figure as printed: None (a ratio over nothing) is unknown, never 0."""
    return "unknown" if x is None else str(x)


def percent(x: float | None) -> str:
    return "unknown %" if x is None else f"{x}%"


def operation_line(name: str, o: dict[str, float | int | None]) -> str:
    """'per VM entry: 1.0 saves, 1.0 restores, 1032.0 bytes (200 of them)'"""
    return (f"per {name.replace('_', ' ').replace('vm', 'VM')}: {figure(o['saves'])} saves, "
            f"{figure(o['restores'])} restores, {figure(o['bytes'])} bytes ({o['count']} of "
            "them)")


def switch_line(s: SwitchCosts) -> str:
    """'per context switch: 0.9 saves, 0.4 restores, 0.5 restores skipped
    (registers still valid), 800.0 bytes (1200 of them; ...)'"""
    p = s.per_switch()
    return (f"per context switch: {figure(p['saves'])} saves, {figure(p['restores'])} restores "
            f"at the next return to user mode, {figure(p['skipped_restores'])} restores skipped "
            f"(registers still valid), {figure(p['bytes'])} bytes ({s.switches} switches; "
            f"{s.not_judged} with no return to user mode before the next switch, or through a "
            "guest)")


def instruction_lines(ic: InstructionCosts) -> list[str]:
    """The short report's instruction figures (analyzers.instructions)."""
    out = []
    if ic.all_exits().count:
        parts = []
        for what, w in (("handled in the kernel", ic.in_kernel),
                        ("through the VMM in user mode", ic.via_user),
                        ("guest FP traps handled in the world switch", ic.fp_trap)):
            j = w.as_json()
            if w.count:
                parts.append(f"{figure(j['instructions'])} for the {w.count} {what}, "
                             f"{figure(j['fpu_path_instructions'])} of them in FPU paths")
        out.append(f"instructions per VM exit, to the same task's next entry: "
                   f"{'; '.join(parts)} ({ic.preempted_exits} more with a context switch "
                   "between, not counted)")
    if ic.switches:
        out.append(f"instructions per context switch: {ic.per_switch()} in __switch_to "
                   f"({ic.switches} switches)")
    if ic.paths:
        out.append("instructions in FPU paths: " + "; ".join(
            f"{p.name} {p.calls} calls, {figure(p.mean)} each (max {p.most})"
            for p in ic.paths))
    return out


def render_summary(console: Console, a: Analysis, max_findings: int) -> None:
    """The short report: findings, boundary checks, and the redundancy and
    cost headline per operation."""
    run, costs = a.run, a.costs
    ev = run.trace.events
    h = run.trace.header
    render_findings(console, run, a.own, a.verdict, max_findings)
    render_boundaries(console, a.verdict)
    _render_unconfirmed(console, run, a.verdict, max_findings)
    _render_redundancy(console, costs)
    for name, o in costs.per_operation.items():
        if o["count"]:
            console.print(escape("  " + operation_line(name, o)))
    if a.switches is not None and a.switches.switches:
        console.print(escape("  " + switch_line(a.switches)))
    for line in instruction_lines(a.instructions) if a.instructions is not None else []:
        console.print(escape("  " + line))
    if a.traps is not None:
        t = a.traps
        console.print(escape(
            f"  FP access traps: {figure(t.per(t.guest_traps, t.kvm_runs))} per KVM_RUN, "
            f"{figure(t.per(t.host_traps, t.context_switches))} per context switch"))
    console.print(escape(f"{run.trace.path}: {h.arch.name.lower()}, kernel {h.kernel or '-'}, "
                         f"{len(ev)} events; tables per call site, task, vCPU and kind: --full"))
    if a.guest is not None:
        console.print(escape(_guest_heading(a.guest)))
        render_summary(console, a.guest, max_findings)


def _render_unconfirmed(console: Console, run: Run, verdict: Verdict, limit: int) -> None:
    """The operations that looked like lost, stale or foreign state but that
    no boundary confirmed: not findings, and said so, one line each."""
    if not verdict.unconfirmed:
        return
    console.print(escape(
        f"{len(verdict.unconfirmed)} operation(s) looked like lost or stale state but "
        "their contexts' boundaries did not confirm it (not findings):"))
    shown = verdict.unconfirmed if limit <= 0 else verdict.unconfirmed[:limit]
    for u in shown:
        console.print(escape(f"  {u.kind} at seq {int(run.trace.events['seq'][u.event])} "
                             f"({task_label(run.trace.tasks, u.task)}): {u.reason}"))
    if len(shown) < len(verdict.unconfirmed):
        console.print(escape(f"  ... {len(verdict.unconfirmed) - len(shown)} more (--json)"))


def _render_redundancy(console: Console, costs: Costs) -> None:
    c = costs.classes
    pct = costs.redundant_pct
    # Every class, lost and stale ones included (whether confirmed or not).
    console.print(
        f"saves and restores: {sum(c.values())}; necessary {c[Class.NECESSARY]}, redundant "
        f"saves {c[Class.REDUNDANT_SAVE]} ({percent(pct['saves'])} of saves), redundant "
        f"restores {c[Class.REDUNDANT_RESTORE]} ({percent(pct['restores'])} of restores), "
        f"lost_state {c[Class.LOST_STATE]}, stale_restore {c[Class.STALE_RESTORE]}, unknown "
        f"{c[Class.UNKNOWN]}; redundant bytes {percent(pct['bytes'])} of bytes moved")


def render_analysis(console: Console, a: Analysis, top: int, max_findings: int = 50) -> None:
    run, own, verdict, costs = a.run, a.own, a.verdict, a.costs
    render_findings(console, run, own, verdict, max_findings)
    render_boundaries(console, verdict)
    _render_unconfirmed(console, run, verdict, top)
    for m in kernel_mechanisms(run.symbols):
        console.print(escape(f"kernel: {m.name}={'yes' if m.present else 'no'} "
                             f"({m.evidence}): {m.description}"))
    if a.traps is not None:
        _render_traps(console, a.traps)
    _render_redundancy(console, costs)
    for reason, n in costs.unknown_reasons.items():
        console.print(escape(f"  unknown: {n} x {UNKNOWN_REASONS[reason]}"))
    if not a.arm64:
        comp = Table(title="bytes moved per XSAVE component", title_justify="left",
                     show_edge=False)
        for name in ("component", "saved", "restored", "redundant"):
            comp.add_column(name, justify="right" if name != "component" else "left")
        for name, b in costs.per_component.items():
            comp.add_row(name, str(b["saved"]), str(b["restored"]), str(b["redundant"]))
        console.print(comp)
    console.print(_class_table("top call sites by redundant bytes", "site", costs.per_callsite,
                               top))
    console.print(_class_table("per task", "task", costs.per_task, top))
    if costs.per_vcpu:
        console.print(_class_table("per vCPU (guest state buffers)", "vcpu", costs.per_vcpu,
                                   top))
    ic = a.instructions
    ops = Table(title="per operation", title_justify="left", show_edge=False)
    for name in ("operation", "count", "saves", "restores", "bytes", "instructions"):
        ops.add_column(name, justify="right" if name != "operation" else "left")
    rows = dict(costs.per_operation)
    if a.switches is not None:
        rows["context_switch"] = a.switches.per_switch()
    for name, o in rows.items():
        timed = ic is not None and name in ("vm_entry", "context_switch")
        ops.add_row(name, str(o["count"]), figure(o["saves"]), figure(o["restores"]),
                    figure(o["bytes"]), figure(ic.per_operation(name)) if ic and timed else "")
    console.print(ops)
    if ic is not None and ic.paths:
        paths = Table(title="FPU paths in instructions (entry to return, callees included)",
                      title_justify="left", show_edge=False)
        for name in ("function", "calls", "instructions", "mean", "max"):
            paths.add_column(name, justify="right" if name != "function" else "left")
        for p in ic.paths:
            paths.add_row(p.name, str(p.calls), str(p.instructions), figure(p.mean),
                          str(p.most))
        console.print(paths)
    if a.guest is not None:
        console.print(escape(_guest_heading(a.guest)))
        render_analysis(console, a.guest, top, max_findings)


def _guest_heading(guest: Analysis) -> str:
    return (f"L2 guest: its own kernel's model, {len(guest.run.trace.events)} events, "
            f"{len(guest.run.trace.tasks)} task announcements:")


def _render_traps(console: Console, t: TrapCosts) -> None:
    table = Table(title="FP access traps (ESR_ELx.EC)", title_justify="left", show_edge=False)
    table.add_column("trapped in")
    for name in ("fp", "sve", "sme"):
        table.add_column(name, justify="right")
    for context, row in sorted(t.traps.items()):
        table.add_row(context, *(str(row.get(n, "")) for n in ("fp", "sve", "sme")))
    console.print(table)
    console.print(escape(
        f"traps: {figure(t.per(t.guest_traps, t.kvm_runs))} guest traps per KVM_RUN "
        f"({t.kvm_runs} runs), {figure(t.per(t.host_traps, t.context_switches))} host traps "
        "per context switch "
        f"({t.context_switches} switches); {t.save_undone} traps whose state was saved just "
        f"before and loaded back just after; {t.sve_retraps} SVE traps after an SVE-to-FPSIMD "
        f"downgrade ({t.sve_downgrades} downgrades)"))


def render_timeline(console: Console, timeline: Any, limit: int) -> None:
    table = Table(title=f"ownership timeline (first {limit} intervals, by CPU)",
                  title_justify="left", show_edge=False)
    for name in ("cpu", "seq", "owner", "kind", "content", "began", "ended", "changed"):
        table.add_column(name)
    for r in timeline_json(timeline, limit):
        changed = ", ".join(w for w, on in (("modified", r["modified"]),
                                            ("kernel", r["kernel_use"]),
                                            ("guest ran", r["in_guest"]),
                                            ("buffer stale", not r["buffer_current"])) if on)
        table.add_row(str(r["cpu"]), f"{r['start_seq']}-{r['end_seq']}", r["owner"],
                      r["owner_kind"], r["content"], r["begin"], r["end"], changed)
    console.print(table)
