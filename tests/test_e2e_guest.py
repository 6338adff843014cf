"""A real L2 Linux guest: Debian's 6.1 kernel boots inside the recorded 6.1
host under this machine's own QEMU with KVM in L1 (record --guest-kernel),
and runs workloads that check their own registers. The host's model must
find nothing; the guest's kernel gets its own model (its L2 events, its own
tasks from its __switch_to, its own user returns), which must find nothing
either, since neither kernel did anything wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from e2e import fputrace, kernel_available, workload_line

from fputrace.record.workloads import parse_workloads
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.run import load_run, sidecar

# Every workload that 'all' runs in the guest (all but the KVM ones, which
# inside L2 would need an L3), with small counts: fpu-hog alongside takes
# half of L1's CPU.
GUEST_WORKLOADS = "fpu-switch:200,signal:30,kernel-fpu:10,fork-exec:3,compat32:5,ptrace-fp:4"


@pytest.fixture(scope="module")
def nested(qemu_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernel_available("6.1")
    out = tmp_path_factory.mktemp("l2") / "l2.ftr"
    # fpu-hog, in L1 alongside the guest on its one CPU, preempts the vCPU
    # thread of L1's VMM inside KVM_RUN (test_..._preempts_the_vcpu_thread).
    p = fputrace("record", "--kernel", "6.1", "--workload", "kvm-pingpong:20",
                 "--guest-kernel", "6.1", "--guest-workload", GUEST_WORKLOADS,
                 "--alongside", "fpu-hog", "--timeout", "900", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "L2 fpu-switch:200: exit 0" in p.stderr
    return out


def _guest_summary(out: Path, label: str) -> dict[str, str]:
    meta = json.loads(sidecar(out, "meta.json").read_text())
    (w,) = [w for w in meta["guest_workloads"] if w["label"] == label]
    assert w["exit_status"] == 0, w
    summary: dict[str, str] = w["summary"]
    return summary


def test_the_guest_boots_and_its_workloads_pass_their_own_checks(nested: Path) -> None:
    sw = _guest_summary(nested, "fpu-switch:200")
    sig = _guest_summary(nested, "signal:30")
    fe = _guest_summary(nested, "fork-exec:3")
    kf = _guest_summary(nested, "kernel-fpu:10")
    c32 = _guest_summary(nested, "compat32:5")
    assert sw["mismatches"] == sig["mismatches"] == kf["mismatches"] == "0"
    assert sig["handled"] == "30" and kf["ok"] == "10"
    assert fe["child_mismatches"] == fe["syscall_mismatches"] == c32["mismatches"] == "0"
    assert fe["exec_not_init"] == sig["handler_not_init"] == "0"
    pt = _guest_summary(nested, "ptrace-fp:4")
    assert pt["mismatches"] == pt["failed"] == "0"
    meta = json.loads(sidecar(nested, "meta.json").read_text())
    assert {w["label"].split(":")[0] for w in meta["guest_workloads"]} == {
        r.workload.name for r in parse_workloads("all", in_guest=True)}
    pp = workload_line(sidecar(nested, "console.log"), "kvm-pingpong")
    assert pp["fpu_mismatches"] == "0"
    assert meta["guest_kernel"].startswith("debian-linux-image-6.1")


def test_both_kernels_models_find_nothing(nested: Path) -> None:
    p = fputrace("report", "--json", str(nested))
    assert p.returncode == 0, p.stdout[-2000:]
    rep = json.loads(p.stdout)
    assert rep["findings"] == [] and rep["unconfirmed"] == []
    guest = rep["guest"]
    assert guest["findings"] == []
    # The guest's model is not yet as precise as the host's: one fresh run
    # in six listed one unconfirmed foreign_save at an L2 context switch's
    # save (its next boundary showed the task's registers intact). Listed
    # apart, never a finding; more than that, or another kind, fails.
    assert len(guest["unconfirmed"]) <= 1 and all(
        u["reason"] == "the context's next boundary showed its registers intact"
        for u in guest["unconfirmed"]), guest["unconfirmed"]
    user = guest["boundary_checks"]["by_kind"]["user_return"]
    # The guest's own user returns, read in L2, are checked: every sigreturn
    # is a change on purpose, the rest must be equal. Every signal frame of
    # the guest's 50 signals is seen: checked against the task's entry, or
    # not judged because the plugin did not write that L2 entry (it misses
    # some, "the register file at the entry was not read"; the returns to
    # those handlers are counted there too, not as changes on purpose).
    assert user["checked"] > 1000 and guest["boundary_checks"]["violations"] == 0
    frames = user["purpose_checked"].get("signal frame", 0) + user["unchecked"].get(
        "a signal frame save whose task's entry the trace did not show", 0)
    assert frames >= 30 and user["purpose_checked"]["signal frame"] >= 10, user
    assert user["changed_on_purpose"]["sigreturn"] >= 30
    text = fputrace("report", str(nested)).stdout
    assert "L2 guest: its own kernel's model" in text


def test_guest_events_belong_to_guest_tasks(nested: Path) -> None:
    t = read_trace(nested)
    ev = t.events
    l2 = (ev["flags"] & fmt.Flag.L2) != 0
    # The guest's own FPU work happens in L2: its context switches' saves,
    # its restores before its tasks return to user mode, its signal frames.
    saves = l2 & fmt.SAVE_TABLE[ev["kind"]]
    restores = l2 & fmt.RESTORE_TABLE[ev["kind"]]
    assert np.count_nonzero(saves) >= 400 and np.count_nonzero(restores) >= 400
    # Every L2 event after the guest's first context switch names a guest task.
    switch = l2 & (ev["kind"] == fmt.Kind.PROBE) & (ev["index"] == fmt.Probe.CONTEXT_SWITCH)
    first = int(np.flatnonzero(switch)[0])
    after = l2 & (np.arange(len(ev)) > first + 1)
    assert np.all(ev["guest_task"][after] != 0)
    guest_tasks = t.tasks[(t.tasks["flags"] & fmt.TaskFlag.L2) != 0]
    assert len(guest_tasks) >= 10 and int(np.count_nonzero(l2)) > 5000
    # fpu-switch's 2 tasks hand the CPU to each other 400 times (its own
    # count): the guest's most frequent switch pair is theirs. The guest's
    # timer preempts one for the other now and then too (more often than in
    # L1, as the host hog slows the guest down): up to a tenth more; and a
    # hand-over can pass through the idle task when the other has not woken
    # yet (one of 400 in a fresh run): a few less. The
    # guest's tasks are named, read through its page tables at the VM exits:
    # the pair is two fpu-switch processes (its program's name, two pids).
    # A task_struct is reused after its task exits, so a switch's tasks are
    # the latest records of their pointers up to it; next's record takes
    # the sequence number after the switch's own (one CPU).
    def named_at(ptr: int, seq: int) -> tuple[int, str]:
        mine = guest_tasks[(guest_tasks["task"] == ptr) & (guest_tasks["seq"] <= seq + 1)]
        if not len(mine):
            return 0, ""        # prev of the first switch: the guest's boot task
        x = mine[np.argmax(mine["seq"])]
        return int(x["pid"]), bytes(x["comm"]).split(b"\0")[0].decode()

    pairs = Counter(frozenset((named_at(int(a), q), named_at(int(b), q))) for a, b, q in
                    zip(ev["value"][switch].tolist(), ev["addr"][switch].tolist(),
                        ev["seq"][switch].tolist(), strict=True))
    (pair, n), = pairs.most_common(1)
    assert 390 <= n <= 440, pairs.most_common(3)
    assert {c for _, c in pair} == {"fpu-switch"} and len(pair) == 2, pair
    assert all(pid > 1 for pid, _ in pair)
    comms = {bytes(c).split(b"\0")[0].decode() for c in guest_tasks["comm"].tolist()}
    assert {"fork-exec", "signal", "kernel-fpu", "fpu-switch"} <= comms, comms
    # L1's own events name L1's tasks: a task record of L1 always has a
    # name (a guest's pointer taken for L1's task would have none).
    host = t.tasks[(t.tasks["flags"] & fmt.TaskFlag.L2) == 0]
    nameless = host[host["comm"] == b""]
    assert len(nameless) == 0, [hex(int(x)) for x in nameless["task"]]


def test_guest_switches_while_a_host_hog_preempts_the_vcpu_thread(nested: Path) -> None:
    preempted = nested
    # fpu-switch runs inside L2 while fpu-hog, on L1's one CPU, preempts the
    # vCPU thread of L1's VMM inside KVM_RUN. Each checks its own registers
    # (the guest's: test_the_guest_boots_...).
    hog = workload_line(sidecar(preempted, "console.log"), "fpu-hog")
    assert hog["mismatches"] == "0" and int(hog["rounds"]) > 100
    rep = json.loads(fputrace("report", "--json", str(preempted)).stdout)

    t = read_trace(preempted)
    ev = t.events
    kinds, task = ev["kind"], ev["task"]
    l1 = (ev["flags"] & fmt.Flag.L2) == 0
    save = l1 & fmt.SAVE_TABLE[kinds]
    restore = l1 & fmt.RESTORE_TABLE[kinds]
    probe = l1 & (kinds == fmt.Kind.PROBE)
    switch = probe & (ev["index"] == fmt.Probe.CONTEXT_SWITCH)
    vm_entry = kinds == fmt.Kind.VM_ENTRY
    vcpu_thread = Counter(task[vm_entry].tolist()).most_common(1)[0][0]
    # The host's swap, fpu_swap_kvm_fpstate() (arch/x86/kernel/fpu/core.c):
    # it saves the current registers unless TIF_NEED_FPU_LOAD says they are
    # not live (save_fpregs_to_fpstate()), swaps fpstate, and loads the other
    # (restore_fpregs_from_fpstate()): in each call one restore, at most one save.
    swap_pc = load_run(preempted).symbols.values["fpu_swap_kvm_fpstate"]
    at_swap = l1 & (ev["pc"] == swap_pc)
    begins = np.flatnonzero(at_swap & (kinds == fmt.Kind.PROBE))
    ends = np.flatnonzero(at_swap & (kinds == fmt.Kind.PROBE_RETURN))
    swaps = 0
    for r in ends.tolist():
        i = int(np.searchsorted(begins, r)) - 1
        begin = int(begins[i])
        assert int(np.count_nonzero(restore[begin:r])) == 1, (begin, r)
        assert int(np.count_nonzero(save[begin:r])) <= 1, (begin, r)
        swaps += 1
    assert swaps > 100
    # Preemption inside KVM_RUN: between a VM exit and the vCPU thread's next
    # entry, a switch away from it and back. __switch_to(): switch_fpu_prepare()
    # saves the guest fpstate if its registers are still live (no
    # TIF_NEED_FPU_LOAD), switch_fpu_finish() sets TIF_NEED_FPU_LOAD; before
    # the entry vcpu_enter_guest() calls switch_fpu_return(), whose
    # fpregs_restore_userregs() restores the fpstate unless fpregs_state_valid():
    # unless no other context's state was loaded on the CPU meanwhile (a
    # kernel thread that ran in between leaves the registers the guest's).
    # kernel_fpu_begin_mask() after the exit does both first: it saves the
    # live registers, sets TIF_NEED_FPU_LOAD (the switch then saves nothing)
    # and invalidates the CPU's registers (__cpu_invalidate_fpregs_state():
    # the restore before the entry then always comes).
    kfpu_begin = probe & (ev["index"] == fmt.Probe.KFPU_BEGIN)
    exits = np.flatnonzero(l1 & (kinds == fmt.Kind.VM_EXIT) & (task == vcpu_thread))
    sfr_pc = load_run(preempted).symbols.values["switch_fpu_return"]
    thread_entries = np.flatnonzero(vm_entry & (task == vcpu_thread))
    judged = restored_after_hog = 0
    for x in exits.tolist():
        at = int(np.searchsorted(thread_entries, x))
        if at == len(thread_entries):
            continue
        e = int(thread_entries[at])
        if not np.any(switch[x + 1:e]):
            continue  # not preempted: nothing to look at
        window = np.arange(x + 1, e)
        away = window[switch[window] & (ev["value"][window] == vcpu_thread)]
        user = window[(kinds[window] == fmt.Kind.USER_RETURN) & l1[window]
                      & (task[window] == vcpu_thread)]
        if not len(away) or len(user):
            continue  # not preempted, or KVM_RUN returned to the VMM first
        back = window[switch[window] & (ev["addr"][window] == vcpu_thread)]
        assert len(back) and back[-1] > away[0], (x, e)
        gone, came = int(away[0]), int(back[-1])
        own_save = save & (task == vcpu_thread)
        saved_by_kfpu = bool(np.any(kfpu_begin[x + 1:gone] & (task[x + 1:gone] == vcpu_thread))
                             and np.any(own_save[x + 1:gone]))
        assert bool(np.any(own_save[gone:came])) != saved_by_kfpu, (x, e)
        assert np.any(probe[came:e] & (ev["pc"][came:e] == sfr_pc)), (x, e)
        others_loaded = bool(np.any(restore[gone:came] & (task[gone:came] != vcpu_thread)))
        invalidated = bool(np.any(kfpu_begin[x + 1:e]))
        restored = bool(np.any(restore[came:e] & (task[came:e] == vcpu_thread)))
        assert restored == (others_loaded or invalidated), (x, e, restored)
        judged += 1
        restored_after_hog += restored
    assert judged >= 10 and restored_after_hog >= 5, (judged, restored_after_hog)
    # Per guest context switch, the guest's own model: fpu-switch's 400
    # hand-offs each save the outgoing task's registers and restore the
    # incoming one's at its return to user mode.
    cs = rep["guest"]["context_switches"]
    assert cs["saves"] >= 400 and cs["restores"] >= 400, cs
