"""fputrace export on synthetic traces whose timeline and findings are known
by construction: the Perfetto JSON is loaded back and its structure and
counts checked against the trace; the CSV row by row."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_boundaries import lost_state_with_boundaries
from test_ownership import (
    BC,
    BG,
    BT,
    CHILD,
    GARBAGE,
    L1,
    LG1,
    LG2,
    VMCB,
    XG,
    T,
    probe,
    restore,
    save,
)
from tracebuilder import F_TASK, P_FORK_COPY, VM_ENTRY, VM_EXIT, TraceBuilder


def fputrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True)


def kvm_run_trace(path: Path) -> Path:
    # One KVM_RUN on CPU 0 (test_ownership's timeline scenario): T's state
    # restored and saved, the guest's loaded, the guest entered and left,
    # its changed registers saved, T's loaded back.
    b = TraceBuilder()
    b.task(T, 10, "t")
    restore(b, BT, before=GARBAGE, loads=L1)  # 0
    save(b, BT, regs=L1)  # 1
    restore(b, BG, before=L1, loads=LG1, avx=XG)  # 2
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)  # 3
    b.event(VM_EXIT, task=T, flags=F_TASK, value=0x60)  # 4
    save(b, BG, regs=LG2, avx=XG)  # 5
    restore(b, BT, before=LG2, loads=L1)  # 6
    return b.write(path)


def perfetto(tmp_path: Path, trace: Path) -> dict[str, Any]:
    out = tmp_path / "out.json"
    p = fputrace("export", str(trace), "--format", "perfetto", "-o", str(out))
    assert p.returncode == 0, p.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_perfetto_kvm_run(tmp_path: Path) -> None:
    data = perfetto(tmp_path, kvm_run_trace(tmp_path / "t.ftr"))
    evs = data["traceEvents"]
    assert Counter((e["ph"], e.get("cat")) for e in evs) == {
        ("M", None): 4,             # process and thread names: CPUs/cpu0, vCPUs/the vCPU
        ("X", "ownership"): 7,      # the seven intervals between the boundaries
        ("X", "vm"): 1,             # the one run in the guest
        ("i", "event"): 5,          # the three restores and two saves
    }
    names = {(e["pid"], e.get("tid"), e["args"]["name"]) for e in evs if e["ph"] == "M"}
    vcpu = f"vcpu vmcb={VMCB:#x} (10 t)"
    assert names == {(1, None, "CPUs"), (1, 0, "cpu0"), (2, None, "vCPUs"), (2, 0, vcpu)}
    own = [(e["ts"], e["dur"], e["name"], e["args"]["in_guest"]) for e in evs
           if e.get("cat") == "ownership"]
    guest = f"guest of {vcpu}"
    assert own == [(0, 1, "10 t", False), (1, 1, "10 t", False), (2, 1, guest, False),
                   (3, 1, guest, True), (4, 1, guest, False), (5, 1, guest, False),
                   (6, 0, "10 t", False)]
    # On one lane the slices follow each other: never overlapping, never nested.
    ends = [ts + dur for ts, dur, _, _ in own]
    assert all(end <= nxt for end, (nxt, _, _, _) in zip(ends, own[1:], strict=False))
    vm = next(e for e in evs if e.get("cat") == "vm")
    assert (vm["pid"], vm["tid"], vm["ts"], vm["dur"]) == (2, 0, 3, 1)
    marks = [(e["ts"], e["name"], e["args"]["buffer"]) for e in evs if e.get("cat") == "event"]
    assert marks == [(0, "xrstor", f"{BT:#x}"), (1, "xsaveopt", f"{BT:#x}"),
                     (2, "xrstor", f"{BG:#x}"), (5, "xsaveopt", f"{BG:#x}"),
                     (6, "xrstor", f"{BT:#x}")]
    assert data["metadata"]["tasks"] == ["10 t"]
    assert data["metadata"]["vcpus"] == [vcpu]


def test_perfetto_findings_are_flagged(tmp_path: Path) -> None:
    # test_boundaries' lost state: the restore at seq 4 lost T's L3, and T's
    # return at seq 6 shows it (two findings: lost_state and corrupted_state).
    b = TraceBuilder()
    lost_state_with_boundaries(b)
    data = perfetto(tmp_path, b.write(tmp_path / "lost.ftr"))
    flagged = sorted((e["ts"], e["name"], e["s"]) for e in data["traceEvents"]
                     if e.get("cat") == "finding")
    assert flagged == [(4, "FINDING lost_state", "g"), (6, "FINDING corrupted_state", "g")]


def test_csv_one_row_per_event_with_its_class(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    p = fputrace("export", str(kvm_run_trace(tmp_path / "t.ftr")), "--format", "csv", "-o",
                 str(out))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.open()))
    # 0: nobody's registers known before it; 1: saves what BT holds (redundant);
    # 2, 5, 6: each moves state the other side did not have.
    assert [(r["seq"], r["kind"], r["class"], r["unknown_reason"]) for r in rows] == [
        ("0", "xrstor", "unknown", "no_previous_owner"),
        ("1", "xsaveopt", "redundant_save", ""),
        ("2", "xrstor", "necessary", ""),
        ("3", "vm_entry", "", ""),
        ("4", "vm_exit", "", ""),
        ("5", "xsaveopt", "necessary", ""),
        ("6", "xrstor", "necessary", ""),
    ]
    assert {r["task"] for r in rows} == {"10 t"}
    assert rows[2]["addr"] == f"{BG:#x}" and rows[4]["value"] == "0x60"


@pytest.mark.parametrize("fmt_name", ["perfetto", "csv"])
def test_unwritable_output_is_one_line_and_leaves_nothing(tmp_path: Path, fmt_name: str) -> None:
    trace = kvm_run_trace(tmp_path / "t.ftr")
    p = fputrace("export", str(trace), "--format", fmt_name, "-o",
                 str(tmp_path / "no" / "such" / "out"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no directory" in p.stderr
    # A name that is a directory cannot be written, not even by root: the
    # rename onto it fails after the whole export was written beside it.
    out = tmp_path / "taken"
    out.mkdir()
    (out / "inside").write_text("")
    p = fputrace("export", str(trace), "--format", fmt_name, "-o", str(out))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot write" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.ftr", "t.kallsyms.gz",
                                                          "t.meta.json", "taken"]


def test_the_owner_after_a_fork_copy_is_the_parent_in_export_as_in_report(
        tmp_path: Path) -> None:
    # test_ownership's fork copy: T's state loaded from BT (0), fpu_clone()
    # saves it into the child's buffer BC (2). A save copies the registers
    # and gives them to nobody (switch_fpu_prepare() and fpu_clone() leave
    # fpu_fpregs_owner_ctx alone), so after the copy T still owns them: the
    # slice from the copy on is T's, not the child's, as the classification
    # that report uses has it. The child's own restore (5) makes it the owner.
    b = TraceBuilder()
    b.task(T, 10, "t")
    b.task(CHILD, 11, "child")
    restore(b, BT, before=GARBAGE, loads=L1)  # 0
    probe(b, P_FORK_COPY, arg0=CHILD)  # 1
    save(b, BC, regs=L1)  # 2: the fork copy
    restore(b, BT, before=L1, loads=L1)  # 3
    restore(b, BC, before=L1, loads=L1, task=CHILD)  # 4: the child runs
    data = perfetto(tmp_path, b.write(tmp_path / "fork.ftr"))
    own = [(e["ts"], e["args"]["owner"]) for e in data["traceEvents"]
           if e.get("cat") == "ownership"]
    assert own == [(0, f"{BT:#x}"), (2, f"{BT:#x}"), (3, f"{BT:#x}"), (4, f"{BC:#x}")]
