"""The Python mirror of the trace format (fputrace/trace/format.py) against
the one definition of its bytes, plugin/ftr-format.h, as a program compiled
from the header prints it: every field's offset and size, every kind, flag,
feature and probe number."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from conftest import require

from fputrace.paths import build_dir
from fputrace.trace import format as fmt


@pytest.fixture(scope="module")
def header() -> dict[str, Any]:
    exe = build_dir() / "format-abi"
    require(exe.exists(), f"{exe} not built (make setup)")
    out: dict[str, Any] = json.loads(subprocess.run([str(exe)], capture_output=True, text=True,
                                                    check=True).stdout)
    return out


def dtype_layout(dtype: Any) -> dict[str, list[int]]:
    return {name: [int(dtype.fields[name][1]), int(dtype.fields[name][0].itemsize)]
            for name in dtype.names}


def test_versions_and_magics(header: dict[str, Any]) -> None:
    assert header["version"] == fmt.FORMAT_VERSION == fmt.READER_VERSION
    assert header["min_reader"] == fmt.MIN_READER_VERSION
    assert header["magic"].encode() == fmt.MAGIC
    assert header["block_magic"] == fmt.BLOCK_MAGIC


def test_record_layouts(header: dict[str, Any]) -> None:
    assert dtype_layout(fmt.EVENT_DTYPE) == header["event"]
    assert dtype_layout(fmt.TASK_DTYPE) == header["task"]
    assert dtype_layout(fmt.FOOTER_DTYPE) == header["footer"]
    assert dtype_layout(fmt.BLOCK_HEADER_DTYPE) == header["block_header"]
    assert dtype_layout(fmt.FILE_HEADER_DTYPE) == header["file_header"]
    assert header["sizes"] == {"event": fmt.EVENT_DTYPE.itemsize,
                               "task": fmt.TASK_DTYPE.itemsize,
                               "block": fmt.BLOCK_HEADER_SIZE,
                               "footer": fmt.FOOTER_DTYPE.itemsize}


def test_numbers(header: dict[str, Any]) -> None:
    kinds = dict(header["kinds"])
    assert kinds.pop("MAX") == fmt.KIND_MAX
    assert kinds == {k.name: int(k) for k in fmt.Kind}
    assert header["flags"] == {name: int(f) for name, f in fmt.Flag.__members__.items()}
    assert header["features"] == {name: int(f) for name, f in fmt.Feature.__members__.items()}
    probes = dict(header["probes"])
    assert probes.pop("MAX") == fmt.PROBE_MAX
    assert probes == {p.name: int(p) for p in fmt.Probe}
    assert header["blocks"] == {b.name: int(b) for b in fmt.BlockType}
    assert header["addr_sizes"] == {a.name[1:]: int(a) for a in fmt.AddrSize}
    assert header["addr_size_shift"] == fmt.ADDR_SIZE_SHIFT
