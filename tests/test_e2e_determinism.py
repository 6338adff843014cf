"""Reproducible recordings: the same kernel, workloads and QEMU recorded
twice on a deterministic machine (record's default with one CPU) give the
same trace, event for event and field for field. The only differences
allowed are the paths of the run's files, which the plugin's arguments in
the header name: the trace's (out=) and the recorder's end file (end=).

The recordings are of KVM round trips and context switches: timer interrupts,
preemptions and the order of the guest's exits all follow virtual time, so
with the host clock two runs differ by hundreds of events (the last test
shows that this comparison would see it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from e2e import fputrace, kernel_available, workload_line

from fputrace.record.machine import deterministic_args
from fputrace.trace.reader import Trace, read_trace
from fputrace.trace.run import sidecar

pytestmark = [pytest.mark.qemu, pytest.mark.kernel]

WORKLOAD = "kvm-pingpong:30,fpu-switch:300"


def record(out: Path, *args: str) -> Trace:
    p = fputrace("record", "--workload", WORKLOAD, "-o", str(out), *args)
    assert p.returncode == 0, p.stderr
    trace = read_trace(out)
    assert trace.complete, trace.problems
    return trace


def differences(a: Trace, b: Trace) -> list[str]:
    """What differs between two traces, all fields but the run's paths."""
    out = []
    out_path = re.compile(r"(out|end)=[^,]*")
    for name in ("version", "min_reader_version", "features", "arch", "event_size",
                 "task_size", "plugin_api", "qemu", "kernel"):
        if getattr(a.header, name) != getattr(b.header, name):
            out.append(f"header {name}")
    if out_path.sub("", a.header.plugin_args) != out_path.sub("", b.header.plugin_args):
        out.append("plugin arguments")
    if a.footer != b.footer:
        out.append("footer")
    for what, x, y in (("events", a.events, b.events), ("tasks", a.tasks, b.tasks)):
        if len(x) != len(y):
            out.append(f"{what}: {len(x)} against {len(y)}")
            continue
        for f in x.dtype.names or ():
            if not np.array_equal(x[f], y[f]):
                first = int(np.flatnonzero(x[f] != y[f])[0])
                out.append(f"{what}[{first}].{f}")
    return out


@pytest.mark.parametrize("arch,kvm_mode", [("x86_64", "vhe"), ("arm64", "vhe"),
                                           ("arm64", "nvhe")])
def test_two_recordings_are_identical(arch: str, kvm_mode: str, qemu_plugin: Path,
                                      tmp_path: Path) -> None:
    if arch == "arm64":
        require(shutil.which("qemu-system-aarch64") is not None,
                "qemu-system-aarch64 not installed (make setup)")
    kernel_available("6.1", "arm64" if arch == "arm64" else "amd64")
    args = ["--arch", arch, *(["--kvm-mode", kvm_mode] if arch == "arm64" else [])]
    a = record(tmp_path / "a.ftr", *args)
    b = record(tmp_path / "b.ftr", *args)
    assert len(a.events) > 5000  # enough traffic that timing would show
    assert differences(a, b) == []
    meta = json.loads(sidecar(tmp_path / "a.ftr", "meta.json").read_text())
    assert meta["deterministic"] is True
    # The options are written down as QEMU was given them: icount among them.
    assert meta["deterministic_options"] == deterministic_args()
    assert "-icount" in meta["deterministic_options"]


def test_host_clock_recordings_differ(qemu_plugin: Path, tmp_path: Path) -> None:
    """--no-deterministic follows the host clock: the same comparison finds
    the two runs different (so that the test above could fail), while what
    timing cannot change still holds: the workload's own KVM_RUN count."""
    kernel_available("6.1")
    a = record(tmp_path / "a.ftr", "--no-deterministic")
    b = record(tmp_path / "b.ftr", "--no-deterministic")
    assert differences(a, b) != []
    for out in (tmp_path / "a.ftr", tmp_path / "b.ftr"):
        own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
        assert own["kvm_run"] == "30" and own["fpu_mismatches"] == "0"
    meta = json.loads(sidecar(tmp_path / "a.ftr", "meta.json").read_text())
    assert meta["deterministic"] is False and meta["deterministic_options"] == []


def test_two_cpus_say_why_they_are_not_deterministic(qemu_plugin: Path,
                                                      tmp_path: Path) -> None:
    # Asked for outright, --deterministic with --smp 2 is refused in one line
    # before anything boots.
    p = fputrace("record", "--deterministic", "--smp", "2", "-o", str(tmp_path / "x.ftr"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "--smp 1" in p.stderr
    assert not (tmp_path / "x.ftr").exists()
