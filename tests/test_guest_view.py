"""The nested guest's own run (analyzers.run.guest_view()) on hand-built
traces: its tasks are the L2 task records, told apart by pid where the
plugin read them through the guest's page tables, and by the guest's fork
probes where it could not.

The scene: L1's vCPU thread (pid 50) enters the guest. Inside, the guest
kernel switches to a task at G (pid 10, "fpu-switch"); that task forks a
child whose task_struct is at C, which runs (its registers restored before
its return to user mode), exits, and whose task_struct is reused by the
next fork's child (pid 12, "sh").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from tracebuilder import TraceBuilder

from analyzers.boundaries import TaskKeys
from analyzers.counts import task_identity, task_label
from analyzers.run import guest_view
from fputrace.trace import format as fmt
from fputrace.trace.run import load_run

VCPU_THREAD = 0xFFFF888001000000
G, C = 0xFF11000004A00000, 0xFF11000004B00000
K = fmt.Kind
L2 = int(fmt.Flag.L2)
VALID = int(fmt.Flag.TASK_VALID)


def _scene(tmp_path: Path, named: bool) -> Path:
    b = TraceBuilder()
    b.task(VCPU_THREAD, 50, "qemu-system-x86")
    b.event(K.VM_ENTRY, task=VCPU_THREAD, flags=VALID, addr=0x5000)
    guest = {"task": VCPU_THREAD, "flags": L2 | VALID}

    announced: set[tuple[int, int, str]] = set()

    def switch(to: int, pid: int, comm: str) -> None:
        b.event(K.PROBE, index=fmt.Probe.CONTEXT_SWITCH, value=G, addr=to,
                guest_task=G, **guest)
        # The record takes the switch's place; its pid and comm were read
        # at the next VM exit, or are 0 where the plugin could not read
        # them. One record per identity, as the plugin writes them.
        identity = (to, pid, comm) if named else (to, 0, "")
        if identity not in announced:
            announced.add(identity)
            b.task(*identity, flags=int(fmt.TaskFlag.L2))

    switch(G, 10, "fpu-switch")
    for child_pid, comm in ((11, "fpu-switch"), (12, "sh")):
        b.event(K.PROBE, index=fmt.Probe.FORK_COPY, value=C, guest_task=G, **guest)
        switch(C, child_pid, comm)
        # Its registers restored from its buffer before it returns to user mode.
        b.event(K.XRSTOR, pc=0xFFFFFFFF81040C05, addr=C + 0x1000, guest_task=C, **guest)
        b.event(K.USER_RETURN, pc=0x401000, guest_task=C, **guest)
    b.event(K.VM_EXIT, task=VCPU_THREAD, flags=VALID, addr=0x5000)
    return b.write(tmp_path / "g.ftr")


def _lifetimes(path: Path) -> tuple[list[str], int, int]:
    """The guest's task labels, and how many task lifetimes the two user
    returns at C belong to."""
    view = guest_view(load_run(path))
    assert view is not None
    ev, tasks = view.trace.events, view.trace.tasks
    ident = task_identity(ev, tasks)
    keys = TaskKeys(tasks, ident)
    returns = np.flatnonzero(ev["kind"] == K.USER_RETURN)
    at_c = keys.at(returns)
    assert np.all(at_c >= 0)
    labels = sorted({task_label(tasks, int(i)) for i in ident[returns]})
    return labels, len(set(at_c.tolist())), len(tasks)


def test_named_guest_tasks_are_their_own_lifetimes(tmp_path: Path) -> None:
    labels, lifetimes, n_tasks = _lifetimes(_scene(tmp_path, named=True))
    # Each child is its pid: two lifetimes of C, named as the guest named them.
    assert labels == ["11 fpu-switch", "12 sh"]
    assert lifetimes == 2
    # The guest's three task records, nothing added.
    assert n_tasks == 3


def test_guest_tasks_known_by_pointer_take_their_lifetimes_from_the_forks(
        tmp_path: Path) -> None:
    labels, lifetimes, n_tasks = _lifetimes(_scene(tmp_path, named=False))
    assert labels == [f"task {C:#x}"]
    # Without pids, each fork probe's child starts a lifetime of C.
    assert lifetimes == 2
    assert n_tasks == 2 + 2


def test_the_full_report_has_the_guests_model_with_its_named_tasks(tmp_path: Path) -> None:
    path = _scene(tmp_path, named=True)
    for full in ([], ["--full"]):
        p = subprocess.run([sys.executable, "-m", "fputrace", "report", *full, str(path)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        head, sep, guest = p.stdout.partition("L2 guest: its own kernel's model")
        assert sep and "3 task announcements" in guest
        if full:
            # The guest's per-task table names its tasks as the guest does.
            assert "11 fpu-switch" in guest and "12 sh" in guest
            assert "fpu-switch" not in head
