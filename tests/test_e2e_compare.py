"""The two comparisons of docs/case-studies.md, recorded and compared as a user would: the
same x86 kvm-pingpong on Debian 5.10 and 6.1 (the fpstate rework of 5.16
between them), and arm64 VHE against nVHE on 6.1. Each expectation is the
case study's explanation, from the kernels' code, with the workload's own count
of KVM_RUN calls as the yardstick."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from e2e import fputrace, kernel_available, workload_line

from fputrace.metrics import is_metric_name
from fputrace.trace.run import sidecar

N_RUNS = 200

pytestmark = [pytest.mark.qemu, pytest.mark.kernel]


def record(out: Path, *args: str) -> Path:
    p = fputrace("record", "--workload", f"kvm-pingpong:{N_RUNS}", "-o", str(out), *args)
    assert p.returncode == 0, p.stderr
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    assert own["kvm_run"] == str(N_RUNS) and own["fpu_mismatches"] == "0"
    return out


def compare(a: Path, b: Path, *gates: str) -> tuple[int, dict[str, Any]]:
    p = fputrace("compare", "--json", str(a), str(b), *(f"--fail-if={g}" for g in gates))
    assert p.returncode in (0, 1), p.stderr
    data: dict[str, Any] = json.loads(p.stdout)
    # check judges a --fail-if's metric before any run exists: every name a
    # real run gives must pass that judgement.
    assert [m for m in data["metrics"] if not is_metric_name(m)] == []
    return p.returncode, data


def functions(data: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {f["function"]: (f["a"], f["b"]) for f in data["functions"]}


def test_x86_5_10_against_6_1(qemu_plugin: Path, tmp_path: Path) -> None:
    for series in ("5.10", "6.1"):
        kernel_available(series)
    a = record(tmp_path / "a.ftr", "--kernel", "5.10")
    b = record(tmp_path / "b.ftr", "--kernel", "6.1")
    status, data = compare(a, b, "findings>0", "saves_per_vm_entry>+10%")
    assert status == 0, data["fail_if"]
    m = {k: (v["a"], v["b"]) for k, v in data["metrics"].items()}
    # Both: the thread's registers out and the guest's in before VMRUN, and
    # back after: two saves and two restores per entry (a few entries are
    # KVM's own re-entries, a few pairs preemptions).
    for name in ("saves_per_vm_entry", "restores_per_vm_entry"):
        assert all(1.8 <= v <= 2.2 for v in m[name]), (name, m[name])
    assert m["vm_entry.count"][0] >= N_RUNS and m["vm_entry.count"][1] >= N_RUNS
    # PKRU: 5.10 restores the thread's state with every component on each
    # return from the guest; 6.1 leaves PKRU out (XFEATURE_MASK_FPSTATE).
    pkru_a, pkru_b = m["bytes.pkru.restored"]
    assert pkru_a >= 8 * N_RUNS and pkru_b < pkru_a / 4
    # Where the work is done: KVM's inlined copy and copy_fpregs_to_fpstate
    # on 5.10, the FPU core's save/restore_fpregs_*fpstate on 6.1.
    f = functions(data)
    assert f["copy_fpregs_to_fpstate"][1] == 0 and f["copy_fpregs_to_fpstate"][0] >= 2 * N_RUNS
    assert f["save_fpregs_to_fpstate"][0] == 0 and f["save_fpregs_to_fpstate"][1] >= 2 * N_RUNS
    assert f["restore_fpregs_from_fpstate"][0] == 0
    assert f["__copy_kernel_to_fpregs [kvm]"] == (2 * N_RUNS, 0)


def test_arm64_vhe_against_nvhe(qemu_plugin: Path, tmp_path: Path) -> None:
    require(shutil.which("qemu-system-aarch64") is not None,
            "qemu-system-aarch64 not installed (make setup)")
    kernel_available("6.1", "arm64")
    a = record(tmp_path / "vhe.ftr", "--arch", "arm64")
    b = record(tmp_path / "nvhe.ftr", "--arch", "arm64", "--kvm-mode", "nvhe")
    status, data = compare(a, b, "guest_traps_per_kvm_run>+10%", "findings>0")
    assert status == 0, data["fail_if"]
    m = {k: (v["a"], v["b"]) for k, v in data["metrics"].items()}
    # The same lazy switch (kvm_arch_vcpu_load_fp() leaves the guest's
    # registers unloaded, kvm_hyp_handle_fpsimd() loads them at its first FP
    # use): one guest FP trap per KVM_RUN, and two entries, the second after
    # the trap. A trap more needs an entry more: the host must have taken the
    # registers back in between (an interrupt that the host handled), and
    # where timer interrupts land depends on the kernel build, not the mode.
    assert m["kvm_runs"] == (N_RUNS, N_RUNS)
    traps = tuple(round(per * N_RUNS) for per in m["guest_traps_per_kvm_run"])
    for n_traps, n_entries in zip(traps, m["vm_entry.count"], strict=True):
        assert N_RUNS <= n_traps <= N_RUNS + (n_entries - 2 * N_RUNS), (traps, n_entries)
    assert all(2 * N_RUNS <= n <= 2 * N_RUNS + 10 for n in m["vm_entry.count"])
    # Each trap loads the guest's state: the kernel's __fpsimd_restore_state
    # (VHE) or the hypervisor's copy of it (nVHE).
    f = functions(data)
    assert f["__fpsimd_restore_state"] == (traps[0], 0)
    assert f["__fpsimd_restore_state [nvhe]"] == (0, traps[1])
    # The host kernel's CPACR_EL1 writes reach CPTR_EL2 under VHE's E2H.
    cpacr, cptr = m["events.cpacr_write"], m["events.cptr_write"]
    assert cptr[0] > cpacr[0] and cpacr[1] > cptr[1]
