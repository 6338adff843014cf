"""A developer's own kernel: built from Debian's 6.1 source with fputrace
kernel build's small configuration (tests/testkernel.py), once with KVM and
KVM_AMD built in and BTF, once with KVM as modules and DWARF only. Each must
record as Debian's kernels do, and with the kernel doing nothing wrong, the
report must find nothing: the workloads check their own registers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require
from e2e import fputrace, kernel_available, workload_line
from testkernel import BuiltKernel, build_test_kernel

from fputrace.errors import FputraceError
from fputrace.kernel.layout import resolve_kernel
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.run import sidecar

WORKLOADS = "kvm-pingpong:50,kvm-hog:30,fpu-switch:100,signal:30,fork-exec:5,compat32:5"
SERIES = "6.1"


def _kernel(variant: str) -> BuiltKernel:
    kernel_available(SERIES)
    try:
        return build_test_kernel(SERIES, variant)
    except (FputraceError, OSError) as e:
        require(False, f"test kernel {variant} not built: {e}")
        raise


@pytest.fixture(scope="module")
def builtin() -> BuiltKernel:
    return _kernel("kvm-builtin-btf")


@pytest.fixture(scope="module")
def modular() -> BuiltKernel:
    return _kernel("kvm-modules-dwarf")


def _clean_run(out: Path) -> dict[str, Any]:
    """The workloads passed their own checks and the report found nothing."""
    console = sidecar(out, "console.log")
    pp, hog = workload_line(console, "kvm-pingpong"), workload_line(console, "kvm-hog")
    sw, sig = workload_line(console, "fpu-switch"), workload_line(console, "signal")
    fe, c32 = workload_line(console, "fork-exec"), workload_line(console, "compat32")
    assert pp["fpu_mismatches"] == hog["fpu_mismatches"] == hog["hog_mismatches"] == "0"
    assert sw["mismatches"] == sig["mismatches"] == c32["mismatches"] == "0"
    assert fe["child_mismatches"] == fe["syscall_mismatches"] == "0"
    r = fputrace("report", "--json", str(out))
    rep: dict[str, Any] = json.loads(r.stdout)
    assert r.returncode == 0 and rep["findings"] == [], r.stdout[:4000]
    assert rep["boundary_checks"]["by_kind"]["vm_entry"]["checked"] > 0
    return rep


def test_kvm_built_in_records_with_no_finding(builtin: BuiltKernel, qemu_plugin: Path,
                                              tmp_path: Path) -> None:
    # No --modules: kvm_amd is found built in from the kernel itself
    # (/sys/module/kvm_amd, its parameters, at the collection boot).
    out = tmp_path / "builtin.ftr"
    p = fputrace("record", "--kernel", str(builtin.bzimage), "--workload", WORKLOADS,
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    rep = _clean_run(out)
    assert json.loads(sidecar(out, "meta.json").read_text())["modules"] == []
    # VMRUN ran from the image's own text, not from a module.
    sites = {g["label"] for g in rep["per_function"] if g["by_kind"].get("vm_entry")}
    assert sites == {"__svm_vcpu_run"}, sites
    trace = read_trace(out)
    assert np.count_nonzero(trace.events["kind"] == fmt.Kind.VM_ENTRY) >= 50


def test_kvm_built_in_with_its_modules_directory(builtin: BuiltKernel, qemu_plugin: Path,
                                                 tmp_path: Path) -> None:
    # --modules: modules.builtin lists kvm-amd.ko, so nothing is loaded.
    mods = builtin.modules / "lib" / "modules" / builtin.release
    assert "kvm-amd.ko" in (mods / "modules.builtin").read_text()
    out = tmp_path / "builtin-m.ftr"
    p = fputrace("record", "--kernel", str(builtin.bzimage), "--modules", str(mods),
                 "--workload", "kvm-pingpong:20", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads(sidecar(out, "meta.json").read_text())["modules"] == []


def test_kvm_modules_and_dwarf_only(modular: BuiltKernel, qemu_plugin: Path,
                                    tmp_path: Path) -> None:
    mods = modular.modules / "lib" / "modules" / modular.release
    # Without BTF the task layout needs the vmlinux: one clear line says so.
    # A layout derived once with --vmlinux is kept for that same image (by
    # its digest), so a cache that outlived an earlier run must forget it.
    state = resolve_kernel(str(modular.bzimage), modules=mods).state_dir
    (state / "layout.json").unlink(missing_ok=True)
    p = fputrace("record", "--kernel", str(modular.bzimage), "--modules", str(mods),
                 "--workload", "fpu-switch:5", "-o", str(tmp_path / "nodwarf.ftr"))
    assert p.returncode != 0
    assert "no BTF" in p.stderr and "--vmlinux" in p.stderr and "Traceback" not in p.stderr
    out = tmp_path / "modular.ftr"
    p = fputrace("record", "--kernel", str(modular.bzimage), "--modules", str(mods),
                 "--vmlinux", str(modular.vmlinux), "--workload", WORKLOADS, "-o", str(out))
    assert p.returncode == 0, p.stderr
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["modules"][-1] == "kvm_amd" and "kvm" in meta["modules"]
    _clean_run(out)
    # The offsets from DWARF name the tasks right: the workloads' own comms.
    trace = read_trace(out)
    comms = {bytes(t["comm"]).split(b"\0")[0].decode() for t in trace.tasks}
    assert {"kvm-pingpong", "fpu-switch", "signal"} <= comms, comms
    # KVM's VMRUN is module code again.
    rep = json.loads(fputrace("report", "--json", str(out)).stdout)
    sites = {g["label"] for g in rep["per_function"] if g["by_kind"].get("vm_entry")}
    assert sites == {"__svm_vcpu_run [kvm_amd]"}, sites
    assert np.count_nonzero(trace.events["kind"] == fmt.Kind.VM_ENTRY) >= 50
