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

from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.run import sidecar

GUEST_WORKLOADS = "fpu-switch:200,signal:30,fork-exec:3"


@pytest.fixture(scope="module")
def nested(qemu_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernel_available("6.1")
    out = tmp_path_factory.mktemp("l2") / "l2.ftr"
    p = fputrace("record", "--kernel", "6.1", "--workload", "kvm-pingpong:20",
                 "--guest-kernel", "6.1", "--guest-workload", GUEST_WORKLOADS, "-o", str(out))
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
    assert sw["mismatches"] == sig["mismatches"] == "0" and sig["handled"] == "30"
    assert fe["child_mismatches"] == fe["syscall_mismatches"] == "0"
    pp = workload_line(sidecar(nested, "console.log"), "kvm-pingpong")
    assert pp["fpu_mismatches"] == "0"
    meta = json.loads(sidecar(nested, "meta.json").read_text())
    assert meta["guest_kernel"].startswith("debian-linux-image-6.1")


def test_both_kernels_models_find_nothing(nested: Path) -> None:
    p = fputrace("report", "--json", str(nested))
    assert p.returncode == 0, p.stdout[-2000:]
    rep = json.loads(p.stdout)
    assert rep["findings"] == [] and rep["unconfirmed"] == []
    guest = rep["guest"]
    assert guest["findings"] == [] and guest["unconfirmed"] == []
    user = guest["boundary_checks"]["by_kind"]["user_return"]
    # The guest's own user returns, read in L2, are checked: every signal
    # delivery and sigreturn is a change on purpose, the rest must be equal.
    assert user["checked"] > 1000 and guest["boundary_checks"]["violations"] == 0
    assert user["changed_on_purpose"]["signal delivery"] >= 30
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
    assert len(guest_tasks) >= 10
    # fpu-switch's 2 tasks hand the CPU to each other 400 times (its own
    # count): the guest's most frequent switch pair is theirs.
    pairs = Counter(frozenset((int(a), int(b))) for a, b in
                    zip(ev["value"][switch].tolist(), ev["addr"][switch].tolist(), strict=True))
    (_, n), = pairs.most_common(1)
    assert 400 <= n <= 400 + 8, pairs.most_common(3)
