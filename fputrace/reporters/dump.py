"""fputrace dump: a run's header and records as text lines. Renders only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from analyzers.counts import task_identity, task_label
from fputrace.trace import format as fmt
from fputrace.trace.reader import Trace
from fputrace.trace.run import Run


def header_lines(run: Run) -> list[str]:
    trace = run.trace
    h = trace.header
    return [
        f"trace      {trace.path}",
        f"format     version {h.version} (readable from reader version "
        f"{h.min_reader_version}), features {h.features!s}",
        f"arch       {h.arch.name.lower()}",
        f"qemu       {h.qemu or '-'} (plugin API {h.plugin_api})",
        f"kernel     {h.kernel or '-'}",
        f"plugin     {h.plugin_args}",
        f"ended      {_run_end(trace)}",
        f"complete   {'yes' if run.complete else 'no'}",
        *(f"problem    {p}" for p in run.problems),
    ]


def _run_end(trace: Trace) -> str:
    """How the run ended, as its footer says."""
    end = trace.footer.end if trace.footer is not None else None
    if trace.footer is None:
        return "unknown (no intact footer)"
    if end is None:
        return f"not recorded (format version {trace.header.version})"
    if isinstance(end, fmt.End):
        return f"{end.name.lower()}: {fmt.END_DESCRIPTIONS[end]}"
    return f"unknown end {end}"


def _event_line(ev: Any, who: str, where: str, caller: str = "", icount: bool = False) -> str:
    kind = int(ev["kind"])
    flags = int(ev["flags"])
    name = fmt.kind_name(kind) + ("64" if flags & fmt.Flag.FORM64 else "")
    level = "L2" if flags & fmt.Flag.L2 else "L1"
    parts = [f"{int(ev['seq']):>8}", f"cpu{int(ev['vcpu'])}", level, f"pl{flags & 3}",
             f"{name:<14}", f"task={who}"]
    if icount:
        parts.insert(2, f"i={int(ev['icount'])}")
    if kind in fmt.BUFFER_KINDS:
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
    elif kind == fmt.Kind.PROBE:
        index = int(ev["index"])
        name = fmt.Probe(index).name.lower() if index in fmt.Probe._value2member_map_ \
            else str(index)
        parts += [f"probe={name}", f"arg0={int(ev['value']):#x}"]
        if caller:
            parts.append(f"caller={caller}")
    elif kind == fmt.Kind.SIGFRAME:
        parts.append(f"frame={int(ev['addr']):#x}")
        if flags & fmt.Flag.MEM_VALID:
            parts.append(f"fpsimd={int(ev['mem_hash']):016x}")
        else:
            parts.append("no-fpsimd-record")
        if flags & fmt.Flag.SVE_VALID:
            parts += [f"sve_vl={int(ev['mem_features']) & 0xffff}",
                      f"sve={int(ev['mem_ext_hash']):016x}"]
    elif kind == fmt.Kind.PROBE_RETURN:
        parts.append(f"to={caller}")
        if icount:
            parts.append(f"insns={int(ev['icount']) - int(ev['aux'])}")
    if flags & fmt.Flag.KERNEL_SIMD:
        parts.append("kernel-simd-before")
    parts.append(f"pc={where}")
    return " ".join(parts)


def dump_lines(run: Run, limit: int = 0) -> Iterator[str]:
    trace = run.trace
    yield from header_lines(run)
    yield f"tasks      {len(trace.tasks)} announcements"
    for t in trace.tasks:
        comm = bytes(t["comm"]).split(b"\0", 1)[0].decode(errors="replace")
        yield (f"  task seq={int(t['seq'])} ptr={int(t['task']):#x} pid={int(t['pid'])} "
               f"tgid={int(t['tgid'])} comm={comm}")
    yield f"events     {len(trace.events)}"
    ident = task_identity(trace.events, trace.tasks)
    icount = bool(trace.header.features & fmt.Feature.ICOUNT)
    n = len(trace.events) if limit <= 0 else min(limit, len(trace.events))
    for i in range(n):
        ev = trace.events[i]
        who = task_label(trace.tasks, int(ident[i])).replace(" ", ":")
        kind = int(ev["kind"])
        caller = int(ev[fmt.PROBE_CALLER]) if kind == fmt.Kind.PROBE else \
            int(ev["addr"]) if kind == fmt.Kind.PROBE_RETURN else 0
        yield _event_line(ev, who, run.symbols.describe(int(ev["pc"])),
                          run.symbols.describe(caller) if caller else "", icount)
    if trace.footer is not None:
        f = trace.footer
        by_kind = ", ".join(f"{fmt.kind_name(k)}={n}" for k, n in sorted(f.events_by_kind.items()))
        yield (f"footer     events={f.events_total} tasks={f.tasks_total} "
               f"blocks={f.blocks_total} write_errors={f.write_errors} ({by_kind})")
