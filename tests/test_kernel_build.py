"""fputrace kernel build and the bug zoo, without building a kernel: patch
checking against a small tree made here (the expected file and hunk
written by hand), configuration merging, entry loading, and the matching
of a finding against an entry's culprit. The zoo's patches against the
real Debian source, and an entry recorded end to end, are in
test_e2e_zoo.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fputrace import zoo
from fputrace.errors import FputraceError
from fputrace.kernel import build

SOURCE = """\
int first(void)
{
	return 1;
}

int second(void)
{
	return 2;
}
"""


def tree_with_source(tmp: Path) -> Path:
    tree = tmp / "tree"
    (tree / "kernel").mkdir(parents=True)
    (tree / "kernel" / "f.c").write_text(SOURCE)
    return tree


def diff(tmp: Path, name: str, before: str, after: str, rel: str = "kernel/f.c") -> Path:
    """A unified diff made by diff -u, as a user's patch is."""
    a, b = tmp / "a" / rel, tmp / "b" / rel
    for p, text in ((a, before), (b, after)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    out = subprocess.run(["diff", "-u", f"a/{rel}", f"b/{rel}"], cwd=tmp, capture_output=True,
                         text=True).stdout
    patch = tmp / name
    patch.write_text(out)
    return patch


def test_a_patch_that_applies(tmp_path: Path) -> None:
    tree = tree_with_source(tmp_path)
    p = diff(tmp_path, "ok.patch", SOURCE, SOURCE.replace("return 2;", "return 3;"))
    assert build.patch_files(p) == ["kernel/f.c"]
    build.dry_run(tree, (p,), "1.0")
    # A dry run: the tree is as it was.
    assert (tree / "kernel" / "f.c").read_text() == SOURCE


def test_a_hunk_that_does_not_apply_is_named(tmp_path: Path) -> None:
    # Two changes 20 lines apart: two hunks. The patch was written against a
    # source whose second() returned 20; the tree's returns 2, so hunk 1
    # applies and hunk 2 does not, at the line where second() is.
    filler = "".join(f"/* line {i} */\n" for i in range(20))
    ours = SOURCE.replace("int second", filler + "int second")
    theirs = ours.replace("return 2;", "return 20;")
    tree = tree_with_source(tmp_path)
    (tree / "kernel" / "f.c").write_text(ours)
    p = diff(tmp_path, "two.patch", theirs,
             theirs.replace("return 1;", "return 10;").replace("return 20;", "return 30;"))
    with pytest.raises(FputraceError) as e:
        build.dry_run(tree, (p,), "1.0")
    assert str(e.value).startswith(f"--patch {p}: hunk #2 of kernel/f.c does not apply to "
                                   "linux 1.0 (at line ")


def test_a_patch_already_applied_says_so(tmp_path: Path) -> None:
    tree = tree_with_source(tmp_path)
    changed = SOURCE.replace("return 2;", "return 3;")
    p = diff(tmp_path, "fix.patch", SOURCE, changed)
    (tree / "kernel" / "f.c").write_text(changed)
    with pytest.raises(FputraceError, match="already has this change"):
        build.dry_run(tree, (p,), "1.0")


def test_a_patch_for_a_missing_file(tmp_path: Path) -> None:
    tree = tree_with_source(tmp_path)
    p = diff(tmp_path, "other.patch", SOURCE, SOURCE + "\n", rel="kernel/g.c")
    with pytest.raises(FputraceError, match=r"not in linux 1\.0"):
        build.dry_run(tree, (p,), "1.0")


@pytest.mark.parametrize("text, words", [
    ("", "no file changes"),
    ("just words\n", "no file changes"),
])
def test_not_a_patch(tmp_path: Path, text: str, words: str) -> None:
    p = tmp_path / "bad.patch"
    p.write_text(text)
    with pytest.raises(FputraceError, match=words):
        build.patch_files(p)


def test_kernel_build_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.patch"
    bad.write_text("not a diff\n")
    cases = [
        (["kernel", "build", "9.9"], "unknown kernel series '9.9'"),
        (["kernel", "build", "6.1", "--patch", str(tmp_path / "none.patch")], "none.patch"),
        (["kernel", "build", "6.1", "--patch", str(bad)], "no file changes"),
        (["kernel", "build", "6.1", "--config", str(bad)], "no CONFIG_ line"),
    ]
    for args, words in cases:
        p = subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                           text=True)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and words in lines[0], p.stderr


