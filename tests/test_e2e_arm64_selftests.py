"""The kernel's own arm64 FP selftests (tools/testing/selftests/arm64/fp)
under `fputrace record --run`, built by `fputrace kernel selftests` from the
Debian source of each kernel.

The selftests check their own registers: fpsimd-test, sve-test, ssve-test
and za-test fill them with a pattern derived from their pid and iteration
and verify it after every system call, signal and preemption; fp-stress
runs one of each per CPU and vector length and reports TAP. They are the
independent truth here: they must pass, and where they pass the report
must not claim lost state, with one exception on 6.12 that the vl-change
workload shows to be real (test_e2e_arm64.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import require
from e2e import fputrace, kernel_available
from elftools.elf.elffile import ELFFile

from fputrace.trace.run import sidecar

SECONDS = 5


@pytest.fixture(scope="module", params=["5.10", "6.1", "6.12"])
def selftests(request: pytest.FixtureRequest, qemu_plugin: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(series, the built selftest directory, the trace of their run)."""
    series = request.param
    kernel_available(series, "arm64")
    p = fputrace("kernel", "selftests", series, "--arch", "arm64", timeout=1800)
    require(p.returncode == 0, f"arm64 FP selftests of {series} not built: {p.stderr.strip()}")
    built = Path(re.search(r"^  (/\S+/fp): ", p.stdout, re.M).group(1))  # type: ignore[union-attr]
    programs = set(json.loads((built.parent / "build.json").read_text())["programs"]["fp"])
    assert {"fpsimd-test", "sve-test"} <= programs
    if "fp-stress" in programs:
        # fp-stress (v6.1) starts fpsimd-test, sve-test per vector length,
        # ssve-test/za-test per SME vector length and (6.12) kernel-test, the
        # AF_ALG hasher that keeps kernel-mode NEON busy, on every CPU.
        command = f"cd fp && ./fp-stress -t {SECONDS}"
    else:
        # 5.10: the two stress programs side by side on one CPU, stopped by
        # SIGTERM, which each answers with its verdict. Each writes its
        # verdict in pieces, so the two share no console: their outputs are
        # printed one after the other once both have stopped.
        command = (f"cd fp && (timeout -s TERM {SECONDS} ./fpsimd-test > fpsimd.out 2>&1 & "
                   f"timeout -s TERM {SECONDS} ./sve-test > sve.out 2>&1 & wait); "
                   "cat fpsimd.out sve.out")
    out = tmp_path_factory.mktemp(f"selftests-{series}") / "run.ftr"
    p = fputrace("record", "--arch", "arm64", "--kernel", series, "--smp", "2",
                 "--module", "algif_hash", "--module", "sha2_ce", "--add", str(built),
                 "--run", command, "-o", str(out))
    assert p.returncode == 0, p.stderr
    return series, built, out


def test_the_selftests_pass(selftests: tuple[str, Path, Path]) -> None:
    series, _, out = selftests
    console = sidecar(out, "console.log").read_text(errors="replace")
    verdicts = re.findall(r"Terminated by signal 15, (no error|.*)", console)
    if series == "5.10":
        assert verdicts == ["no error", "no error"], verdicts
        return
    assert not re.search(r"^not ok ", console, re.M)
    totals = re.search(r"^# Totals: pass:(\d+) fail:(\d+) xfail:\d+ xpass:\d+ skip:(\d+) "
                       r"error:(\d+)", console, re.M)
    assert totals, "fp-stress printed no totals"
    passed, failed, skipped, errors = map(int, totals.groups())
    assert passed > 0 and failed == skipped == errors == 0
    # Every register-checking child stopped with its own verdict: no error.
    oks = len(re.findall(r"^ok \d+ ", console, re.M))
    assert oks == passed
    assert verdicts and all(v == "no error" or v.startswith("iterations=") for v in verdicts)
    if series == "6.12":
        # kernel-test ran with sha256 from sha2-ce, that is under
        # kernel_neon_begin().
        assert "AF_ALG using sha256" in console


def _prctl_range(binary: Path) -> tuple[int, int]:
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        sym = symtab.get_symbol_by_name("__prctl")[0]  # type: ignore[union-attr]
        return int(sym["st_value"]), int(sym["st_value"]) + int(sym["st_size"])


def test_the_report_finds_nothing_the_selftests_disprove(
        selftests: tuple[str, Path, Path]) -> None:
    series, built, out = selftests
    p = fputrace("report", "--json", str(out))
    data = json.loads(p.stdout)
    # report's exit status says whether it found lost state (3) or not (0).
    assert p.returncode == (3 if data["findings_total"] else 0), p.stderr
    assert data["unconfirmed_total"] == 0
    user = data["boundary_checks"]["by_kind"]["user_return"]
    assert user["checked"] > 1000
    if series != "6.12":
        assert data["findings_total"] == 0, data["findings"][:3]
        return
    # 6.12: Debian's 6.12 discards SVE state lazily at syscall entry
    # (fpsimd_syscall_enter() leaves TIF_SVE set and saves FPSIMD only), and
    # vec_set_vector_length() then converts the stale SVE buffer over that
    # save (sve_to_fpsimd() on TIF_SVE). fp-stress's parent, whose glibc uses
    # SVE, calls prctl(PR_SVE_SET_VL) for each vector length it probes: its
    # V registers come back as they were at the last SVE save. The children,
    # which check their registers, never call it while they run. So the only
    # findings allowed are in fp-stress at its prctl() system call.
    low, high = _prctl_range(built / "fp-stress")
    for f in data["findings"]:
        assert f["kind"] == "corrupted_state", f
        assert f["task"].endswith(" fp-stress"), f
        assert low <= int(f["events"]["entry"]["site"], 16) < high, f


def test_kvm_get_reg_list_passes_and_nothing_is_found(
        selftests: tuple[str, Path, Path], tmp_path: Path) -> None:
    # KVM's get-reg-list lists a vCPU's registers with KVM_GET_REG_LIST in
    # each configuration (vregs: the FP/SIMD V registers; sve: the Z, P and
    # FFR registers), checking them against what it expects; each prints
    # PASS or FAIL.
    series, built, _ = selftests
    kvm = built.parent / "kvm"
    programs = json.loads((built.parent / "build.json").read_text())["programs"].get("kvm", [])
    # aarch64/get-reg-list; from 6.12 built at the directory's top.
    found = [p for p in programs if p.endswith("get-reg-list")]
    assert len(found) == 1, programs
    where = str(Path("kvm", found[0]).parent)
    out = tmp_path / "regs.ftr"
    p = fputrace("record", "--arch", "arm64", "--kernel", series, "--add", str(kvm),
                 "--run", f'cd {where} && ./get-reg-list; echo "get-reg-list: exit $?"',
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    console = sidecar(out, "console.log").read_text(errors="replace")
    assert "get-reg-list: exit 0" in console and not re.search(r": FAIL$", console, re.M)
    if series == "5.10":
        # One list, the blessed one: it says how many it checked (a newer
        # firmware register of 5.10.y's KVM is only reported as new).
        assert re.search(r"^Number blessed registers: +\d+", console, re.M), console[-2000:]
    else:
        verdicts = re.findall(r"^(\S+): (PASS|FAIL)$", console, re.M)
        assert ("vregs", "PASS") in verdicts and ("sve", "PASS") in verdicts, verdicts
    r = fputrace("report", "--json", str(out))
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == [], r.stdout[:2000]
