"""fputrace view, as a person uses it: --static and --svg on a synthetic
KVM run whose picture is derived by hand below, and the interactive viewer
driven through tmux (keys sent, the pane read back) on a trace with two
findings and named kernel functions."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require
from test_boundaries import lost_state_with_boundaries
from test_export import kvm_run_trace
from test_ownership import BT, L1, T, save
from tracebuilder import TraceBuilder

from fputrace.trace.run import sidecar
from fputrace.view.draw import LABEL_WIDTH

SEQS = 7            # kvm_run_trace: seq 0..6
PER_SEQ = 4         # columns per seq at the width below
WIDTH = LABEL_WIDTH + SEQS * PER_SEQ


def fputrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True)


def test_static_picture_of_a_kvm_run(tmp_path: Path) -> None:
    # 28 columns for seq 0..6: column c shows seq c // 4. The CPU's
    # intervals (test_ownership's timeline): T's state from seq 0 and 1,
    # the guest's from 2 to 5, shaded from the VM entry (3) to the exit (4)
    # while the guest ran, T's again at 6. Markers at column 4 * seq: the
    # first restore (unknown: R), the redundant save (s), the guest's load
    # (R), entry (>), exit (<), the guest's save (S), T's load (R). The vCPU
    # lane: in the guest from its entry at seq 3 to its exit at seq 4.
    p = fputrace("view", "--static", "--width", str(WIDTH),
                 str(kvm_run_trace(tmp_path / "t.ftr")))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    pad = " " * LABEL_WIDTH
    vcpu = "vcpu vmcb=0x6370000 (10 t)"
    assert lines[1:6] == [
        " " + "cpu0".ljust(LABEL_WIDTH - 1) + "█" * 12 + "▒" * 4 + "█" * 12,
        pad + "R   s   R   >   <   S   R   ",
        " " + (vcpu[:LABEL_WIDTH - 2] + "…").ljust(LABEL_WIDTH - 1) + " " * 12 + "▒" * 8
        + " " * 8,
        pad + " " * 12 + ">   <" + " " * 11,
        pad + "|0" + " " * 18 + "|5" + " " * 6,
    ]
    assert lines[0].startswith("t.ftr  x86_64  synthetic  7 events, 0 findings")  # cropped
    assert "10 t" in lines[6] and f"guest of {vcpu}" in lines[6]


def test_svg_is_the_same_picture(tmp_path: Path) -> None:
    out = tmp_path / "v.svg"
    p = fputrace("view", "--svg", str(out), "--width", str(WIDTH),
                 str(kvm_run_trace(tmp_path / "t.ftr")))
    assert p.returncode == 0 and p.stdout.strip() == f"wrote {out}", p.stderr
    svg = out.read_text()
    # The redundant save is drawn in a style of its own, the guest run shaded.
    assert svg.startswith("<svg") and "cpu0" in svg and ">s<" in svg and "▒▒▒▒" in svg


def test_without_a_terminal_it_says_what_to_use(tmp_path: Path) -> None:
    p = fputrace("view", str(kvm_run_trace(tmp_path / "t.ftr")))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--static" in p.stderr


# ---- interactive, through tmux ----------------------------------------------

SAVE_PC, RESTORE_PC = 0xFFFFFFFF81001010, 0xFFFFFFFF81002020


def findings_trace(tmp_path: Path) -> Path:
    """test_boundaries' lost state (findings at seq 4 and 6), with the saves
    and restores at two named kernel functions."""
    b = TraceBuilder()
    lost_state_with_boundaries(b)
    for e in b.events:
        if e.kind in (2, 5):            # xsaveopt, xrstor
            e.pc = SAVE_PC if e.kind == 2 else RESTORE_PC
    path = b.write(tmp_path / "f.ftr")
    sidecar(path, "kallsyms.gz").write_bytes(gzip.compress(
        b"ffffffff81001000 T save_fpregs_to_fpstate\n"
        b"ffffffff81002000 T restore_fpregs_from_fpstate\n"
        b"ffffffff81003000 T _etext\n"))
    return path


class Tmux:
    def __init__(self, name: str, command: list[str], width: int, height: int) -> None:
        self.name = name
        # A tmux server of its own (-L): sessions of one server share its
        # window size, and tests run side by side (pytest -n).
        self.tmux = ["tmux", "-L", name]
        # The pane's size, not a COLUMNS or LINES inherited (pytest -n sets
        # them in its workers), is what the viewer must take.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
        subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", str(width), "-y",
                        str(height), " ".join(command) + "; sleep 60"], check=True, env=env)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(self, text: str, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while True:
            s = self.screen()
            if text in s:
                return s
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} never shown; the pane:\n{s}")
            time.sleep(0.2)

    def keys(self, *keys: str) -> None:
        for k in keys:
            subprocess.run([*self.tmux, "send-keys", "-t", self.name, k], check=True)
            time.sleep(0.15)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator[Tmux]:
    require(shutil.which("tmux") is not None, "tmux not installed (make setup)")
    t = Tmux(f"fputrace-view-{os.getpid()}",
             [sys.executable, "-m", "fputrace", "view", str(findings_trace(tmp_path))], 140, 40)
    yield t
    t.close()


def test_keys_walk_the_findings_and_search(viewer: Tmux) -> None:
    s = viewer.wait_for("? help")
    assert "7 events, 2 findings" in s and "cpu0" in s
    # n: to the first finding, seq 4, with the events that explain it.
    viewer.keys("n")
    s = viewer.wait_for("finding 1 of 2")
    assert "FINDING lost_state" in s and "seq 4 cpu0 xrstor at restore_fpregs_from_fpstate+0x20" \
        in s
    # n again: the second, T's return at seq 6 with other registers.
    viewer.keys("n")
    s = viewer.wait_for("finding 2 of 2")
    assert "FINDING corrupted_state" in s and "user_return" in s
    viewer.keys("n")
    viewer.wait_for("no further finding")
    # p: back to the first.
    viewer.keys("p")
    viewer.wait_for("finding 1 of 2")
    # /: from the cursor at seq 0 (the save), the next event in a function
    # named like "restore_fpregs" is the restore at seq 1; / again (the
    # prompt keeps the text) the next one, seq 4. None is in a "save" one
    # after seq 0.
    viewer.keys("0", "/", "restore_fpregs", "Enter")
    s = viewer.wait_for("search 'restore_fpregs': seq 1")
    assert "site   restore_fpregs_from_fpstate+0x20" in s
    viewer.keys("/", "Enter")
    viewer.wait_for("search 'restore_fpregs': seq 4")
    viewer.keys("/", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace",
                "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "save",
                "Enter")
    viewer.wait_for("no event in a function matching 'save' after seq 5")
    # f: filter by a task name; the others are dimmed.
    viewer.keys("f", "20 u", "Enter")
    viewer.wait_for("filter '20 u': 1 owner(s)")
    # ?: the help, then back.
    viewer.keys("?")
    viewer.wait_for("jump to its next event")
    viewer.keys("Escape")
    end = time.monotonic() + 10
    while "jump to its next event" in viewer.screen() and time.monotonic() < end:
        time.sleep(0.2)
    s = viewer.screen()
    assert "jump to its next event" not in s and "filter '20 u'" in s
    viewer.keys("q")
    end = time.monotonic() + 10
    while "cpu0" in viewer.screen() and time.monotonic() < end:
        time.sleep(0.2)
    assert "cpu0" not in viewer.screen()


def test_zoom_and_pan_change_the_window(tmp_path: Path) -> None:
    # 600 saves of T's unchanging registers, seq 0..599; the cursor starts
    # at column 0 (seq 0). + halves the span around it: seq 0-299. right
    # pans by a quarter of the span: 75-374. - doubles it around the
    # cursor's seq (75), which the trace's start then bounds: 0-599 again
    # (the cursor stays on seq 75).
    # ] moves the cursor to the next column with an event: seq 0's save is
    # under it, so the next is seq 1.
    require(shutil.which("tmux") is not None, "tmux not installed (make setup)")
    b = TraceBuilder()
    b.task(T, 10, "t")
    for _ in range(600):
        save(b, BT, regs=L1)
    t = Tmux(f"fputrace-zoom-{os.getpid()}",
             [sys.executable, "-m", "fputrace", "view", str(b.write(tmp_path / "z.ftr"))],
             140, 40)
    try:
        t.wait_for("seq 0-599 of 0-599")
        t.keys("+")
        t.wait_for("seq 0-299 of 0-599")
        t.keys("Right")
        t.wait_for("seq 75-374 of 0-599")
        t.keys("-")
        t.wait_for("seq 0-599 of 0-599")
        # 0 puts the cursor back on seq 0; three halvings would leave 75
        # seqs, but a window shows at least one seq per column: the 117
        # columns of a 140-column pane.
        t.keys("0", "+", "+", "+")
        t.wait_for("seq 0-116 of 0-599")
        t.keys("]")
        t.wait_for("xsaveopt  seq 1  cpu0")
    finally:
        t.close()


def test_arm64_image_placed_by_its_first_branch(tmp_path: Path) -> None:
    # An Image with the EFI header: "MZ", then at offset 4 a branch of
    # +0xffc to primary_entry at 0x1000, where an stp q0, q1, [x0] lies.
    # kallsyms has no _text: the image is placed at primary_entry - 0x1000.
    from fputrace.kernel.text import load_kernel_text

    base = 0xFFFF800008000000
    image = bytearray(0x2000)
    image[0:2] = b"MZ"
    image[4:8] = (0x14000000 | (0xFFC // 4)).to_bytes(4, "little")
    image[0x1000:0x1004] = (0xAD000400).to_bytes(4, "little")
    path = tmp_path / "vmlinuz"
    path.write_bytes(gzip.compress(bytes(image)))
    text = load_kernel_text(path, "aarch64", {"primary_entry": base + 0x1000})
    assert text.read(base + 0x1000, 4) == (0xAD000400).to_bytes(4, "little")
    assert text.read(base - 4, 4) is None
