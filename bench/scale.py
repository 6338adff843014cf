"""Analysis speed and memory on a large synthetic trace.

Writes a trace of N events (default 50 million) in the real binary format,
shaped like KVM round trips and context switches on 2 CPUs, then runs the
full `fputrace report --json` on it in a child process, twice, and prints
each run's events per second and peak memory against the trace file's size.
The first run reads a file just written (the system is still writing it
back to disk); the second reads it from the page cache: it measures the
analysis itself. Targets: >= 7 million events/s on one core, peak <= 2x
the file.

usage: bench/scale [--events N] [--runs 2] [--keep FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fputrace.trace import format as fmt
from fputrace.trace.writer import block_bytes, footer_block, header, write_sidecars

BLOCK = 512
# One pattern per round: user save, guest restore, VM entry, VM exit, guest
# save, user restore, then a switch: save of this task, restore of the next.
PATTERN = [fmt.Kind.XSAVEOPT, fmt.Kind.XRSTOR, fmt.Kind.VM_ENTRY, fmt.Kind.VM_EXIT,
           fmt.Kind.XSAVEOPT, fmt.Kind.XRSTOR, fmt.Kind.XSAVEOPT, fmt.Kind.XRSTOR]
TASKS = 8


def synthesize(n: int) -> np.ndarray:
    """A consistent flow: every restore loads what its buffer last received, the
    guests change their state every round, the user states never do."""
    ev = np.zeros(n, dtype=fmt.EVENT_DTYPE)
    seq = np.arange(n, dtype=np.uint64)
    step = (seq % len(PATTERN)).astype(np.int64)
    rnd = seq // len(PATTERN)
    cpu = (rnd % 2).astype(np.uint16)
    task_i = ((rnd // 2) % TASKS).astype(np.uint64)
    next_task = (task_i + 1) % TASKS
    k = np.uint64(0x9E3779B97F4A7C15)
    user_img = (task_i + np.uint64(1)) * k
    next_img = (next_task + np.uint64(1)) * k
    # A guest is back on its CPU every 2 * TASKS rounds: it resumes what it saved then.
    guest_saved = rnd * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(1)
    guest_loaded = (rnd - np.uint64(2 * TASKS)) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(1)
    user_buf = np.uint64(0xFFFF888001000040) + task_i * np.uint64(0x10000)
    next_buf = np.uint64(0xFFFF888001000040) + next_task * np.uint64(0x10000)
    guest_buf = np.uint64(0xFFFF888009000040) + task_i * np.uint64(0x10000)
    vmcb = np.uint64(0x6370000) + task_i * np.uint64(0x1000)
    kinds = np.array([int(k) for k in PATTERN], dtype=np.uint8)[step]
    ev["seq"] = seq
    ev["kind"] = kinds
    ev["vcpu"] = cpu
    # The switch's restore runs as the incoming task (switch_fpu_return()).
    ev["task"] = np.uint64(0xFFFF888100000000) + np.where(step == 7, next_task, task_i) * \
        np.uint64(0x4000)
    ev["pc"] = np.uint64(0xFFFFFFFF81034A43) + step.astype(np.uint64) * np.uint64(0x40)
    ev["addr"] = np.select([step == 0, step == 1, step == 2, step == 4, step == 7],
                           [user_buf, guest_buf, vmcb, guest_buf, next_buf], user_buf)
    # Registers before each event, and after each restore.
    before = np.select([step == 0, step == 1, step == 4, step == 5, step == 6, step == 7],
                       [user_img, user_img, guest_saved, guest_saved, user_img, user_img],
                       np.uint64(0))
    after = np.select([step == 1, step == 5, step == 7], [guest_loaded, user_img, next_img],
                      before)
    saves = np.isin(step, [0, 4, 6])
    ev["regs_hash"] = before
    ev["regs_after_hash"] = after
    content = np.where(saves, before, after)
    ev["mem_legacy_hash"] = content
    ev["mem_hash"] = content + np.uint64(77)
    ev["value"] = 0x207
    ev["xcr0"] = 0x207
    ev["xstate_bv"] = 0x207
    is_mem = (step != 2) & (step != 3)
    ev["mem_bytes"] = np.where(is_mem, 718, 0)
    ev["mem_features"] = np.where(is_mem, 0x207, 0)
    ev["flags"] = np.where(is_mem, int(fmt.Flag.MEM_VALID | fmt.Flag.REGS_VALID
                                       | fmt.Flag.REGS_AFTER_VALID | fmt.Flag.FORM64), 0) \
        | int(fmt.Flag.TASK_VALID)
    return ev


def write_trace(path: Path, ev: np.ndarray) -> None:
    rec = fmt.EVENT_DTYPE.itemsize
    raw = ev.view(np.uint8).reshape(-1)
    with open(path, "wb") as f:
        f.write(header(qemu="synthetic", kernel="scale", args=""))
        tasks = np.zeros(TASKS, dtype=fmt.TASK_DTYPE)
        tasks["task"] = 0xFFFF888100000000 + np.arange(TASKS, dtype=np.uint64) * 0x4000
        tasks["pid"] = 100 + np.arange(TASKS)
        tasks["comm"] = [f"vcpu{i}".encode() for i in range(TASKS)]
        f.write(block_bytes(fmt.BlockType.TASKS, 0, TASKS, tasks.tobytes()))
        for start in range(0, len(ev), BLOCK):
            count = min(BLOCK, len(ev) - start)
            payload = raw[start * rec:(start + count) * rec].tobytes()
            f.write(block_bytes(fmt.BlockType.EVENTS, 0, count, payload))
        by_kind = [0] * fmt.KIND_MAX
        for k, c in zip(*np.unique(ev["kind"], return_counts=True), strict=True):
            by_kind[int(k)] = int(c)
        f.write(footer_block(len(ev), TASKS, 1 + (len(ev) + BLOCK - 1) // BLOCK, by_kind))
    write_sidecars(path)  # as a recording leaves them: a run is whole with them


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000_000)
    ap.add_argument("--keep", type=Path, help="write the trace here and keep it")
    ap.add_argument("--runs", type=int, default=2, help="report runs on the same file")
    ap.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        write_trace(args.write_only, synthesize(args.events))
        return 0
    with tempfile.TemporaryDirectory(prefix="fputrace-scale-") as tmp:
        path = args.keep or Path(tmp) / "scale.ftr"
        t0 = time.monotonic()
        # Written by a child process: this one stays small, so that the report
        # child, forked from it, starts small too (ru_maxrss counts a child's
        # memory from before its exec).
        subprocess.run([sys.executable, __file__, "--events", str(args.events),
                        "--write-only", str(path)], check=True)
        size = path.stat().st_size
        print(f"wrote {args.events} events, {size / 2**30:.2f} GiB, in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        best = 0.0
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            with open(os.devnull, "w") as null:
                p = subprocess.Popen([sys.executable, "-m", "fputrace", "report", "--json",
                                      str(path)], stdout=null, stderr=subprocess.PIPE, text=True)
                _, status, usage = os.wait4(p.pid, 0)
            wall = time.monotonic() - t0
            code = os.waitstatus_to_exitcode(status)
            if code not in (0, 3):
                print(f"report failed with status {code}", file=sys.stderr)
                return 2
            cpu = usage.ru_utime + usage.ru_stime
            peak = usage.ru_maxrss * 1024  # kB on Linux
            rate = args.events / wall / 1e6
            best = max(best, rate)
            print(f"report run {run}: {wall:.1f} s wall, {cpu:.1f} s cpu, {rate:.2f}M events/s, "
                  f"peak {peak / 2**30:.2f} GiB = {peak / size:.2f}x the trace file",
                  flush=True)
        print(f"events/s={best:.2f}M, the best run (target >= 7M)")
        print(f"peak={peak / 2**30:.2f} GiB = {peak / size:.2f}x the trace file (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
