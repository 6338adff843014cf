"""fputrace check as `git bisect run` uses it: 0 for a clean run, 1 for a
finding or a --fail-if gate that holds, 125 (skip) for a run that cannot be
judged. The seeded bugs of fpu-seed are the independent truth for "bad"
(the workload counts its own corrupted registers); kvm-pingpong on the
stock kernel for "good"."""

from __future__ import annotations

from pathlib import Path

from e2e import fputrace, kernel_available


def test_clean_run_exits_0(qemu_plugin: Path, tmp_path: Path) -> None:
    kernel_available("6.1")
    p = fputrace("check", "--kernel", "6.1", "--workload", "kvm-pingpong:20",
                 "-o", str(tmp_path / "good.ftr"))
    assert p.returncode == 0, p.stderr
    assert "check: no finding" in p.stderr


def test_findings_exit_1_and_gates_decide_when_given(qemu_plugin: Path, tmp_path: Path) -> None:
    kernel_available("6.1")
    bad = tmp_path / "bad.ftr"
    p = fputrace("check", "--kernel", "6.1", "--workload", "fpu-seed:2", "-o", str(bad))
    assert p.returncode == 1, p.stderr
    # 2 misuses, 6 corrupted returns: 2 each of (a), (b), (d) in fputrace_seed.c
    assert "check: 8 finding(s)" in p.stderr
    # A gate replaces "any finding": 2 kernel_fpu_misuse findings do not
    # exceed 5, and do exceed 1.
    quiet = fputrace("check", "--kernel", "6.1", "--workload", "fpu-seed:2",
                     "--fail-if", "findings.kernel_fpu_misuse>5", "-o", str(tmp_path / "g.ftr"))
    assert quiet.returncode == 0, quiet.stderr
    loud = fputrace("check", "--kernel", "6.1", "--workload", "fpu-seed:2", "--baseline",
                    str(bad), "--fail-if", "findings.kernel_fpu_misuse>1",
                    "--fail-if", "findings>+0", "-o", str(tmp_path / "h.ftr"))
    assert loud.returncode == 1, loud.stderr
    assert "findings.kernel_fpu_misuse>1 holds" in loud.stderr


def test_a_kernel_that_does_not_boot_is_skipped(qemu_plugin: Path, tmp_path: Path) -> None:
    junk = tmp_path / "bzImage"
    junk.write_bytes(bytes(range(256)) * 4096)
    p = fputrace("check", "--kernel", str(junk), "--workload", "kvm-pingpong:5",
                 "--timeout", "60", "-o", str(tmp_path / "junk.ftr"))
    assert p.returncode == 125, p.stderr
    assert "not judged" in p.stderr and "Traceback" not in p.stderr
