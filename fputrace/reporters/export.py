"""Exports of an analysed run for other tools: a Chrome JSON trace that the
Perfetto UI opens, and CSV with one row per event.

Perfetto (Chrome JSON trace format). The time axis is instructions
(analyzers.run.TimeAxis: all CPUs' retired instructions, from the
trace's first event), one instruction drawn as one nanosecond; a trace
without instruction counts (before format 4) is drawn in event order, event
seq N at N microseconds. "metadata" names which ("time_axis").
  pid 1 "CPUs", one thread per CPU: the ownership intervals as complete
      ("X") slices named after the owner; they follow each other on a CPU
      and never overlap, so nothing is nested. Saves, restores, traps and
      control register writes are instant ("i") events on the CPU with the
      event's fields as args.
  pid 2 "vCPUs", one thread per vCPU: VM entry to exit as slices.
  Findings: global instants in category "finding", named after their kind.
  Metadata events name the processes and threads; "metadata" at the top
  names the trace, kernel, tasks and vCPUs.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from analyzers.costs import vcpu_label
from analyzers.counts import task_label
from analyzers.ownership import Class, ContextKind, Unknown
from analyzers.run import Analysis, owner_labels, vm_runs
from analyzers.timeline import Begin, End
from fputrace.errors import FputraceError
from fputrace.trace import format as fmt

K = fmt.Kind
PID_CPUS, PID_VCPUS = 1, 2

# Events shown as instants on the CPU lanes (the rest are implied by slices).
MARKED_KINDS = frozenset(fmt.BUFFER_KINDS | {
    K.XSETBV, K.WRMSR_XFD, K.WRMSR_XFD_ERR, K.WRMSR, K.FP_TRAP, K.CPACR_WRITE, K.CPTR_WRITE,
    K.ZCR_WRITE, K.SMCR_WRITE, K.SVCR_WRITE})


class Sites:
    """Symbolised call sites, each pc looked up once."""

    def __init__(self, a: Analysis) -> None:
        self.symbols = a.run.symbols
        self.cache: dict[int, str] = {}

    def __call__(self, pc: int) -> str:
        s = self.cache.get(pc)
        if s is None:
            s = self.cache[pc] = self.symbols.describe(pc)
        return s


def event_args(a: Analysis, i: int, sites: Sites) -> dict[str, Any]:
    ev = a.run.trace.events[i]
    kind = int(ev["kind"])
    args: dict[str, Any] = {
        "seq": int(ev["seq"]), "icount": int(ev["icount"]), "site": sites(int(ev["pc"])),
        "task": task_label(a.run.trace.tasks, int(a.ident[i])),
        "level": "L2" if int(ev["flags"]) & fmt.Flag.L2 else "L1",
        "pl": int(ev["flags"]) & fmt.Flag.PL_MASK,
    }
    if kind in fmt.BUFFER_KINDS:
        args.update(buffer=f"{int(ev['addr']):#x}", bytes=int(ev["mem_bytes"]),
                    mem_hash=f"{int(ev['mem_hash']):016x}")
        cls = int(a.own.cls[i])
        if cls != Class.NOT_CLASSIFIED:
            args["class"] = Class(cls).key
            if cls == Class.UNKNOWN:
                args["why"] = Unknown(int(a.own.unknown_reason[i])).name.lower()
    else:
        args.update(value=f"{int(ev['value']):#x}", index=f"{int(ev['index']):#x}",
                    aux=f"{int(ev['aux']):#x}")
    return args


class Clock:
    """Event times as Chrome JSON microseconds."""

    def __init__(self, a: Analysis) -> None:
        self.axis = a.time_axis()
        self.origin = int(self.axis.time[0]) if len(self.axis.time) else 0
        # One instruction per nanosecond; one event seq per microsecond.
        self.scale = 1000 if self.axis.instructions else 1

    def ts(self, t: int) -> float | int:
        d = t - self.origin
        return d / self.scale if self.scale != 1 else d

    def of_event(self, i: int) -> float | int:
        return self.ts(int(self.axis.time[i]))

    def label(self) -> str:
        return ("instructions (all CPUs' retired instructions since the first event; "
                "1 ns per instruction)" if self.axis.instructions
                else "event seq (1 us per event)")


def _cpu_slices(a: Analysis, timeline: npt.NDArray[np.void], clock: Clock
                ) -> Iterator[dict[str, Any]]:
    labels = owner_labels(a, timeline["owner"])
    starts = clock.axis.of_seq(timeline["start_seq"].astype(np.int64))
    ends = clock.axis.of_seq(timeline["end_seq"].astype(np.int64))
    for r, t0, t1 in zip(timeline, starts.tolist(), ends.tolist(), strict=True):
        ok = int(r["owner_kind"])
        yield {"ph": "X", "pid": PID_CPUS, "tid": int(r["cpu"]), "ts": clock.ts(t0),
               "dur": max(clock.ts(t1) - clock.ts(t0), 0),
               "name": labels.get(int(r["owner"]), "unknown"),
               "cat": "ownership",
               "args": {"owner": f"{int(r['owner']):#x}",
                        "owner_kind": ContextKind(ok).name.lower() if ok >= 0 else "unknown",
                        "content": f"{int(r['content']):016x}",
                        "began": Begin(int(r["begin"])).name.lower(),
                        "ended": End(int(r["end"])).name.lower(),
                        "modified": bool(r["modified"]), "kernel_use": bool(r["kernel_use"]),
                        "in_guest": bool(r["in_guest"]),
                        "buffer_current": bool(r["buffer_current"])}}


def perfetto_events(a: Analysis, runs: list[tuple[int, int, int, int]], clock: Clock
                    ) -> Iterator[dict[str, Any]]:
    """runs: vm_runs() of the trace."""
    ev = a.run.trace.events
    at = clock.of_event
    sites = Sites(a)
    cpus = sorted({int(c) for c in np.unique(ev["vcpu"]).tolist()})
    vcpu_ids = sorted({r[0] for r in runs})
    vcpu_tid = {v: n for n, v in enumerate(vcpu_ids)}
    yield {"ph": "M", "pid": PID_CPUS, "name": "process_name", "args": {"name": "CPUs"}}
    for c in cpus:
        yield {"ph": "M", "pid": PID_CPUS, "tid": c, "name": "thread_name",
               "args": {"name": f"cpu{c}"}}
    if vcpu_ids:
        yield {"ph": "M", "pid": PID_VCPUS, "name": "process_name", "args": {"name": "vCPUs"}}
        for v, tid in vcpu_tid.items():
            yield {"ph": "M", "pid": PID_VCPUS, "tid": tid, "name": "thread_name",
                   "args": {"name": vcpu_label(v, a.run.trace.tasks)}}
    yield from _cpu_slices(a, a.timeline(), clock)
    for vid, cpu, e, x in runs:
        yield {"ph": "X", "pid": PID_VCPUS, "tid": vcpu_tid[vid], "ts": at(e),
               "dur": at(x) - at(e), "name": f"in guest on cpu{cpu}",
               "cat": "vm", "args": {"entry": sites(int(ev["pc"][e])),
                                     "exit_value": f"{int(ev['value'][x]):#x}"}}
    marked = np.flatnonzero(np.isin(ev["kind"], [int(k) for k in MARKED_KINDS]))
    for i in marked.tolist():
        yield {"ph": "i", "s": "t", "pid": PID_CPUS, "tid": int(ev["vcpu"][i]),
               "ts": at(i), "name": fmt.kind_name(int(ev["kind"][i])),
               "cat": "event", "args": event_args(a, i, sites)}
    for f in a.verdict.findings:
        yield {"ph": "i", "s": "g", "pid": PID_CPUS, "tid": int(ev["vcpu"][f.event]),
               "ts": at(f.event), "name": f"FINDING {f.kind}", "cat": "finding",
               "args": {"description": f.description,
                        "task": task_label(a.run.trace.tasks, f.task),
                        **{role: int(ev["seq"][j]) for role, j in f.events.items()}}}


def write_perfetto(a: Analysis, out: IO[str]) -> None:
    tasks = a.run.trace.tasks
    h = a.run.trace.header
    runs = vm_runs(a.run.trace.events, a.ident)
    clock = Clock(a)
    out.write('{"displayTimeUnit": "%s", "metadata": ' % ("ns" if clock.axis.instructions
                                                            else "ms"))
    json.dump({"trace": str(a.run.trace.path), "arch": h.arch.name.lower(),
               "kernel": h.kernel, "time_axis": clock.label(),
               # false: a cut-short or damaged trace, exported as far as it was read
               "complete": a.run.complete,
               "tasks": sorted({task_label(tasks, i) for i in range(len(tasks))}),
               "vcpus": [vcpu_label(v, tasks) for v in sorted({r[0] for r in runs})]}, out)
    out.write(', "traceEvents": [\n')
    first = True
    for e in perfetto_events(a, runs, clock):
        if not first:
            out.write(",\n")
        json.dump(e, out, separators=(",", ":"))
        first = False
    out.write("\n]}\n")


CSV_COLUMNS = ("seq", "cpu", "level", "pl", "kind", "class", "unknown_reason", "task", "site",
               "pc", "addr", "value", "index", "aux", "mem_bytes", "mem_hash", "regs_hash",
               "regs_after_hash", "flags", "finding")


def write_csv(a: Analysis, out: IO[str]) -> None:
    ev = a.run.trace.events
    tasks = a.run.trace.tasks
    sites = Sites(a)
    finding_at = {f.event: f.kind for f in a.verdict.findings}
    labels = {i: task_label(tasks, i) for i in range(-1, len(tasks))}
    if not a.run.complete:
        # The one mark a CSV can carry: a comment line before the header
        # (read_csv(comment="#") and the like skip it; a reader that does
        # not still sees that this is not a whole run).
        problem = a.run.problems[0] if a.run.problems else "no footer"
        out.write(f"# fputrace: incomplete trace, these rows cover only what was read: "
                  f"{problem.replace(chr(10), ' ')}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, e in enumerate(ev):
        flags = int(e["flags"])
        cls = int(a.own.cls[i])
        w.writerow((
            int(e["seq"]), int(e["vcpu"]), "L2" if flags & fmt.Flag.L2 else "L1",
            flags & fmt.Flag.PL_MASK, fmt.kind_name(int(e["kind"])),
            "" if cls == Class.NOT_CLASSIFIED else Class(cls).name.lower(),
            Unknown(int(a.own.unknown_reason[i])).name.lower() if cls == Class.UNKNOWN else "",
            labels.get(int(a.ident[i]), ""), sites(int(e["pc"])), f"{int(e['pc']):#x}",
            f"{int(e['addr']):#x}", f"{int(e['value']):#x}", int(e["index"]),
            f"{int(e['aux']):#x}", int(e["mem_bytes"]), f"{int(e['mem_hash']):016x}",
            f"{int(e['regs_hash']):016x}", f"{int(e['regs_after_hash']):016x}",
            f"{flags:#x}", finding_at.get(i, "")))


WRITERS = {"perfetto": write_perfetto, "csv": write_csv}


def export(a: Analysis, fmt_name: str, path: Path) -> None:
    """Write the export to path through a temporary file: a failure leaves
    no partial file behind under the name asked for."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tmp.open("w", newline="") as f:
            WRITERS[fmt_name](a, f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FputraceError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
