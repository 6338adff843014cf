"""Recording in every CPU mode: the mode conformance image
(tests/conformance/modes/) runs the same saves and restores in 32-bit
protected mode, in compatibility mode and in 64-bit mode, each operand once
absolute (disp32; RIP-relative in 64-bit code) and once through a register,
and prints what it did. The trace must say the same, record by record: the
address the CPU used, how it was formed, the bytes moved, and the class of
each save.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require
from test_conformance import EXIT_PASS, run_image

from analyzers.ownership import Class, analyze
from fputrace.paths import build_dir
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace

KINDS = {"xsave": fmt.Kind.XSAVE, "xrstor": fmt.Kind.XRSTOR, "fxsave": fmt.Kind.FXSAVE,
         "fxrstor": fmt.Kind.FXRSTOR}
ADDR_SIZE = {"protected32": fmt.AddrSize.A32, "compat32": fmt.AddrSize.A32,
             "long64": fmt.AddrSize.A64}


def run(plugin: Path, out: Path, *args: str) -> tuple[list[dict[str, str]], np.ndarray]:
    image = build_dir() / "tests" / "conformance" / "modes" / "modes.elf"
    require(image.exists(), f"{image} not built (make setup)")
    p = run_image(plugin, image, out, *args)
    serial = out.with_suffix(".serial")
    text = serial.read_text()
    assert p.returncode == EXIT_PASS, f"image failed ({p.returncode}): {text}{p.stderr}"
    ops = [dict(kv.split("=", 1) for kv in line.split()[1:])
           for line in text.splitlines() if line.startswith("OP ")]
    trace = read_trace(out)
    # The image ended QEMU itself, with no recorder to say so: EXITED.
    assert trace.intact and trace.footer is not None and trace.footer.end == fmt.End.EXITED, \
        trace.problems
    ev = trace.events
    return ops, ev[np.isin(ev["kind"], [int(k) for k in KINDS.values()])]


@pytest.fixture(scope="module")
def modes_run(qemu_plugin: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[list[dict[str, str]], np.ndarray]:
    return run(qemu_plugin, tmp_path_factory.mktemp("modes") / "modes.ftr")


def test_every_mode_ran(modes_run: tuple[list[dict[str, str]], np.ndarray]) -> None:
    ops, _ = modes_run
    assert [o["mode"] for o in ops] == [m for m in ADDR_SIZE for _ in range(6)]


def test_record_by_record(modes_run: tuple[list[dict[str, str]], np.ndarray]) -> None:
    ops, ev = modes_run
    assert len(ev) == len(ops)
    for op, e in zip(ops, ev, strict=True):
        what = f"{op['mode']} {op['kind']} {op['form']}"
        flags = int(e["flags"])
        assert int(e["kind"]) == KINDS[op["kind"]], what
        assert int(e["addr"]) == int(op["addr"], 16), what
        size = (flags & fmt.Flag.ADDR_SIZE_MASK) >> fmt.ADDR_SIZE_SHIFT
        assert size == ADDR_SIZE[op["mode"]], what
        assert flags & fmt.Flag.MEM_VALID and not flags & fmt.Flag.ADDR_UNVERIFIED, what
        assert flags & fmt.Flag.REGS_VALID, what
        # x87 and SSE moved; XMM8-15 exist in 64-bit mode only (8 x 16 bytes).
        assert int(e["mem_features"]) & 3 == 3, what
    by_mode = {m: [int(e["mem_bytes"]) for op, e in zip(ops, ev, strict=True) if op["mode"] == m]
               for m in ADDR_SIZE}
    assert by_mode["protected32"] == by_mode["compat32"]
    assert [b64 - b32 for b64, b32 in zip(by_mode["long64"], by_mode["compat32"], strict=True)] \
        == [256, 256, 256, 128, 128, 128]


def test_classes_and_content(modes_run: tuple[list[dict[str, str]], np.ndarray]) -> None:
    ops, ev = modes_run
    got = analyze(ev).cls
    for op, c in zip(ops, got, strict=True):
        if op["expect"] != "-":
            assert Class(int(c)).name.lower() == op["expect"], op
    # A restore reads back the bytes the save before it wrote to its buffer.
    last_save: dict[int, int] = {}
    for e in ev:
        if int(e["kind"]) in (fmt.Kind.XSAVE, fmt.Kind.FXSAVE):
            last_save[int(e["addr"])] = int(e["mem_hash"])
        else:
            assert int(e["mem_hash"]) == last_save[int(e["addr"])]


def test_register_hashes_derived_equal_read(modes_run: tuple[list[dict[str, str]], np.ndarray],
                                            qemu_plugin: Path, tmp_path: Path) -> None:
    _, derived = modes_run
    _, read = run(qemu_plugin, tmp_path / "read.ftr", "regs=read")
    for field in ("addr", "flags", "regs_hash", "regs_after_hash", "mem_hash"):
        assert list(read[field]) == list(derived[field]), field
