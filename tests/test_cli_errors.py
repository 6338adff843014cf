"""Bad input through the installed command: one line on stderr saying what
was wrong and what to do, exit status 2, no traceback, no output file
presented as complete."""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tracebuilder import (
    F_KSIMD,
    KALLSYMS,
    P_KFPU_BEGIN,
    P_KFPU_END,
    PROBE,
    XRSTOR,
    XSAVEOPT,
    TraceBuilder,
    write_sidecars,
)

from fputrace.record.output import OutputLock
from fputrace.trace import format as fmt
from fputrace.trace.run import sidecar


def fputrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True, timeout=120)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fputrace: "), p.stderr
    for w in words:
        assert w in lines[0]


def test_missing_trace(tmp_path: Path) -> None:
    assert_one_line_error(fputrace("report", str(tmp_path / "none.ftr")), "no such trace file")


def test_garbage_trace(tmp_path: Path) -> None:
    p = tmp_path / "g.ftr"
    p.write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    assert_one_line_error(fputrace("dump", str(p)), "bad magic", "fputrace record")


def test_wrong_version(tmp_path: Path) -> None:
    p = TraceBuilder(version=6, min_reader=6).write(tmp_path / "v6.ftr")
    assert_one_line_error(fputrace("report", str(p)), "version 6", "reads format versions 1 to 5")


def test_truncated_trace_is_read_with_one_warning(tmp_path: Path) -> None:
    b = TraceBuilder()
    for _ in range(10):
        b.event(XRSTOR)
    data = b.build(block_events=4)
    p = tmp_path / "cut.ftr"
    p.write_bytes(data[: len(data) - 600])  # footer and part of the last block gone
    r = fputrace("report", "--json", str(p))
    assert r.returncode == 4  # what was read is reported, but the report is not whole
    assert "Traceback" not in r.stderr
    warn = r.stderr.strip().splitlines()
    assert len(warn) == 1 and "incomplete trace" in warn[0] and "read 8 events" in warn[0]
    assert '"complete": false' in r.stdout


def test_missing_kernel_file(tmp_path: Path) -> None:
    assert_one_line_error(fputrace("record", "--kernel", str(tmp_path / "bzImage"),
                                   "-o", str(tmp_path / "x.ftr")),
                          "neither a file nor a known Debian series")
    assert not (tmp_path / "x.ftr").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["record", "--kernel", "4.19"], ["neither a file nor a known Debian series"]),
    (["record", "--workload", "nope"], ["unknown workload 'nope'"]),
    (["record", "--workload", "kvm-pingpong:zero"], ["not a whole number"]),
    (["record", "--msr", "xfd"], ["not a number"]),
    (["kernel", "fetch", "4.19"], ["unknown kernel series '4.19'"]),
    (["kernel", "selftests", "4.19"], ["unknown kernel series '4.19'"]),
    (["record", "--workload", "vl-change"], ["vl-change is not built for x86_64"]),
    (["record", "--workload", "kvm-pingpong:\u00b2"], ["not a whole number"]),
    (["record", "--workload", ""], ["--workload ''", "name a workload"]),
    (["record", "--workload", " , "], ["no workload given"]),
    (["record", "--vmlinux", "/bin/true"], ["--vmlinux", "Debian's 6.1 brings its own"]),
    (["record", "--kernel", "6.12", "--modules", "/tmp"], ["--modules", "--kernel PATH"]),
    (["report", "--top", "-1", "x.ftr"], ["--top", "-1 is negative"]),
    (["report", "--timeline", "-3", "x.ftr"], ["--timeline", "negative"]),
    (["report", "--max-findings", "many", "x.ftr"], ["'many' is not a whole number"]),
    (["dump", "--limit", "-1", "x.ftr"], ["--limit", "negative"]),
    (["view", "--width", "-80", "x.ftr"], ["--width", "negative"]),
    (["compare", "--top", "-2", "a.ftr", "b.ftr"], ["--top", "negative"]),
])
def test_bad_arguments(tmp_path: Path, args: list[str], words: list[str]) -> None:
    assert_one_line_error(fputrace(*args, *(["-o", str(tmp_path / "x.ftr")]
                                            if args[0] == "record" else [])), *words)


