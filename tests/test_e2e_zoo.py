"""The bug zoo (zoo/README.md) end to end.

Every entry's patches must apply to the Debian source the cache holds now,
and a patch that no longer applies is named by file and hunk. One entry
runs whole here (the full zoo is `make zoo`): c9aef3b85f42, KVM saving
another task's registers into the vCPU when KVM_RUN ends after the vCPU
thread slept. The truth it is judged against is the guest's own: after
each halt it reports its xmm0, which the buggy kernel replaced with the
SSE task's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import require
from e2e import kernel_available

from fputrace import zoo
from fputrace.errors import FputraceError
from fputrace.kernel import build


def _sources() -> None:
    for series in sorted({e.series for e in zoo.entries()}):
        kernel_available(series)


def test_every_entrys_patches_apply_to_the_cached_source() -> None:
    _sources()
    for e in zoo.entries():
        try:
            zoo.check_patches(e)
        except FputraceError as err:
            pytest.fail(f"zoo {e.name}: {err}")


def test_a_patch_that_no_longer_applies_is_named(tmp_path: Path) -> None:
    entry = zoo.load_entry(zoo.ZOO_DIR / "c9aef3b85f42")
    kernel_available(entry.series)
    # The source moved under the patch: a context line it expects changed.
    text = entry.bug[0].read_text()
    assert "\n \tfpregs_lock();\n" in text
    moved = tmp_path / "moved.patch"
    moved.write_text(text.replace("\n \tfpregs_lock();\n", "\n \tfpregs_lock_moved();\n"))
    with pytest.raises(FputraceError) as e:
        build.check_patches(entry.series, (moved,))
    assert f"--patch {moved}: hunk #1 of arch/x86/kernel/fpu/core.c does not apply" in str(e.value)


@pytest.fixture(scope="module")
def c9aef(qemu_plugin: Path) -> zoo.EntryResult:
    entry = zoo.load_entry(zoo.ZOO_DIR / "c9aef3b85f42")
    kernel_available(entry.series)
    require(shutil.which("gcc") is not None, "no gcc to build the kernels")
    return zoo.run_entry(entry)


def test_kvm_saving_another_tasks_registers_is_found(c9aef: zoo.EntryResult) -> None:
    bug = c9aef.bug
    assert bug is not None
    # The guest's own verdict: xmm0 came back wrong after some halts...
    assert not bug.workload_ok and "guest_mismatches=0" not in bug.workload_summary, \
        bug.workload_summary
    assert "halt_wakes=0" not in bug.workload_summary
    # ... and fputrace names the save in fpu_swap_kvm_fpstate().
    assert c9aef.entry.expect is not None
    hits = bug.matching(c9aef.entry.expect)
    assert hits, [(f["kind"], f["description"][:200]) for f in bug.findings[:5]]


def test_without_the_patch_the_same_kernel_is_clean(c9aef: zoo.EntryResult) -> None:
    clean = c9aef.clean
    assert clean is not None
    assert clean.workload_ok and "guest_mismatches=0" in clean.workload_summary, \
        clean.workload_summary
    assert clean.findings_total == 0, [f["description"][:200] for f in clean.findings[:5]]
