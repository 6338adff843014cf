"""The bug zoo (zoo/ in the project): real upstream FPU bugs, brought back
into Debian's kernel source, recorded, and compared with the same kernel
without them.

An entry is a directory zoo/NAME with an entry.toml:

    fix = "c9aef3b85f42"            # the upstream fix's commit id
    title = "..."                   # its subject line
    had_bug = "5.2 to 5.5"          # the releases that shipped the bug
    series = "6.1"                  # Debian source the patches are against
    arch = "amd64"
    config = ["../configs/x.config"]  # fragments, relative to the entry
    bug = ["bug.patch"]             # patches that make the buggy kernel
    clean = []                      # patches that make the clean one
    workload = "kvm-halt:20"        # what triggers it (record --workload)
    record = []                     # more record options (--run, --smp ...)
    [expect]
    kind = "foreign_save"           # the finding's kind
    culprit = "fpu_swap_kvm_fpstate"  # the function the finding names
    boundary = "..."                # where it shows, in words
    [not_run]                       # instead of the above: why it is not run
    reason = "..."

Usually the bug patch brings the bug back and the clean kernel is Debian's
source as it is; for a bug Debian's kernel still has, `bug = []` and
`clean` holds the fix. Running an entry builds both kernels (fputrace.kernel
.build), records each with the trigger, and reads three verdicts: the
workload's own (its exit status and summary line), fputrace's on the buggy
kernel (a finding of the expected kind naming the culprit), and fputrace's
on the clean one (no finding at all).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fputrace.errors import FputraceError
from fputrace.kernel import build
from fputrace.paths import PROJECT_ROOT, cache_dir
from fputrace.trace.run import sidecar

ZOO_DIR = PROJECT_ROOT / "zoo"


@dataclass(frozen=True)
class Expectation:
    kind: str
    culprit: str
    boundary: str


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    fix: str
    title: str
    had_bug: str
    series: str
    arch: str
    config: tuple[Path, ...]
    bug: tuple[Path, ...]
    clean: tuple[Path, ...]
    workload: str
    record: tuple[str, ...]
    expect: Expectation | None
    not_run: str  # why the entry is not run, or ""

    @property
    def record_arch(self) -> str:
        return "x86_64" if self.arch == "amd64" else self.arch

    def request(self, which: str) -> build.BuildRequest:
        patches = self.bug if which == "bug" else self.clean
        return build.BuildRequest(self.series, self.arch, patches, self.config)


def _field(d: dict[str, Any], key: str, where: Path, kind: type, default: Any = None) -> Any:
    value = d.get(key, default)
    if value is None:
        raise FputraceError(f"{where}: '{key}' is missing")
    if not isinstance(value, kind):
        raise FputraceError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def load_entry(path: Path) -> Entry:
    toml = path / "entry.toml"
    try:
        d = tomllib.loads(toml.read_text())
    except OSError as e:
        raise FputraceError(f"{toml}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise FputraceError(f"{toml}: not valid TOML ({e})") from None

    def files(key: str) -> tuple[Path, ...]:
        out = []
        for name in _field(d, key, toml, list, []):
            p = (path / name).resolve()
            if not p.is_file():
                raise FputraceError(f"{toml}: {key} names {name}, which is not there")
            out.append(p)
        return tuple(out)

    not_run = d.get("not_run", {}).get("reason", "")
    expect = None
    if "expect" in d:
        x = d["expect"]
        expect = Expectation(_field(x, "kind", toml, str), _field(x, "culprit", toml, str),
                             _field(x, "boundary", toml, str))
    elif not not_run:
        raise FputraceError(f"{toml}: give [expect] (kind, culprit, boundary), or "
                            "[not_run] reason")
    arch = _field(d, "arch", toml, str)
    if arch not in build.KERNEL_ARCHES:
        raise FputraceError(f"{toml}: arch {arch!r}: one of {', '.join(build.KERNEL_ARCHES)}")
    return Entry(
        name=path.name, path=path, fix=_field(d, "fix", toml, str),
        title=_field(d, "title", toml, str), had_bug=_field(d, "had_bug", toml, str),
        series=_field(d, "series", toml, str), arch=arch, config=files("config"),
        bug=files("bug"), clean=files("clean"),
        workload=_field(d, "workload", toml, str, "") if not not_run else
        d.get("workload", ""),
        record=tuple(_field(d, "record", toml, list, [])), expect=expect, not_run=not_run)


def entries(root: Path = ZOO_DIR) -> list[Entry]:
    return [load_entry(p) for p in sorted(root.iterdir())
            if (p / "entry.toml").is_file()]


@dataclass
class RunVerdict:
    """One recording of an entry."""

    kernel: str
    workload_ok: bool  # the workload's own check passed
    workload_summary: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    findings_total: int = 0
    status: int = 0  # report's exit status
    trace: Path | None = None

    def matching(self, expect: Expectation) -> list[dict[str, Any]]:
        """The findings of the expected kind that name the culprit."""
        return [f for f in self.findings
                if f["kind"] == expect.kind and names(f, expect.culprit)]


def _function(site: str) -> str:
    """'fpu_swap_kvm_fpstate+0x3c/0x160' -> 'fpu_swap_kvm_fpstate'."""
    return site.split("+", 1)[0].split(" ", 1)[0]


def names(finding: dict[str, Any], culprit: str) -> bool:
    """Whether a finding names the function: as the site of its own event
    or of an event it blames (its roles), as the function such an event was
    called from, or as the FPU path it ran inside ("within")."""
    events = [finding["event"], *finding.get("events", {}).values()]
    sites = [e.get(key, "") for e in events for key in ("site", "caller", "within")]
    return any(_function(s) == culprit for s in sites if s)


@dataclass
class EntryResult:
    entry: Entry
    bug: RunVerdict | None = None
    clean: RunVerdict | None = None

    @property
    def found(self) -> bool:
        return bool(self.entry.expect and self.bug and self.bug.matching(self.entry.expect))

    @property
    def clean_ok(self) -> bool:
        return bool(self.clean and self.clean.findings_total == 0 and self.clean.workload_ok)

    @property
    def passed(self) -> bool:
        return self.found and self.clean_ok


def _fputrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT)


def record(entry: Entry, which: str, kernel: build.KernelBuild, out_dir: Path) -> RunVerdict:
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / f"{which}.ftr"
    # The zoo's own directory: an earlier run's trace and sidecars go first
    # (record refuses to overwrite, and a stale one must not be judged).
    for old in out_dir.glob(f"{which}.*"):
        old.unlink()
    args = ["record", "--arch", entry.record_arch, "--kernel", kernel.path.name, "-o",
            str(trace)]
    if entry.workload:
        args += ["--workload", entry.workload]
    r = _fputrace(*args, *entry.record)
    # A workload that fails its own check (the bug seen) fails the recording
    # too; whether the trace is whole is report's to say (exit 4 if not).
    if r.returncode != 0 and not trace.exists():
        why = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise FputraceError(f"zoo {entry.name}: recording the {which} kernel failed: {why}")
    rep = _fputrace("report", "--json", "--max-findings", "0", str(trace))
    if rep.returncode not in (0, 3):
        why = (rep.stderr.strip().splitlines() or ["no message"])[-1]
        raise FputraceError(f"zoo {entry.name}: the {which} kernel's trace is not whole "
                            f"({why}): {trace}")
    report = json.loads(rep.stdout)
    meta_path = sidecar(trace, "meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    workloads = meta.get("workloads", []) + [
        {"label": f"--run {r.get('command')}", **r} for r in meta.get("runs", [])]
    ok = bool(workloads) and all(w.get("exit_status") == 0 for w in workloads)
    summary = "; ".join(" ".join(f"{k}={v}" for k, v in (w.get("summary") or {}).items())
                        or f"exit {w.get('exit_status')}" for w in workloads)
    return RunVerdict(kernel.name, ok, summary, report.get("findings", []),
                      int(report.get("findings_total", 0)), rep.returncode, trace)


def run_entry(entry: Entry, which: tuple[str, ...] = ("bug", "clean")) -> EntryResult:
    result = EntryResult(entry)
    if entry.not_run:
        return result
    out_dir = cache_dir() / "zoo" / entry.name
    for w in which:
        # Unnamed: entries share a kernel when their patches and configuration agree.
        kernel, _ = build.build_kernel(entry.request(w))
        setattr(result, w, record(entry, w, kernel, out_dir))
    return result


def check_patches(entry: Entry) -> str:
    """The source version both kernels' patches apply to (raises if one does not)."""
    version = build.check_patches(entry.series, entry.bug)
    build.check_patches(entry.series, entry.clean)
    return version
