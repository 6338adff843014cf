"""Fuzzing the reader: random bytes and mutated valid traces give a result or
the one-line TraceError, never anything else. Through the CLI, never a
traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracebuilder import F_MEM, VM_ENTRY, XRSTOR, XSAVEOPT, TraceBuilder

from fputrace.cli import main
from fputrace.trace.reader import TraceError, read_trace


def _valid_trace() -> bytes:
    b = TraceBuilder()
    b.task(0xFFFF888000001000, 7, "t")
    for i in range(20):
        b.event((XSAVEOPT, XRSTOR, VM_ENTRY)[i % 3], vcpu=i % 2, flags=F_MEM, mem_bytes=8,
                task=0xFFFF888000001000)
    return b.build(block_events=4)


VALID = _valid_trace()


def _read_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.ftr"
        p.write_bytes(data)
        try:
            t = read_trace(p)
        except TraceError as e:
            assert "\n" not in str(e)
            return
        # Whatever was read is internally consistent.
        assert len(t.events) <= 20 or t.footer is not None
        assert list(t.events["seq"]) == sorted(t.events["seq"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _read_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_after_magic(data: bytes) -> None:
    _read_bytes(b"FPUTRACE" + data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(VALID)))
def test_mutated_valid_trace(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    _read_bytes(bytes(data[:cut]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID)))
def test_cli_never_raises(capsys: pytest.CaptureFixture[str], flips: list[tuple[int, int]],
                          cut: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.ftr"
        p.write_bytes(bytes(data[:cut]))
        for cmd in (["report", str(p)], ["report", "--json", str(p)], ["dump", str(p)]):
            status = main(cmd)
            err = capsys.readouterr().err
            # Both print what they read, and exit 4 on a partial trace.
            assert status in (0, 2, 4)
            assert "Traceback" not in err
            if status == 2:
                assert err.count("\n") == 1 and err.startswith("fputrace: ")
