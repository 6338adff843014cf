"""Helpers of the end-to-end tests: the CLI as a user runs it, the
workloads' own summary lines, and a task's events."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import require

from analyzers.counts import task_identity, task_label
from fputrace.kernel import debian
from fputrace.trace.reader import Trace


def fputrace(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The CLI, given time beyond a recording's own --timeout: the recorder
    ends a run that overstays it and says so, which is what a test wants to
    see, not the run cut short from outside."""
    if "--timeout" in args:
        timeout = max(timeout, float(args[args.index("--timeout") + 1]) + 300)
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True, timeout=timeout)


def kernel_available(series: str, arch: str = "amd64") -> None:
    """Fetch a Debian kernel unless cached (skip, or fail under make test)."""
    if debian.cached_kernel(series, arch) is None:
        p = fputrace("kernel", "fetch", series, "--arch", arch)
        require(p.returncode == 0,
                f"Debian {series} {arch} kernel not fetchable: {p.stderr.strip()}")


def workload_lines(console: Path, name: str) -> list[dict[str, str]]:
    """Every summary line a program called `name` printed, in order,
    straight from the guest console."""
    out = []
    for line in console.read_text(errors="replace").splitlines():
        m = re.match(rf"^{name}: ((?:\w+=\S+ ?)+)$", line.strip())
        if m:
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split()))
    return out


def workload_line(console: Path, name: str) -> dict[str, str]:
    """The workload's own (first) summary line."""
    lines = workload_lines(console, name)
    if not lines:
        raise AssertionError(f"{name} printed no summary line in {console}")
    return lines[0]


def events_of(trace: Trace, comm: str) -> np.ndarray:
    ident = task_identity(trace.events, trace.tasks)
    names = np.array([task_label(trace.tasks, int(i)).split(" ", 1)[-1] for i in ident])
    selected: np.ndarray = trace.events[names == comm]
    return selected
