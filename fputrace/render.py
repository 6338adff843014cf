"""Presentation of runs and analysis results: text, rich tables, JSON.
Renders only; every number comes from the analyzers or the reader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from analyzers.counts import Counts, Group, task_identity, task_label
from fputrace.run import Run
from fputrace.trace import format as fmt
from fputrace.trace.reader import Trace

TRACE_KINDS_WITH_MEMORY = fmt.SAVE_KINDS | fmt.RESTORE_KINDS


def header_lines(trace: Trace) -> list[str]:
    h = trace.header
    return [
        f"trace      {trace.path}",
        f"format     version {h.version} (readable from reader version "
        f"{h.min_reader_version}), features {h.features!s}",
        f"arch       {h.arch.name.lower()}",
        f"qemu       {h.qemu or '-'} (plugin API {h.plugin_api})",
        f"kernel     {h.kernel or '-'}",
        f"plugin     {h.plugin_args}",
        f"complete   {'yes' if trace.complete else 'no: ' + '; '.join(trace.problems)}",
    ]


def _event_line(ev: Any, who: str, where: str) -> str:
    kind = int(ev["kind"])
    flags = int(ev["flags"])
    name = fmt.kind_name(kind) + ("64" if flags & fmt.Flag.FORM64 else "")
    level = "L2" if flags & fmt.Flag.L2 else "L1"
    parts = [f"{int(ev['seq']):>8}", f"cpu{int(ev['vcpu'])}", level, f"pl{flags & 3}",
             f"{name:<14}", f"task={who}"]
    if kind in TRACE_KINDS_WITH_MEMORY:
        parts += [f"addr={int(ev['addr']):#x}", f"rfbm={int(ev['value']):#x}",
                  f"xcr0={int(ev['xcr0']):#x}"]
        if flags & fmt.Flag.MEM_VALID:
            parts += [f"bytes={int(ev['mem_bytes'])}", f"xfeat={int(ev['mem_features']):#x}",
                      f"mem={int(ev['mem_hash']):016x}"]
            if int(ev["xstate_bv"]):
                parts.append(f"xstate_bv={int(ev['xstate_bv']):#x}")
        else:
            parts.append("no-memory-access")
        if flags & fmt.Flag.REGS_VALID:
            parts.append(f"regs={int(ev['regs_hash']):016x}")
        if flags & fmt.Flag.REGS_AFTER_VALID:
            parts.append(f"after={int(ev['regs_after_hash']):016x}")
    elif kind in (fmt.Kind.XSETBV, fmt.Kind.WRMSR, fmt.Kind.WRMSR_XFD, fmt.Kind.WRMSR_XFD_ERR):
        parts += [f"index={int(ev['index']):#x}", f"value={int(ev['value']):#x}"]
    elif kind == fmt.Kind.VM_ENTRY:
        parts.append(f"vmcb={int(ev['addr']):#x}")
    if flags & fmt.Flag.KERNEL_SIMD:
        parts.append("kernel-simd-before")
    parts.append(f"pc={where}")
    return " ".join(parts)


def dump_lines(run: Run, limit: int = 0) -> Iterator[str]:
    trace = run.trace
    yield from header_lines(trace)
    yield f"tasks      {len(trace.tasks)} announcements"
    for t in trace.tasks:
        comm = bytes(t["comm"]).split(b"\0", 1)[0].decode(errors="replace")
        yield (f"  task seq={int(t['seq'])} ptr={int(t['task']):#x} pid={int(t['pid'])} "
               f"tgid={int(t['tgid'])} comm={comm}")
    yield f"events     {len(trace.events)}"
    ident = task_identity(trace.events, trace.tasks)
    n = len(trace.events) if limit <= 0 else min(limit, len(trace.events))
    for i in range(n):
        ev = trace.events[i]
        who = task_label(trace.tasks, int(ident[i])).replace(" ", ":")
        yield _event_line(ev, who, run.symbols.describe(int(ev["pc"])))
    if trace.footer is not None:
        f = trace.footer
        by_kind = ", ".join(f"{fmt.kind_name(k)}={n}" for k, n in sorted(f.events_by_kind.items()))
        yield (f"footer     events={f.events_total} tasks={f.tasks_total} "
               f"blocks={f.blocks_total} write_errors={f.write_errors} ({by_kind})")


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
        console.print(f"recording: [bold]{escape(str(run.meta.get('status')))}[/] ({escape(wl)})")
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
