"""Damaged and truncated traces, exhaustively: every byte of a small trace
flipped in turn, and the trace cut at every offset, each through
`fputrace report` as a user runs it.

The expectations come from the trace's layout as the builder wrote it (the
byte ranges of the header, each block and the footer), not from the reader:
a flipped byte may cost at most the records of the one block it lies in, a
cut at most the records of blocks not wholly before it; and either way the
report exits 4 (incomplete or damaged), with one warning line and never a
traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from tracebuilder import F_MEM, VM_ENTRY, XRSTOR, XSAVEOPT, TraceBuilder, header, write_sidecars

from fputrace.cli import main

TASK = 0xFFFF888000001000
EVENTS = 6


def small_trace() -> bytes:
    # A task announcement, six events in blocks of two, and the footer:
    # header | tasks(1) | events 0-1 | events 2-3 | events 4-5 | footer
    b = TraceBuilder()
    b.task(TASK, 7, "t")
    for i in range(EVENTS):
        b.event((XSAVEOPT, XRSTOR, VM_ENTRY)[i % 3], flags=F_MEM, mem_bytes=8, task=TASK)
    return b.build(block_events=2)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    events: int  # event records in it


def layout(data: bytes) -> list[Span]:
    """The header and every block, from the sizes the builder wrote."""
    spans = [Span(0, len(header()), 0)]
    pos = spans[0].end
    while pos < len(data):
        _magic, btype, _vcpu, count, size = struct.unpack_from("<IHHII", data, pos)
        spans.append(Span(pos, pos + 24 + size, count if btype == 1 else 0))
        pos += 24 + size
    return spans


def report(path: Path) -> tuple[int, int, str]:
    """Exit status, events the report says it read, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["report", "--json", str(path)])
    rep = json.loads(out.getvalue()) if out.getvalue() else {}
    # A damaged byte costs records, never a finding.
    assert rep.get("findings", []) == [], rep["findings"]
    return status, rep.get("events_total", -1), err.getvalue()


def check_partial(status: int, events: int, err: str, at_least: int, what: str) -> None:
    assert "Traceback" not in err, what
    assert status == 4, f"{what}: exit {status}, {err}"
    assert events >= at_least, f"{what}: {events} events read, at least {at_least} expected"
    assert err.count("\n") == 1 and err.startswith("fputrace: warning: "), what


@pytest.fixture(scope="module")
def pristine() -> bytes:
    return small_trace()


def test_the_pristine_trace_is_whole(pristine: bytes, tmp_path: Path) -> None:
    p = write_sidecars(tmp_path / "t.ftr")
    p.write_bytes(pristine)
    assert report(p) == (0, EVENTS, "")
    spans = layout(pristine)
    assert [s.events for s in spans] == [0, 0, 2, 2, 2, 0] and spans[-1].end == len(pristine)


def test_every_byte_flipped(pristine: bytes, tmp_path: Path) -> None:
    spans = layout(pristine)
    p = write_sidecars(tmp_path / "t.ftr")
    for offset in range(len(pristine)):
        damaged = bytearray(pristine)
        damaged[offset] ^= 0xFF
        p.write_bytes(bytes(damaged))
        hit = next(s for s in spans if s.start <= offset < s.end)
        status, events, err = report(p)
        check_partial(status, events, err, EVENTS - hit.events, f"byte {offset} flipped")
        assert "damaged" in err and "truncated" not in err, f"byte {offset}: {err}"


def test_cut_at_every_offset(pristine: bytes, tmp_path: Path) -> None:
    spans = layout(pristine)
    p = write_sidecars(tmp_path / "t.ftr")
    for cut in range(1, len(pristine)):
        p.write_bytes(pristine[:cut])
        whole_before = sum(s.events for s in spans if s.end <= cut)
        status, events, err = report(p)
        check_partial(status, events, err, whole_before, f"cut at {cut}")
        assert "incomplete trace" in err and "damaged" not in err, f"cut at {cut}: {err}"


def test_allow_partial_gives_the_usual_status(pristine: bytes, tmp_path: Path) -> None:
    p = write_sidecars(tmp_path / "t.ftr")
    p.write_bytes(pristine[:-10])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["report", "--allow-partial", str(p)]) == 0
    assert "incomplete trace" in err.getvalue()