def test_fragments_override_fputraces_options_in_order() -> None:
    own = [("CONFIG_KVM", "m"), ("CONFIG_DEBUG_INFO_BTF", "y")]
    merged = dict(build.merge_options(own, ["CONFIG_KVM=y\n",
                                            "# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_KVM=m"]))
    assert merged == {"CONFIG_KVM": "m", "CONFIG_DEBUG_INFO_BTF": "n"}


def test_the_small_configurations_ask_for_kvm_and_btf() -> None:
    for arch in build.KERNEL_ARCHES:
        options = dict(build._config_lines(build.SMALL[arch]))
        assert options["CONFIG_KVM"] in ("y", "m") and options["CONFIG_DEBUG_INFO_BTF"] == "y"
        # Debian builds with -O2; -Os inlines other functions, and probes are functions.
        assert options["CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE"] == "y"


# --- the zoo ----------------------------------------------------------------

def write_entry(root: Path, name: str, body: str, files: tuple[str, ...] = ()) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "entry.toml").write_text(body)
    for f in files:
        (d / f).write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    return d


ENTRY = """\
fix = "0123456789ab"
title = "x86/fpu: a fix"
had_bug = "5.0"
series = "6.1"
arch = "amd64"
bug = ["bug.patch"]
workload = "signal:5"
"""


def test_entries_load_and_say_what_is_wrong(tmp_path: Path) -> None:
    d = write_entry(tmp_path, "good", ENTRY + '[expect]\nkind = "lost_state"\n'
                    'culprit = "f"\nboundary = "b"\n', ("bug.patch",))
    e = zoo.load_entry(d)
    assert e.bug == ((d / "bug.patch").resolve(),) and e.clean == ()
    assert e.expect == zoo.Expectation("lost_state", "f", "b")
    with pytest.raises(FputraceError, match=r"give \[expect\]"):
        zoo.load_entry(write_entry(tmp_path, "no-expect", ENTRY, ("bug.patch",)))
    with pytest.raises(FputraceError, match=r"bug names bug\.patch, which is not there"):
        zoo.load_entry(write_entry(tmp_path, "no-patch", ENTRY + '[not_run]\nreason = "r"\n'))
    with pytest.raises(FputraceError, match="not valid TOML"):
        zoo.load_entry(write_entry(tmp_path, "bad", "fix = \n"))


def test_every_entry_of_the_project_loads() -> None:
    entries = zoo.entries()
    assert entries, "zoo/ has no entries"
    for e in entries:
        assert len(e.fix) >= 12 and e.title and e.had_bug
        assert e.not_run or (e.expect is not None and e.workload)
        assert e.not_run or e.bug or e.clean, f"{e.name}: neither kernel has a patch"


def finding(kind: str, site: str, **events: str) -> dict[str, object]:
    return {"kind": kind, "event": {"site": site},
            "events": {role: {"site": s} for role, s in events.items()}}


def test_a_finding_names_its_culprit_by_function() -> None:
    f = finding("foreign_save", "xsave_to_fpstate+0x10/0x40",
                cause="fpu_swap_kvm_fpstate+0x3c/0x160")
    assert zoo.names(f, "fpu_swap_kvm_fpstate")
    assert zoo.names(f, "xsave_to_fpstate")
    # A function whose name only starts like the culprit's is another one.
    assert not zoo.names(f, "fpu_swap_kvm")
    run = zoo.RunVerdict("k", True, "", [f], 1)
    expect = zoo.Expectation("foreign_save", "fpu_swap_kvm_fpstate", "")
    assert run.matching(expect) == [f]
    assert run.matching(zoo.Expectation("lost_state", "fpu_swap_kvm_fpstate", "")) == []