def test_every_command_is_listed_whatever_the_parser_built() -> None:
    # main() builds the parser of the named command alone (fputrace.cli):
    # the top-level help and an unknown command still name every command,
    # and a command's own help and errors are its own.
    names = ("record", "check", "report", "view", "compare", "export", "dump", "kernel", "zoo")
    top = fputrace("--help")
    assert top.returncode == 0 and all(n in top.stdout for n in names), top.stdout
    unknown = fputrace("frobnicate")
    assert_one_line_error(unknown, "invalid choice: 'frobnicate'", *names)
    own = fputrace("report", "--help")
    assert own.returncode == 0 and "--max-findings" in own.stdout
    assert_one_line_error(fputrace("dump", "--limit", "x", "x.ftr"), "dump:", "--limit")


def static_and_dynamic(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    subprocess.run(["gcc", "-static", "-o", str(static), str(src)], check=True)
    subprocess.run(["gcc", "-o", str(dynamic), str(src)], check=True)
    return static, dynamic


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", ("--add", "no such file")),
        ("dynamic", ("dynamically linked", "-static")),
        ("interpreter", ("/usr/bin/python3", "not in the guest")),
        ("unknown-command", ("frobnicate", "neither an added file nor a busybox command")),
        ("unknown-after-cd", ("frobnicate", "neither an added file nor a busybox command")),
        ("empty-command", ("--run needs a command",)),
        ("bad-quoting", ("--run", "No closing quotation")),
        ("device", ("/dev/null", "not a regular file")),
        ("not-executable", ("is not executable", "chmod +x")),
    ],
)
def test_foreign_workload_checked_before_boot(tmp_path: Path, case: str,
                                              words: tuple[str, ...]) -> None:
    # Each of these is refused at once: no kernel is fetched or booted (the
    # kernel named does not even exist), and no trace is written.
    static, dynamic = static_and_dynamic(tmp_path)
    script = tmp_path / "tool.py"
    script.write_text("#!/usr/bin/python3\nprint(1)\n")
    unexecutable = tmp_path / "plain"
    unexecutable.write_bytes(static.read_bytes())
    unexecutable.chmod(0o644)
    args = {
        "missing": ["--add", str(tmp_path / "nope"), "--run", "nope"],
        "dynamic": ["--add", str(dynamic), "--run", "dynamic"],
        "interpreter": ["--add", str(script), "--run", "tool.py"],
        "unknown-command": ["--add", str(static), "--run", "frobnicate 1"],
        # A shell builtin is allowed; each program of the line is checked.
        "unknown-after-cd": ["--add", str(static), "--run", "cd /added && ./static; frobnicate"],
        "empty-command": ["--run", "  "],
        "bad-quoting": ["--add", str(static), "--run", "static 'x"],
        "device": ["--add", "/dev/null", "--run", "null"],
        "not-executable": ["--add", str(unexecutable), "--run", "./plain 5"],
    }[case]
    out = tmp_path / "t.ftr"
    p = fputrace("record", "--kernel", str(tmp_path / "no-such-kernel"), *args, "-o", str(out))
    assert_one_line_error(p, *words)
    assert not out.exists()


@pytest.mark.parametrize(("where", "words"), [
    ("/proc/x.ftr", ["-o /proc/x.ftr: cannot write in /proc"]),
    ("DIR", ["is a directory"]),
    ("/proc/nope/x.ftr", ["the directory /proc/nope does not exist"]),
])
def test_bad_output_path_fails_before_recording(tmp_path: Path, where: str,
                                                words: list[str]) -> None:
    # The kernel named does not exist either: the output is checked first,
    # in well under the time a boot takes.
    out = str(tmp_path) if where == "DIR" else where
    t0 = time.monotonic()
    p = fputrace("record", "--kernel", str(tmp_path / "no-such-kernel"), "-o", out)
    assert_one_line_error(p, *words)
    assert time.monotonic() - t0 < 30


def test_output_into_a_missing_directory_is_refused_and_not_made(tmp_path: Path) -> None:
    out = tmp_path / "new" / "x.ftr"
    p = fputrace("record", "--kernel", str(tmp_path / "no-such-kernel"), "-o", str(out))
    assert_one_line_error(p, "does not exist", "create it first")
    assert not out.parent.exists()


def test_a_second_record_to_the_same_output_is_refused(tmp_path: Path) -> None:
    # While one recording holds the output's lock, another to the same -o
    # refuses at once, naming the holder, and leaves the file alone.
    out = tmp_path / "x.ftr"
    with OutputLock(out):
        p = fputrace("record", "--kernel", str(tmp_path / "no-such-kernel"), "-o", str(out))
        assert_one_line_error(p, "another fputrace record", f"pid {os.getpid()}")
    assert not sidecar(out, "lock").exists()
    # Released: the next one gets past the lock (to the missing kernel).
    p = fputrace("record", "--kernel", str(tmp_path / "no-such-kernel"), "-o", str(out))
    assert_one_line_error(p, "neither a file nor a known Debian series")


