"""How fast the timeline viewer opens and answers keys on a large trace.

By default it writes a synthetic trace of 1,000,000 events in the real
format (fputrace.trace.writer): two CPUs, 64 tasks switching with a save
and a restore each, user entries and returns, and a vCPU thread's KVM runs
with their guest loads and saves. --trace FILE measures a recorded one.

It prints, each the median of --rounds:
  open   reading the trace, the analysis, the viewer's model, and the first
         screen drawn (what `fputrace view` does before it shows anything)
  keys   the time per key in the running viewer (headless, 200x60): zoom
         in and out, pan both ways, the next finding, the next event;
         beside each, the same key on a 200-event trace (textual's test
         pilot delivering the key and waiting for the screen, a floor of
         80-100 ms whatever the trace) and the difference, the viewer's own
and last `ratio=X.XX`: open time / 1.0 s, the target (<= 1.00).

usage: bench/view [--events N] [--trace FILE] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from analyzers.run import analyze_run
from fputrace.trace import format as fmt
from fputrace.trace.run import load_run
from fputrace.trace.writer import TraceBuilder
from fputrace.view.draw import static_lines
from fputrace.view.model import build_model

K, F = fmt.Kind, fmt.Flag
XSAVEOPT, XRSTOR, VM_ENTRY, VM_EXIT = K.XSAVEOPT, K.XRSTOR, K.VM_ENTRY, K.VM_EXIT
USER_ENTRY, USER_RETURN = K.USER_ENTRY, K.USER_RETURN
F_TASK, F_MEM, F_REGS, F_AFTER = F.TASK_VALID, F.MEM_VALID, F.REGS_VALID, F.REGS_AFTER_VALID

TARGET_OPEN_S = 1.0
FLOOR_EVENTS = 200  # the trace on which a key costs the pilot's time alone
N_TASKS = 64
TASK0 = 0xFFFF888000100000
FPU_OFFSET = 0x1640
VCPU_TASK = TASK0 + N_TASKS * 0x10000
GUEST_BUF, VMCB = 0xFFFF888003000040, 0x6370000


def synthetic(path: Path, n_events: int) -> Path:
    b = TraceBuilder()
    for t in range(N_TASKS + 1):
        b.task(TASK0 + t * 0x10000, 100 + t, f"task{t}" if t < N_TASKS else "vcpu", vcpu=t % 2)
    regs = [0x1000 + t for t in range(N_TASKS + 1)]
    cur = [0, 1]
    full = 0x7
    step = 0
    while len(b.events) < n_events:
        cpu = step % 2
        step += 1
        prev = cur[cpu]
        if step % 50 == 0:
            # The vCPU thread: its state out, the guest's in, a run, back.
            t = N_TASKS
            task = TASK0 + t * 0x10000
            buf = task + FPU_OFFSET
            f = F_TASK | F_MEM | F_REGS
            b.event(XSAVEOPT, vcpu=cpu, task=task, addr=buf, value=full, xcr0=full,
                    regs_hash=regs[t], mem_hash=regs[t], mem_legacy_hash=regs[t],
                    mem_bytes=640, mem_features=full, flags=f)
            b.event(XRSTOR, vcpu=cpu, task=task, addr=GUEST_BUF, value=full, xcr0=full,
                    regs_hash=regs[t], regs_after_hash=0x9000 + step, mem_hash=0x9000 + step,
                    mem_legacy_hash=0x9000 + step, mem_bytes=640, mem_features=full,
                    flags=f | F_AFTER)
            b.event(VM_ENTRY, vcpu=cpu, task=task, addr=VMCB, flags=F_TASK)
            b.event(VM_EXIT, vcpu=cpu, task=task, addr=VMCB, flags=F_TASK)
            b.event(XSAVEOPT, vcpu=cpu, task=task, addr=GUEST_BUF, value=full, xcr0=full,
                    regs_hash=0x9001 + step, mem_hash=0x9001 + step,
                    mem_legacy_hash=0x9001 + step, mem_bytes=640, mem_features=full, flags=f)
            b.event(XRSTOR, vcpu=cpu, task=task, addr=buf, value=full, xcr0=full,
                    regs_hash=0x9001 + step, regs_after_hash=regs[t], mem_hash=regs[t],
                    mem_legacy_hash=regs[t], mem_bytes=640, mem_features=full,
                    flags=f | F_AFTER)
            continue
        nxt = (prev + 2) % N_TASKS
        ptask, ntask = TASK0 + prev * 0x10000, TASK0 + nxt * 0x10000
        regs[prev] += 2                 # what its user code did since it returned
        b.event(USER_ENTRY, vcpu=cpu, task=ptask, regs_hash=regs[prev], flags=F_TASK | F_REGS)
        b.event(XSAVEOPT, vcpu=cpu, task=ptask, addr=ptask + FPU_OFFSET, value=full,
                xcr0=full, regs_hash=regs[prev], mem_hash=regs[prev],
                mem_legacy_hash=regs[prev], mem_bytes=640, mem_features=full,
                flags=F_TASK | F_MEM | F_REGS)
        b.event(XRSTOR, vcpu=cpu, task=ntask, addr=ntask + FPU_OFFSET, value=full, xcr0=full,
                regs_hash=regs[prev], regs_after_hash=regs[nxt], mem_hash=regs[nxt],
                mem_legacy_hash=regs[nxt], mem_bytes=640, mem_features=full,
                flags=F_TASK | F_MEM | F_REGS | F_AFTER)
        b.event(USER_RETURN, vcpu=cpu, task=ntask, regs_hash=regs[nxt],
                flags=F_TASK | F_REGS)
        cur[cpu] = nxt
    return b.write(path, block_events=4096)


def open_view(path: Path, width: int) -> tuple[float, object]:
    t0 = time.perf_counter()
    model = build_model(analyze_run(load_run(path)))
    static_lines(model, width)
    return time.perf_counter() - t0, model


async def key_times(model: object, keys: list[str]) -> dict[str, float]:
    from fputrace.view.app import ViewerApp

    app = ViewerApp(model)  # type: ignore[arg-type]
    out: dict[str, list[float]] = {}
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        for k in keys:
            t0 = time.perf_counter()
            await pilot.press(k)
            await pilot.pause()
            out.setdefault(k, []).append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--trace", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fputrace-bench-view-") as tmp:
        if args.trace is not None:
            path = args.trace
        else:
            t0 = time.perf_counter()
            path = synthetic(Path(tmp) / "big.ftr", args.events)
            print(f"wrote {args.events} synthetic events in {time.perf_counter() - t0:.1f} s")
        opens = []
        model = None
        for _ in range(args.rounds):
            dt, model = open_view(path, 220)
            opens.append(dt)
        keys = ["plus"] * 6 + ["left", "right"] * 4 + ["minus"] * 3 + \
            ["right_square_bracket"] * 4 + ["n", "0"]
        times = asyncio.run(key_times(model, keys))
        # The same keys on a trace too small to cost anything: what textual's
        # test pilot takes by itself to deliver a key and wait for the screen.
        _, tiny = open_view(synthetic(Path(tmp) / "tiny.ftr", FLOOR_EVENTS), 220)
        floor = asyncio.run(key_times(tiny, keys))
    open_s = statistics.median(opens)
    print(f"open: {open_s:.2f} s (median of {args.rounds}: "
          + ", ".join(f"{t:.2f}" for t in opens) + ")")
    for k, v in times.items():
        print(f"key {k:22s} {v * 1000:7.1f} ms  (pilot floor {floor[k] * 1000:5.1f} ms, "
              f"the viewer's own {max(v - floor[k], 0.0) * 1000:5.1f} ms)")
    print(f"ratio={open_s / TARGET_OPEN_S:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
