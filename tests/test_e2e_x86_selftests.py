"""The kernel's own x86 FP selftests and the KVM selftests that move FP
state, under `fputrace record --run`, built by `fputrace kernel selftests
SERIES` from the Debian source of each kernel.

The selftests are the independent truth: each checks its own registers
(sigreturn the registers across signal frames, corrupt_xstate_header a
corrupted XSTATE header in the frame, test_FCMOV/FCOMI/FISTTP the x87
results, state_test a guest's state across KVM_GET/SET, xcr0_cpuid_test
XCR0 against CPUID in a guest) and says so in its exit status: 0 passed, 4
skipped (KSFT_SKIP, with a reason line). The report must find nothing.

Some fail under QEMU's TCG for reasons that are not FPU state, and the
report agrees by finding nothing (docs/selftests.md):
TCG_FAILURES names each with the line it fails with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import require
from e2e import fputrace, kernel_available

from fputrace.trace.run import sidecar

# (series, program) -> the line it fails with under TCG, and why.
TCG_FAILURES = {
    # 6.1's amx reads CPUID leaf 0xD sub-leaf 18 before checking that the CPU
    # has AMX (later versions skip first); TCG has no AMX.
    ("6.1", "x86/amx_64"): "xstate cpuid: invalid tile data size/offset: 0/0",
    # The 32-bit sigreturn test compares FS (gregs[1]) after sigreturn with a
    # null selector: 3 comes back. A segment register, not FP state; 6.12's
    # passes.
    ("6.1", "x86/sigreturn_32"): "Reg 1 mismatch: requested 0x0; got 0x3",
    # It asserts that nested SVM advertises NRIPS, which QEMU's TCG SVM does
    # not give the L1 CPU.
    ("6.1", "kvm/svm_nested_soft_inject_test"): "kvm_cpu_has(X86_FEATURE_NRIPS)",
    ("6.12", "kvm/svm_nested_soft_inject_test"): "kvm_cpu_has(X86_FEATURE_NRIPS)",
}
EXIT = re.compile(r"^selftest (\S+): exit (\d+)$", re.M)


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_x86_and_kvm_selftests_pass_and_nothing_is_found(qemu_plugin: Path, tmp_path: Path,
                                                         series: str) -> None:
    kernel_available(series)
    p = fputrace("kernel", "selftests", series, "--arch", "amd64", timeout=1800)
    require(p.returncode == 0, f"x86 selftests of {series} not built: {p.stderr.strip()}")
    built = {m.group(2): Path(m.group(1)) for m in
             re.finditer(r"^  (/\S+/(x86|kvm)): ", p.stdout, re.M)}
    assert set(built) == {"x86", "kvm"}, p.stdout
    programs = json.loads((built["x86"].parent / "build.json").read_text())["programs"]
    # What every supported version has.
    assert {"sigreturn_64", "test_FCMOV_32", "test_FCOMI_32", "test_FISTTP_32"} <= \
        set(programs["x86"])
    assert {"x86_64/state_test", "x86_64/cr4_cpuid_sync_test"} <= set(programs["kvm"])
    out = tmp_path / "selftests.ftr"
    loop = 'for t in *; do ./$t; echo "selftest {d}/$t: exit $?"; done'
    p = fputrace("record", "--kernel", series, "--add", str(built["x86"]),
                 "--add", str(built["kvm"]),
                 "--run", "cd x86 && " + loop.format(d="x86"),
                 "--run", "cd kvm/x86_64 && " + loop.format(d="kvm"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    console = sidecar(out, "console.log").read_text(errors="replace")
    ran = {name: int(code) for name, code in EXIT.findall(console)}
    expected = {f"x86/{t}" for t in programs["x86"]} | \
        {f"kvm/{t.removeprefix('x86_64/')}" for t in programs["kvm"]}
    assert set(ran) == expected, (sorted(ran), sorted(expected))
    for name, code in ran.items():
        known = TCG_FAILURES.get((series, name))
        if known is not None:
            assert code != 0 and known in console, (name, code)
        elif code == 4:
            # Skipped by the selftest itself, which says why (no AMX, no XFD).
            assert re.search(r"SKIP|no AMX support", console), name
        else:
            assert code == 0, (name, code)
    r = fputrace("report", "--json", str(out))
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["findings"] == [] and rep["unconfirmed"] == [], \
        r.stdout[:3000]
    # The KVM selftests ran guests: their VM entries were checked.
    assert rep["boundary_checks"]["by_kind"]["vm_entry"]["checked"] > 0