def test_report_into_a_pipe_closed_early_exits_0(tmp_path: Path) -> None:
    b = TraceBuilder()
    for _ in range(3000):
        b.event(XRSTOR)
    p = b.write(tmp_path / "t.ftr")
    for command in (["report", "--full"], ["dump"]):
        line = " ".join([sys.executable, "-m", "fputrace", *command, str(p)])
        r = subprocess.run(["bash", "-c", f"set -o pipefail; {line} | head -1"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "Error" not in r.stderr, r.stderr


def test_a_warning_is_one_line_naming_the_trace_once(tmp_path: Path) -> None:
    b = TraceBuilder()
    for _ in range(10):
        b.event(XRSTOR)
    data = bytearray(b.build(block_events=2))
    for at in range(200, len(data) - 700, 400):  # many damaged blocks
        data[at] ^= 0xFF
    p = b.write(tmp_path / "d.ftr")
    p.write_bytes(bytes(data))
    r = fputrace("report", str(p))
    assert r.returncode == 4
    warn = [line for line in r.stderr.splitlines() if line]
    assert len(warn) == 1 and warn[0].count(str(p)) == 1, warn
    assert len(warn[0]) - len(str(p)) < 250, warn
    assert "more: fputrace dump --header" in warn[0]


def test_too_little_free_space_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # fpu-switch:1000000 needs about 20 M events of 128 bytes: 2.4 GiB; the
    # directory is made to have 100 MiB free.
    import shutil

    from fputrace.cli import main
    from fputrace.record.output import estimated_trace_bytes
    from fputrace.record.workloads import parse_workloads

    need = estimated_trace_bytes(parse_workloads("fpu-switch:1000000"), 0)
    assert need >= 1_000_000 * 20 * 128
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _p: usage._replace(free=100 << 20))
    status = main(["record", "--workload", "fpu-switch:1000000", "--kernel",
                   str(tmp_path / "no-such-kernel"), "-o", str(tmp_path / "t.ftr")])
    err = capsys.readouterr().err
    assert status == 2 and "100 MiB free" in err and f"about {need >> 20} MiB" in err
    assert not (tmp_path / "t.ftr").exists()


# ---- one policy for a partial trace, in every command that loads a run ----
#
# A trace cut to a third of its size: every command works on what was read,
# warns once naming the trace, and exits 4 unless --allow-partial, whatever
# it would have returned otherwise. compare's gate does not hold here (no
# findings at all), so without the policy it would exit 0 and a CI job would
# pass on a third of the data.

def whole_and_cut(tmp_path: Path) -> tuple[Path, Path]:
    b = TraceBuilder()
    for _ in range(30):
        b.event(XRSTOR)
    data = b.build(block_events=4)
    whole = b.write(tmp_path / "whole.ftr", block_events=4)
    cut = b.write(tmp_path / "cut.ftr", block_events=4)
    cut.write_bytes(data[: len(data) // 3])
    return whole, cut


def partial_commands(tmp_path: Path, whole: Path, cut: Path) -> dict[str, list[str]]:
    return {
        "report": ["report", str(cut)],
        "compare": ["compare", str(whole), str(cut), "--fail-if", "findings>1000"],
        "compare (A cut)": ["compare", str(cut), str(whole)],
        "export perfetto": ["export", str(cut), "--format", "perfetto",
                            "-o", str(tmp_path / "out.json")],
        "export csv": ["export", str(cut), "--format", "csv", "-o", str(tmp_path / "out.csv")],
        "view": ["view", "--static", "--width", "80", str(cut)],
        "dump": ["dump", str(cut)],
    }


@pytest.mark.parametrize("command", ["report", "compare", "compare (A cut)", "export perfetto",
                                     "export csv", "view", "dump"])
def test_partial_trace_exits_4_unless_allowed(tmp_path: Path, command: str) -> None:
    whole, cut = whole_and_cut(tmp_path)
    argv = partial_commands(tmp_path, whole, cut)[command]
    r = fputrace(*argv)
    assert r.returncode == 4, (command, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    warn = r.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith(f"fputrace: warning: {cut}: ")
    assert "--allow-partial" in warn[0]
    allowed = fputrace(*argv, "--allow-partial")
    # What was read is shown; but a gate (--fail-if) never passes on it.
    gated = "--fail-if" in argv
    assert allowed.returncode == (4 if gated else 0), (command, allowed.stderr)
    assert len(allowed.stderr.strip().splitlines()) == 1
    # The same command on the whole trace: no warning, the usual status.
    whole_argv = [str(whole) if a == str(cut) else a for a in argv]
    w = fputrace(*whole_argv)
    assert w.returncode == 0 and w.stderr == "", (command, w.stderr)


def test_partial_export_says_so_in_its_metadata(tmp_path: Path) -> None:
    import json

    whole, cut = whole_and_cut(tmp_path)
    for trace, complete in ((whole, True), (cut, False)):
        out = tmp_path / f"{trace.stem}.json"
        fputrace("export", str(trace), "--format", "perfetto", "-o", str(out))
        assert json.loads(out.read_text())["metadata"]["complete"] is complete
        csv_out = tmp_path / f"{trace.stem}.csv"
        fputrace("export", str(trace), "--format", "csv", "-o", str(csv_out), "--allow-partial")
        first = csv_out.read_text().splitlines()[0]
        assert first.startswith("# fputrace: incomplete trace") is not complete
        assert first.startswith("seq,") is complete


@pytest.mark.parametrize("smp", ["0", "17"])
def test_smp_out_of_range_is_refused_with_the_one_range(smp: str) -> None:
    # One range (fputrace.record.MAX_SMP) for the command and the library;
    # the command said 1 to 64 and the library then refused 17.
    assert_one_line_error(fputrace("record", "--smp", smp, "--kernel", "/nonexistent/Image"),
                          f"--smp {smp}", "1 to 16")


@pytest.mark.parametrize(("argv", "what"), [
    (["--guest-workload", "fpu-switch:10"], "--guest-workload needs --guest-kernel"),
    (["--alongside", "fpu-hog"], "--alongside runs next to an L2 guest"),
    (["--workload", "fpu-hog"], "fpu-hog runs until it is stopped"),
    (["--guest-kernel", "6.1", "--guest-workload", "kvm-pingpong:5"],
     "kvm-pingpong runs a KVM guest of its own"),
    # The architecture this machine is not (L1 runs this machine's own QEMU).
    (["--arch", "arm64" if platform.machine() == "x86_64" else "x86_64", "--guest-kernel",
      "6.1"], "needs an L1 of this machine's"),
], ids=["guest-workload", "alongside", "until-stopped", "kvm-in-guest", "arm64-guest"])
def test_guest_options_refused_with_one_line(tmp_path: Path, argv: list[str], what: str
                                             ) -> None:
    p = fputrace("record", *argv, "-o", str(tmp_path / "g.ftr"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and what in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--fail-if", "findings>+0"], ["--baseline"]),
    (["--fail-if", "findings>>1"], ["write METRIC OP VALUE"]),
    (["--fail-if", "no_such_metric>0"], ["'no_such_metric' is no metric"]),
    (["--workload", "nope"], ["unknown workload 'nope'"]),
    (["--workload", "kvm-pingpong:\u00b2"], ["not a whole number"]),
    (["--baseline", "MISSING"], ["no such trace file"]),
    (["--baseline", "DAMAGED", "--fail-if", "findings>+0"], ["--baseline", "damaged trace"]),
    (["--baseline", "UNFINISHED", "--fail-if", "findings>+0"],
     ["--baseline", "the run did not finish", "complete recording"]),
])
def test_check_stops_a_bisect_on_the_users_mistake(tmp_path: Path, args: list[str],
                                                   words: list[str]) -> None:
    # git bisect run takes 1-127 (but 125) as "bad" and 125 as "skip": a
    # mistake in the command would blame or skip every commit. check finds
    # each before anything boots (the kernel named does not exist) and exits
    # 128, which stops the bisect.
    b = TraceBuilder()
    b.event(XRSTOR)
    data = bytearray(b.build())
    data[len(data) - 100] ^= 0xFF  # in the footer
    (tmp_path / "damaged.ftr").write_bytes(bytes(data))
    b.write(tmp_path / "unfinished.ftr", end=fmt.End.TIMEOUT)
    paths = {"MISSING": tmp_path / "missing.ftr", "DAMAGED": tmp_path / "damaged.ftr",
             "UNFINISHED": tmp_path / "unfinished.ftr"}
    argv = [str(paths.get(a, a)) for a in args]
    t0 = time.monotonic()
    p = fputrace("check", "--kernel", str(tmp_path / "no-such-kernel"), *argv,
                 "-o", str(tmp_path / "x.ftr"))
    assert p.returncode == 128, p.stderr
    assert time.monotonic() - t0 < 30
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr and "the bisect stops" in lines[0]
    for w in words:
        assert w in lines[0]


def test_check_skips_a_commit_whose_kernel_cannot_be_had(tmp_path: Path) -> None:
    # The command is right; this commit's kernel image is missing (its build
    # failed): skip the commit, 125.
    p = fputrace("check", "--kernel", str(tmp_path / "no-such-kernel"),
                 "-o", str(tmp_path / "x.ftr"))
    assert p.returncode == 125 and "not judged, skipping" in p.stderr


@pytest.mark.parametrize("case", ["missing", "plain-text", "truncated", "corrupt", "zlib",
                                  "empty", "directory"])
def test_damaged_symbols_are_one_warning_never_a_finding(tmp_path: Path, case: str) -> None:
    # Kernel SIMD outside kernel_fpu_begin()/end() is judged by its
    # function's name: without the symbols it must not become a finding, and
    # the run is not complete (attribution unknown): exit 4, one line.
    b = TraceBuilder(features=0x1F)
    b.event(PROBE, index=P_KFPU_BEGIN)
    b.event(PROBE, index=P_KFPU_END)
    b.event(XSAVEOPT, flags=F_KSIMD, simd_pc=0x81000100)
    p = b.write(tmp_path / "t.ftr")
    syms = sidecar(p, "kallsyms.gz")
    good = syms.read_bytes()
    if case == "missing":
        syms.unlink()
    elif case == "plain-text":
        syms.write_text(KALLSYMS)
    elif case == "truncated":
        syms.write_bytes(good[: len(good) // 2])
    elif case == "corrupt":
        syms.write_bytes(good[:-8] + bytes(8))  # the CRC and size trailer
    elif case == "zlib":
        syms.write_bytes(good[:10] + b"\xff" * 8 + good[18:])  # bad deflate data
    elif case == "empty":
        syms.write_bytes(gzip.compress(b""))
    else:
        syms.unlink()
        syms.mkdir()
    r = fputrace("report", str(p))
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "t.kallsyms.gz" in lines[0] and "attribution is unknown" in lines[0]
    allowed = fputrace("report", "--json", "--allow-partial", str(p))
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["findings"] == []
    # With its symbols the same trace has its one misuse (the oracle that
    # the check is made at all).
    if syms.is_dir():
        syms.rmdir()
    write_sidecars(p)
    whole = fputrace("report", "--json", str(p))
    assert whole.returncode == 3 and [f["kind"] for f in json.loads(whole.stdout)["findings"]] \
        == ["kernel_fpu_misuse"]


@pytest.mark.parametrize("case", ["missing", "not-json", "directory", "list"])
def test_damaged_metadata_is_one_warning(tmp_path: Path, case: str) -> None:
    b = TraceBuilder()
    b.event(XRSTOR)
    p = b.write(tmp_path / "t.ftr")
    meta = sidecar(p, "meta.json")
    meta.unlink()
    if case == "not-json":
        meta.write_text("{status: ok")
    elif case == "directory":
        meta.mkdir()
    elif case == "list":
        meta.write_text("[]")
    r = fputrace("report", str(p))
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "t.meta.json" in lines[0], r.stderr


def test_a_run_whose_own_check_failed_is_never_reported_clean(tmp_path: Path) -> None:
    # The trace shows nothing wrong, but the workload that checks its own
    # registers exited 1, and a --run command 2: report says so beside its
    # own verdict and exits 3; with both at 0 the same trace is clean.
    b = TraceBuilder()
    b.event(XRSTOR)
    failed = {"status": "workload-failed", "partial": False,
              "workloads": [{"label": "signal:50", "exit_status": 1, "summary": {}}],
              "runs": [{"command": "./repro 5", "exit_status": 2, "last_line": "bad"}]}
    p = b.write(tmp_path / "t.ftr", meta=failed)
    r = fputrace("report", str(p))
    assert r.returncode == 3, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("fputrace found no lost or corrupted FPU state, but the run's "
                            "own check failed: signal:50 exited 1; --run './repro 5' exited 2")
    j = fputrace("report", "--json", str(p))
    assert j.returncode == 3 and json.loads(j.stdout)["own_check_failures"] == [
        "signal:50 exited 1", "--run './repro 5' exited 2"]
    ok = {**failed, "workloads": [{"label": "signal:50", "exit_status": 0, "summary": {}}],
          "runs": []}
    r = fputrace("report", str(b.write(tmp_path / "t.ftr", meta=ok)))
    assert r.returncode == 0 and r.stdout.startswith("no lost or corrupted FPU state")
