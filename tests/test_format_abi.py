"""The Python mirror of the trace format (fputrace/trace/format.py) against
the one definition of its bytes, plugin/ftr-format.h, as tests/format_abi.c
prints it by expanding the header's own lists: every field's offset and
size, every kind and its role, flag, feature, probe, block type and address
size, both ways (an entry the header has and the mirror lacks fails as much
as the reverse). And the content hashes the plugin's header computes against
the definition in words, tests/contenthash.py."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from conftest import require
from contenthash import AVX_INIT_HASH, xsave_hash

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
    numbers = header["numbers"]
    assert numbers["version"] == fmt.FORMAT_VERSION == fmt.READER_VERSION
    assert numbers["min_reader"] == fmt.MIN_READER_VERSION
    assert header["magic"].encode() == fmt.MAGIC
    assert numbers["block_magic"] == fmt.BLOCK_MAGIC
    assert numbers["kind_max"] == fmt.KIND_MAX
    assert numbers["probe_max"] == fmt.PROBE_MAX
    assert numbers["addr_size_shift"] == fmt.ADDR_SIZE_SHIFT


def test_record_layouts(header: dict[str, Any]) -> None:
    assert dtype_layout(fmt.EVENT_DTYPE) == header["event"]
    assert dtype_layout(fmt.TASK_DTYPE) == header["task"]
    assert dtype_layout(fmt.FOOTER_DTYPE) == header["footer"]
    assert dtype_layout(fmt.BLOCK_HEADER_DTYPE) == header["block_header"]
    assert dtype_layout(fmt.FILE_HEADER_DTYPE) == header["file_header"]
    assert header["sizes"] == {"event": fmt.EVENT_STRUCT.size, "task": fmt.TASK_STRUCT.size,
                               "block": fmt.BLOCK_HEADER_SIZE,
                               "file_header": fmt.HEADER_FIXED_SIZE,
                               "footer": fmt.FOOTER_STRUCT.size}


def test_numbers(header: dict[str, Any]) -> None:
    assert header["kinds"] == {k.name: int(k) for k in fmt.Kind}
    assert header["flags"] == {name: int(f) for name, f in fmt.Flag.__members__.items()}
    assert header["features"] == {name: int(f) for name, f in fmt.Feature.__members__.items()}
    assert header["probes"] == {p.name: int(p) for p in fmt.Probe}
    assert header["task_flags"] == {f.name: int(f) for f in fmt.TaskFlag}
    assert header["blocks"] == {b.name: int(b) for b in fmt.BlockType}
    assert header["arches"] == {a.name: int(a) for a in fmt.Arch}
    assert header["addr_sizes"] == {a.name[1:]: int(a) for a in fmt.AddrSize}
    assert header["ends"] == {e.name: int(e) for e in fmt.End}


def test_kind_roles(header: dict[str, Any]) -> None:
    # Which kinds the analysis treats as saves and restores of FP/SIMD state
    # (SAVE_KINDS, RESTORE_KINDS) is the header's, as the compiled pass
    # reads it through ftr_kind_role().
    roles = header["kind_roles"]
    assert {n for n, r in roles.items() if r == "SAVE"} == {k.name for k in fmt.SAVE_KINDS}
    assert {n for n, r in roles.items() if r == "RESTORE"} == {k.name for k in fmt.RESTORE_KINDS}
    assert {n for n, r in roles.items() if r != "OTHER"} == {k.name for k in fmt.BUFFER_KINDS}


def test_content_hashes_of_the_plugins_header(header: dict[str, Any]) -> None:
    # The init hash of the AVX upper halves the compiled pass judges saves
    # with, and a whole 1 KiB image, against docs/trace-format.md's words.
    image = bytes((i * 7 + 1) & 0xFF for i in range(1024))
    assert int(header["hashes"]["avx_init"]) == AVX_INIT_HASH
    assert int(header["hashes"]["xsave_image_1k"]) == xsave_hash(image)
