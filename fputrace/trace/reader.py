"""Decode a trace file into numpy arrays. Decoding only: no printing, no policy.

A trace whose writer died (QEMU crashed or was killed) has no footer and may
end in a partial block; everything up to the last whole block is returned, and
`Trace.problems` says what is missing.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fputrace.errors import FputraceError
from fputrace.trace import format as fmt


class TraceError(FputraceError):
    """The file is not a trace this reader can decode."""


@dataclass(frozen=True)
class Header:
    version: int
    min_reader_version: int
    header_size: int
    features: fmt.Feature
    arch: fmt.Arch
    event_size: int
    task_size: int
    plugin_api: int
    qemu: str
    kernel: str
    plugin_args: str


@dataclass(frozen=True)
class Footer:
    events_total: int
    tasks_total: int
    blocks_total: int
    write_errors: int
    events_by_kind: dict[int, int]


@dataclass
class Trace:
    path: Path
    header: Header
    events: npt.NDArray[np.void]  # EVENT_DTYPE, in sequence order
    tasks: npt.NDArray[np.void]  # TASK_DTYPE, in sequence order
    footer: Footer | None
    blocks_read: int
    bytes_unread: int
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.footer is not None and not self.problems


def _parse_header(path: Path, data: bytes) -> Header:
    if len(data) < len(fmt.MAGIC) or data[: len(fmt.MAGIC)] != fmt.MAGIC:
        raise TraceError(f"{path}: not an fputrace trace (bad magic): give a file written by "
                         "'fputrace record'")
    if len(data) < fmt.HEADER_FIXED_SIZE:
        raise TraceError(f"{path}: truncated header ({len(data)} bytes): the trace is "
                         "incomplete, record it again")
    (_, version, min_reader, header_size, features, arch, event_size, task_size, _,
     plugin_api, _) = struct.unpack_from(fmt.HEADER_FIXED, data, 0)
    if min_reader > fmt.READER_VERSION or version < 1:
        raise TraceError(f"{path}: trace format version {version} (readable from reader "
                         f"version {min_reader}) is not supported: this fputrace reads format "
                         f"versions 1 to {fmt.READER_VERSION}; use a matching fputrace")
    if header_size > len(data) or header_size < fmt.HEADER_FIXED_SIZE:
        raise TraceError(f"{path}: truncated header (needs {header_size} bytes, file has "
                         f"{len(data)}): record the trace again")
    if event_size != fmt.EVENT_DTYPE.itemsize or task_size != fmt.TASK_DTYPE.itemsize:
        raise TraceError(f"{path}: record sizes {event_size}/{task_size} do not match format "
                         f"version {version}: the file is corrupt")
    try:
        arch_value = fmt.Arch(arch)
    except ValueError:
        raise TraceError(f"{path}: unknown architecture code {arch}: the file is corrupt "
                         "or from a newer fputrace") from None
    strings: list[str] = []
    pos = fmt.HEADER_FIXED_SIZE
    for _ in range(3):
        if pos + 2 > header_size:
            raise TraceError(f"{path}: header strings run past the header: the file is corrupt")
        (n,) = struct.unpack_from("<H", data, pos)
        pos += 2
        if pos + n > header_size:
            raise TraceError(f"{path}: header strings run past the header: the file is corrupt")
        strings.append(bytes(data[pos : pos + n]).decode("utf-8", "replace"))
        pos += n
    return Header(version, min_reader, header_size, fmt.Feature(features), arch_value,
                  event_size, task_size, plugin_api, *strings)


def _parse_footer(payload: bytes | memoryview) -> Footer:
    rec = np.frombuffer(payload, dtype=fmt.FOOTER_DTYPE, count=1)[0]
    by_kind = {k: int(n) for k, n in enumerate(rec["events_by_kind"]) if n}
    return Footer(int(rec["events_total"]), int(rec["tasks_total"]),
                  int(rec["blocks_total"]), int(rec["write_errors"]), by_kind)


def _sort_by_seq(arr: npt.NDArray[np.void], block_starts: list[int]) -> npt.NDArray[np.void]:
    """Records of one vCPU's block are in sequence order (the plugin appends
    them as they happen); blocks of several vCPUs interleave. Sorted exactly
    when every block starts after the previous one ends."""
    if len(arr) < 2:
        return arr
    starts = np.array([s for s in block_starts if 0 < s < len(arr)], dtype=np.int64)
    seq = arr["seq"]
    if len(starts) and not bool(np.all(seq[starts] > seq[starts - 1])):
        return arr[np.argsort(seq, kind="stable")]
    return arr


@dataclass
class _Block:
    pos: int
    btype: int
    count: int
    payload_size: int
    crc: int


RECORD_SIZES = {int(fmt.BlockType.EVENTS): fmt.EVENT_DTYPE.itemsize,
                int(fmt.BlockType.TASKS): fmt.TASK_DTYPE.itemsize,
                int(fmt.BlockType.FOOTER): fmt.FOOTER_DTYPE.itemsize}


def read_trace(path: str | os.PathLike[str], verify_crc: bool = True) -> Trace:
    """Read a whole trace. Raises TraceError for a file that is not one.

    Block headers are scanned first, then each payload is read straight into
    its place in preallocated arrays: the file is never held twice in memory.
    """
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise TraceError(f"{p}: no such trace file") from None
    except OSError as e:
        raise TraceError(f"{p}: cannot open: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TraceError(f"{p}: empty file, not a trace: record it again")
        header = _parse_header(p, f.read(min(size, 1 << 16)))
        blocks, footer_block, problems, end = _scan_blocks(f, header.header_size, size)
        return _load(p, f, header, blocks, footer_block, problems, end, size, verify_crc)


def _scan_blocks(f: io.BufferedReader, start: int, size: int
                 ) -> tuple[list[_Block], _Block | None, list[str], int]:
    """Walk the block headers; stop at the first one that is not whole or sane."""
    blocks: list[_Block] = []
    problems: list[str] = []
    pos = start
    while pos < size:
        if size - pos < fmt.BLOCK_HEADER_SIZE:
            problems.append(f"a partial block header at byte {pos} ({size - pos} bytes)")
            break
        f.seek(pos)
        magic, btype, _vcpu, count, psize, crc, _ = struct.unpack(
            fmt.BLOCK_HEADER, f.read(fmt.BLOCK_HEADER_SIZE))
        if magic != fmt.BLOCK_MAGIC:
            problems.append(f"garbage instead of a block at byte {pos}")
            break
        payload_at = pos + fmt.BLOCK_HEADER_SIZE
        if payload_at + psize > size:
            problems.append(f"a partial block at byte {pos} ({size - payload_at} of "
                            f"{psize} payload bytes)")
            break
        record_size = RECORD_SIZES.get(btype)
        if record_size is None or count * record_size != psize or \
                (btype == fmt.BlockType.FOOTER and count != 1):
            problems.append(f"a block of unknown type {btype} or size at byte {pos}")
            break
        block = _Block(pos, btype, count, psize, crc)
        pos = payload_at + psize
        if btype == fmt.BlockType.FOOTER:
            if pos != size:
                problems.append(f"{size - pos} bytes after the footer")
            return blocks, block, problems, pos
        blocks.append(block)
    return blocks, None, problems, pos


def _load(p: Path, f: io.BufferedReader, header: Header, blocks: list[_Block],
          footer_block: _Block | None, problems: list[str], end: int, size: int,
          verify_crc: bool) -> Trace:
    n_events = sum(b.count for b in blocks if b.btype == fmt.BlockType.EVENTS)
    n_tasks = sum(b.count for b in blocks if b.btype == fmt.BlockType.TASKS)
    events = np.empty(n_events, dtype=fmt.EVENT_DTYPE)
    tasks = np.empty(n_tasks, dtype=fmt.TASK_DTYPE)
    dest = {int(fmt.BlockType.EVENTS): events.view(np.uint8).reshape(-1).data,
            int(fmt.BlockType.TASKS): tasks.view(np.uint8).reshape(-1).data}
    filled = {int(fmt.BlockType.EVENTS): 0, int(fmt.BlockType.TASKS): 0}
    starts: dict[int, list[int]] = {int(fmt.BlockType.EVENTS): [], int(fmt.BlockType.TASKS): []}
    read_blocks = 0
    stop: int | None = None
    for b in blocks:
        off = filled[b.btype]
        window = dest[b.btype][off : off + b.payload_size]
        f.seek(b.pos + fmt.BLOCK_HEADER_SIZE)
        if f.readinto(window) != b.payload_size or (verify_crc and zlib.crc32(window) != b.crc):
            problems.insert(0, f"a block with a bad checksum at byte {b.pos}")
            stop = b.pos
            break
        starts[b.btype].append(off // RECORD_SIZES[b.btype])
        filled[b.btype] = off + b.payload_size
        read_blocks += 1
    footer: Footer | None = None
    if stop is None and footer_block is not None:
        f.seek(footer_block.pos + fmt.BLOCK_HEADER_SIZE)
        payload = f.read(footer_block.payload_size)
        if verify_crc and zlib.crc32(payload) != footer_block.crc:
            problems.insert(0, f"a block with a bad checksum at byte {footer_block.pos}")
            stop = footer_block.pos
        else:
            footer = _parse_footer(payload)
            read_blocks += 1
    for view in dest.values():
        view.release()
    ev = _sort_by_seq(events[: filled[fmt.BlockType.EVENTS] // fmt.EVENT_DTYPE.itemsize],
                      starts[fmt.BlockType.EVENTS])
    tk = _sort_by_seq(tasks[: filled[fmt.BlockType.TASKS] // fmt.TASK_DTYPE.itemsize],
                      starts[fmt.BlockType.TASKS])
    if footer is None:
        problems.insert(0, "no footer: the recording did not end cleanly")
    else:
        if footer.events_total != len(ev):
            problems.append(f"the footer counts {footer.events_total} events but "
                            f"{len(ev)} were read: {footer.events_total - len(ev)} lost")
        if footer.write_errors:
            problems.append(f"the plugin failed {footer.write_errors} writes")
    unread = size - (stop if stop is not None else end)
    return Trace(p, header, ev, tk, footer, read_blocks, unread, problems)


def describe_incomplete(trace: Trace) -> str:
    """One line for a trace that is not complete: what is missing, what was read."""
    what = "; ".join(trace.problems)
    tail = f", {trace.bytes_unread} trailing bytes unread" if trace.bytes_unread else ""
    return (f"{trace.path}: incomplete trace: {what}; read {len(trace.events)} events and "
            f"{len(trace.tasks)} task records in {trace.blocks_read} whole blocks{tail}")
