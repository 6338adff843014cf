"""fputrace compare on two synthetic traces whose classes are known by
construction (the same rules as tests/test_ownership.py's double save), with
the delta table computed by hand, and the --fail-if gates on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ownership import BT, GARBAGE, L1, L2, restore, save
from tracebuilder import TraceBuilder

from fputrace.metrics import is_metric_name

BYTES = 576 + 64  # each save and restore of test_ownership's builders


def fputrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fputrace", *args], capture_output=True,
                          text=True)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    # A: T's state L1 restored (unknown: nobody before it), saved unchanged
    # (redundant: the buffer holds L1), changed to L2 and saved (necessary).
    a = TraceBuilder()
    restore(a, BT, before=GARBAGE, loads=L1)
    save(a, BT, regs=L1)
    save(a, BT, regs=L2)
    # B: the same with two more unchanged saves: three redundant.
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)
    for _ in range(3):
        save(b, BT, regs=L1)
    save(b, BT, regs=L2)
    return a.write(tmp_path / "a.ftr"), b.write(tmp_path / "b.ftr")


def test_delta_table_by_hand(pair: tuple[Path, Path]) -> None:
    p = fputrace("compare", "--json", str(pair[0]), str(pair[1]))
    assert p.returncode == 0, p.stderr
    changed = {r["metric"]: (r["a"], r["b"], r["delta"], r["change_pct"])
               for r in json.loads(p.stdout)["changed"]}
    assert changed == {
        "events": (3, 5, 2, 66.67),
        "events.xsaveopt": (2, 4, 2, 100.0),
        "saves_restores": (3, 5, 2, 66.67),
        "redundant_save": (1, 3, 2, 200.0),
        "redundant_save_pct": (50.0, 75.0, 25.0, 50.0),     # of saves: 1/2, 3/4
        "bytes_moved": (3 * BYTES, 5 * BYTES, 2 * BYTES, 66.67),
        "redundant_bytes": (BYTES, 3 * BYTES, 2 * BYTES, 200.0),
        "redundant_bytes_pct": (33.33, 60.0, 26.67, 80.02),
        # Per XSAVE component of the saves (x87 152 bytes, SSE and AVX 256):
        # 2 then 4 saved, 1 then 3 of them redundant.
        "bytes.x87.saved": (2 * 152, 4 * 152, 2 * 152, 100.0),
        "bytes.x87.redundant": (152, 3 * 152, 2 * 152, 200.0),
        "bytes.sse.saved": (2 * 256, 4 * 256, 2 * 256, 100.0),
        "bytes.sse.redundant": (256, 3 * 256, 2 * 256, 200.0),
        "bytes.avx.saved": (2 * 256, 4 * 256, 2 * 256, 100.0),
        "bytes.avx.redundant": (256, 3 * 256, 2 * 256, 200.0),
        # Unchanged metrics are not listed: events.xrstor (1 and 1), ...
    }


def test_text_table_has_a_b_and_delta(pair: tuple[Path, Path]) -> None:
    p = fputrace("compare", str(pair[0]), str(pair[1]))
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if "redundant_save " in line + " ")
    assert row.split("│")[1:] and [c.strip() for c in row.split("│")] == \
        ["redundant_save", "1", "3", "+2", "+200%"]
    assert "fpsimd" not in p.stdout and "events.xrstor" not in p.stdout


@pytest.mark.parametrize(("expr", "holds"), [
    ("redundant_save>+1", True),                # delta 2
    ("redundant_save>+2", False),
    ("redundant_save>=3", True),                # B's own value
    ("redundant_save_pct>+40%", True),          # (75 - 50) / 50 = +50%
    ("redundant_save_pct > +60%", False),
    ("events.xrstor!=+0", False),               # no change
    ("findings>0", False),
    ("findings.lost_state>0", False),           # a kind that never occurred: 0
])
def test_fail_if(pair: tuple[Path, Path], expr: str, holds: bool) -> None:
    p = fputrace("compare", str(pair[0]), str(pair[1]), "--fail-if", expr)
    assert p.returncode == (1 if holds else 0), p.stdout + p.stderr
    assert f"--fail-if {expr.strip()}: {'HOLDS' if holds else 'does not hold'}" in p.stdout


def test_any_holding_gate_fails(pair: tuple[Path, Path]) -> None:
    p = fputrace("compare", "--json", str(pair[0]), str(pair[1]),
                 "--fail-if", "findings>0", "--fail-if", "redundant_save>+1")
    assert p.returncode == 1
    assert json.loads(p.stdout)["fail_if"] == [
        {"expr": "findings>0", "holds": False}, {"expr": "redundant_save>+1", "holds": True}]


@pytest.mark.parametrize(("expr", "words"), [
    ("redundant_save>>1", "write METRIC OP VALUE"),
    ("no_such_metric>0", "'no_such_metric' is no metric"),
])
def test_bad_gate_is_one_line(pair: tuple[Path, Path], expr: str, words: str) -> None:
    p = fputrace("compare", str(pair[0]), str(pair[1]), "--fail-if", expr)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and words in p.stderr, p.stderr


def test_every_metric_a_run_gives_is_a_metric_name(pair: tuple[Path, Path]) -> None:
    # check refuses a --fail-if on a name no run can have before it records
    # (fputrace.metrics.is_metric_name): the names runs do give must pass.
    p = fputrace("compare", "--json", "--all", str(pair[0]), str(pair[1]))
    names = json.loads(p.stdout)["metrics"]
    assert len(names) >= 30
    assert [n for n in names if not is_metric_name(n)] == []
    assert not is_metric_name("no_such_metric") and not is_metric_name("events.nope")


def test_a_figure_over_no_operations_is_unknown_and_gates_on_it_are_not_judged(
        pair: tuple[Path, Path], tmp_path: Path) -> None:
    # Neither run has a VM entry: its saves per VM entry are not 0 but
    # unknown (null), and a gate on them is neither held nor passed: compare
    # exits 4 and says why, in one line. B's restores: 1, none redundant, so
    # its redundant_restore_pct is a known 0.
    p = fputrace("compare", "--json", str(pair[0]), str(pair[1]))
    metrics = json.loads(p.stdout)["metrics"]
    assert metrics["saves_per_vm_entry"] == {"a": None, "b": None}
    assert metrics["redundant_save_per_vm_entry"] == {"a": None, "b": None}
    assert metrics["redundant_restore_pct"] == {"a": 0.0, "b": 0.0}
    for expr in ("saves_per_vm_entry<1", "saves_per_vm_entry>+10%"):
        p = fputrace("compare", "--fail-if", expr, str(pair[0]), str(pair[1]))
        assert p.returncode == 4, (expr, p.stdout, p.stderr)
        (line,) = p.stderr.splitlines()
        assert "saves_per_vm_entry is unknown in " in line and "not be judged" in line
    # A run with saves only: its share of redundant restores is unknown, in
    # the report's text and its JSON.
    only = TraceBuilder()
    save(only, BT, regs=L1)
    save(only, BT, regs=L1)
    path = only.write(tmp_path / "saves.ftr")
    p = fputrace("report", str(path))
    assert p.returncode == 0, p.stderr
    assert "redundant saves 1 (50.0% of saves), redundant restores 0 (unknown % of restores)" \
        in " ".join(p.stdout.split())
    rep = json.loads(fputrace("report", "--json", str(path)).stdout)
    assert rep["redundant_percent"]["restores"] is None
    assert rep["per_operation"]["vm_entry"] == {
        "count": 0, "saves": None, "restores": None, "bytes": None}
