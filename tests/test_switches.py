"""Per context switch costs on synthetic traces: each test narrates what
__switch_to() and the next return to user mode did (analyzers/switches.py
cites the kernel code), builds the trace in the real binary format, and
states by hand what must be counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_ownership import BT, BU, L1, L2, T, U, restore, save
from tracebuilder import F_REGS, F_TASK, PROBE, USER_ENTRY, USER_RETURN, VM_ENTRY, TraceBuilder

from analyzers.switches import switch_costs
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace

K = 0xFFFF888000900000  # a kernel thread: never returns to user mode
SWITCH = int(fmt.Probe.CONTEXT_SWITCH)


def switch(b: TraceBuilder, prev: int, nxt: int, cpu: int = 0) -> None:
    """__switch_to(prev, next): the probe fires while prev is current."""
    b.event(PROBE, vcpu=cpu, task=prev, index=SWITCH, value=prev, addr=nxt, flags=F_TASK)


def ret(b: TraceBuilder, task: int, cpu: int = 0) -> None:
    b.event(USER_RETURN, vcpu=cpu, task=task, pc=0x401000, regs_hash=L1,
            flags=F_TASK | F_REGS | 3)


def story() -> TraceBuilder:
    b = TraceBuilder()
    b.task(T, 10, "t")
    b.task(U, 20, "u")
    b.task(K, 2, "kthreadd")
    # 1. T blocks: switch_fpu_prepare() saves T's live registers; U's
    #    registers are not on this CPU, so its return restores them.
    switch(b, T, U)
    save(b, BT, regs=L1)
    restore(b, BU, before=L1, loads=L2, task=U)
    ret(b, U)
    # 2. U makes a system call and blocks: its save; T comes back and, as
    #    the trace shows no restore before its return, its registers were
    #    still valid (fpregs_state_valid()): a skipped restore.
    b.event(USER_ENTRY, vcpu=0, task=U, regs_hash=L2, flags=F_TASK | F_REGS)
    switch(b, U, T)
    save(b, BU, regs=L2, task=U)
    ret(b, T)
    # 3. T blocks with its registers already given up (TIF_NEED_FPU_LOAD):
    #    no save; the kernel thread never returns to user mode: not judged.
    switch(b, T, K)
    # 4. Back to T, which runs its guest (KVM_RUN) before returning: the
    #    restores are KVM's fpstate swaps, not the switch's: not judged.
    switch(b, K, T)
    restore(b, BT, before=L2, loads=L1)
    b.event(VM_ENTRY, vcpu=0, task=T, addr=0x1000, flags=F_TASK)
    ret(b, T)
    return b


def test_saves_restores_and_skipped_restores_per_switch(tmp_path: Path) -> None:
    t = read_trace(story().write(tmp_path / "s.ftr"))
    s = switch_costs(t.events)
    assert s is not None
    assert (s.switches, s.saves, s.restores, s.skipped_restores, s.not_judged) == (4, 2, 1, 1, 2)
    assert s.save_bytes == 2 * 640 and s.restore_bytes == 640
    assert s.per_switch() == {"count": 4, "saves": 0.5, "restores": 0.25, "bytes": 480.0,
                              "skipped_restores": 0.25}


def test_a_save_by_another_task_after_the_switch_is_not_the_switchs(tmp_path: Path) -> None:
    # T switches to U on CPU 0. A save on another CPU, and a save by next
    # after the switch (U's kernel_fpu_begin()), are not prev's save inside
    # __switch_to; U then returns with no restore: a skipped one.
    b = TraceBuilder()
    b.task(T, 10, "t")
    b.task(U, 20, "u")
    switch(b, T, U)
    save(b, BT, regs=L1, cpu=1)
    save(b, BU, regs=L2, task=U)
    ret(b, U)
    s = switch_costs(read_trace(b.write(tmp_path / "o.ftr")).events)
    assert s is not None and (s.saves, s.restores, s.skipped_restores) == (0, 0, 1)


def test_no_switch_probes_no_figures(tmp_path: Path) -> None:
    b = TraceBuilder()
    b.task(T, 10, "t")
    save(b, BT, regs=L1)
    ret(b, T)
    p = b.write(tmp_path / "n.ftr")
    assert switch_costs(read_trace(p).events) is None
    # The report says nothing per context switch rather than a made-up figure.
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", "--json", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert "context_switches" not in rep and "context_switch" not in rep["per_operation"]


def test_the_report_prints_what_the_kernel_does_per_switch(tmp_path: Path) -> None:
    p = story().write(tmp_path / "r.ftr")
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "per context switch: 0.5 saves, 0.25 restores at the next return to user mode, " \
           "0.25 restores skipped (registers still valid), 480.0 bytes (4 switches; 2 with " \
           "no return to user mode before the next switch, or through a guest)" in \
           " ".join(r.stdout.split())
    j = json.loads(subprocess.run([sys.executable, "-m", "fputrace", "report", "--json",
                                   str(p)], capture_output=True, text=True).stdout)
    assert j["context_switches"]["skipped_restores"] == 1
