"""bench/scale runs as a user runs it, on a small event count: it prints its
figures, and the trace it wrote is read whole, every event it asked for and
nothing damaged (its writer is the tests' tracebuilder)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from e2e import fputrace

TOP = Path(__file__).resolve().parent.parent
N_EVENTS = 20_000


def test_scale_prints_its_figures_on_a_trace_read_whole(tmp_path: Path) -> None:
    trace = tmp_path / "scale.ftr"
    p = subprocess.run([str(TOP / "bench" / "scale"), "--events", str(N_EVENTS), "--runs", "1",
                        "--keep", str(trace)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^events/s=\d+\.\d+M", p.stdout, re.M), p.stdout
    assert re.search(r"^peak=\d+\.\d+ GiB = \d+\.\d+x the trace file", p.stdout, re.M)
    r = fputrace("report", "--json", str(trace))
    assert r.returncode in (0, 3), r.stderr
    data = json.loads(r.stdout)
    assert data["events_total"] == N_EVENTS
    # One VM entry in every round of 8 events (bench/scale.py's PATTERN).
    assert data["events_by_kind"]["vm_entry"] == N_EVENTS // 8
