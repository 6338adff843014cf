"""analyzers.counts on synthetic traces, expectations worked out by hand:
the counts the report prints, from the tables the compiled pass fills."""

from __future__ import annotations

from pathlib import Path

from tracebuilder import (
    F_FORM64,
    F_L2,
    F_MEM,
    F_TASK,
    VM_ENTRY,
    VM_EXIT,
    XRSTOR,
    XSAVE,
    XSAVEOPT,
    TraceBuilder,
)

from analyzers.counts import Counts, counts_from_aggregates
from analyzers.ownership import analyze
from fputrace.trace.reader import Trace, read_trace
from fputrace.trace.symbols import Symbols

SH = 0xFFFF888000010000
OTHER = 0xFFFF888000020000
SYMS = Symbols.parse(
    "ffffffff81034a00 t save_fpregs_to_fpstate\n"
    "ffffffff81034b00 T restore_fpregs_from_fpstate\n"
    "ffffffff81035000 T _etext_marker\n",
    "ffffffffc0a01000 t __svm_vcpu_run\t[kvm_amd]\n",
)
SAVE_PC = 0xFFFFFFFF81034A43
RESTORE_PC = 0xFFFFFFFF81034B45
VMRUN_PC = 0xFFFFFFFFC0A0105E


def count_events(t: Trace, symbols: Symbols) -> Counts:
    own = analyze(t.events, None, t.tasks, tables=True)
    assert own.tables is not None
    return counts_from_aggregates(own.tables, len(t.events), t.tasks, symbols)


def test_exec_rename_l2_and_functions(tmp_path: Path) -> None:
    # pid 50 starts as "sh", saves once (xsaveopt64, 718 bytes), then exec()s into
    # "kvm-pingpong" (same task_struct, new announcement) and does a VM entry,
    # a save inside the nested guest (L2), a VM exit and a restore (28 bytes).
    # Another task (pid 60 "other") saves once with the 32-bit XSAVE form.
    b = TraceBuilder()
    b.task(SH, 50, "sh")
    b.event(XSAVEOPT, task=SH, flags=F_TASK | F_FORM64 | F_MEM, mem_bytes=718, pc=SAVE_PC)
    b.task(SH, 50, "kvm-pingpong")
    b.event(VM_ENTRY, task=SH, flags=F_TASK, pc=VMRUN_PC)
    b.event(XSAVE, task=SH, flags=F_TASK | F_L2 | F_MEM, mem_bytes=100, pc=0x1000)
    b.event(VM_EXIT, task=SH, flags=F_TASK, pc=VMRUN_PC + 3, vcpu=0)
    b.event(XRSTOR, task=SH, flags=F_TASK | F_FORM64 | F_MEM, mem_bytes=28, pc=RESTORE_PC)
    b.task(OTHER, 60, "other", vcpu=1)
    b.event(XSAVE, task=OTHER, flags=F_TASK | F_MEM, mem_bytes=576, pc=SAVE_PC, vcpu=1)
    # An event with no task read (TASK_VALID clear) counts as unknown.
    b.event(XRSTOR, flags=F_FORM64 | F_MEM, mem_bytes=28, pc=RESTORE_PC)
    t = read_trace(b.write(tmp_path / "t.ftr"))

    c = count_events(t, SYMS)

    assert c.events_total == 7
    assert c.events_by_kind == {"xsave": 2, "xsaveopt": 1, "xrstor": 2, "vm_entry": 1,
                                "vm_exit": 1}
    assert c.events_by_instruction == {"xsave": 2, "xsaveopt64": 1, "xrstor64": 2,
                                       "vm_entry": 1, "vm_exit": 1}
    assert c.bytes_saved == 718 + 100 + 576
    assert c.bytes_restored == 28 + 28
    tasks = {g.label: g.events for g in c.per_task}
    assert tasks == {"50 sh": 1, "50 kvm-pingpong": 4, "60 other": 1, "(unknown task)": 1}
    assert {g.label: g.events for g in c.per_cpu} == {"cpu0": 6, "cpu1": 1}
    assert {g.label: g.events for g in c.per_level} == {"L1 host": 6, "L2 guest": 1}
    fns = {g.label: g.by_kind for g in c.per_function}
    assert fns["save_fpregs_to_fpstate"] == {"xsaveopt": 1, "xsave": 1}
    assert fns["restore_fpregs_from_fpstate"] == {"xrstor": 2}
    assert fns["__svm_vcpu_run [kvm_amd]"] == {"vm_entry": 1, "vm_exit": 1}
    assert fns["(no symbol)"] == {"xsave": 1}  # the L2 guest's code at 0x1000


def test_empty_trace(tmp_path: Path) -> None:
    t = read_trace(TraceBuilder().write(tmp_path / "t.ftr"))
    c = count_events(t, Symbols.parse(""))
    assert c.events_total == 0 and c.per_task == [] and c.events_by_kind == {}
