"""Decode a trace file into numpy arrays. Decoding only: no printing, no policy.

A trace whose writer died (QEMU crashed or was killed) has no footer and may
end in a partial block; everything up to the last whole block is returned, and
`Trace.problems` says what is missing.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fputrace.errors import FputraceError
from fputrace.native import library
from fputrace.trace import format as fmt
from fputrace.trace.checksum import crc32c


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


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a whole trace. Raises TraceError for a file that is not one.

    The file is mapped; block headers are scanned in place, then each
    payload is copied into its place in preallocated arrays, its checksum
    verified on the way: the file is never held twice in memory.
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
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = _parse_header(p, data[: min(size, 1 << 16)])
        blocks, footer_block, problems, end = _scan_blocks(data, header.header_size, size)
        return _load(p, data, header, blocks, footer_block, problems, end, size)
    finally:
        data.close()


def _scan_blocks(data: mmap.mmap, start: int, size: int
                 ) -> tuple[list[_Block], _Block | None, list[str], int]:
    """Walk the block headers; stop at the first one that is not whole or sane."""
    blocks: list[_Block] = []
    problems: list[str] = []
    pos = start
    while pos < size:
        if size - pos < fmt.BLOCK_HEADER_SIZE:
            problems.append(f"a partial block header at byte {pos} ({size - pos} bytes)")
            break
        magic, btype, _vcpu, count, psize, crc, _ = struct.unpack_from(fmt.BLOCK_HEADER,
                                                                       data, pos)
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


def _copy_payloads(data: mmap.mmap, blocks: list[_Block], dest: npt.NDArray[np.void]) -> int:
    """Copy the blocks' payloads one after another into dest; returns how many
    were copied before the first with a bad checksum."""
    if not blocks:
        return 0
    raw = dest.view(np.uint8).reshape(-1)
    lib = library()
    if lib is not None:
        offsets = np.array([b.pos + fmt.BLOCK_HEADER_SIZE for b in blocks], dtype=np.uint64)
        sizes = np.array([b.payload_size for b in blocks], dtype=np.uint32)
        crcs = np.array([b.crc for b in blocks], dtype=np.uint32)
        # A read-only view: its address for C; dropped before the mapping closes.
        source = np.frombuffer(data, dtype=np.uint8)
        try:
            return int(lib.fpa_copy_blocks(source.ctypes.data, len(data), offsets.ctypes.data,
                              sizes.ctypes.data, crcs.ctypes.data, len(blocks),
                              raw.ctypes.data))
        finally:
            del source
    out = 0
    for i, b in enumerate(blocks):
        start = b.pos + fmt.BLOCK_HEADER_SIZE
        payload = data[start : start + b.payload_size]
        if crc32c(payload) != b.crc:
            return i
        raw[out : out + b.payload_size] = np.frombuffer(payload, dtype=np.uint8)
        out += b.payload_size
    return len(blocks)


def _load(p: Path, data: mmap.mmap, header: Header, blocks: list[_Block],
          footer_block: _Block | None, problems: list[str], end: int, size: int) -> Trace:
    by_type = {t: [b for b in blocks if b.btype == t]
               for t in (fmt.BlockType.EVENTS, fmt.BlockType.TASKS)}
    events = np.empty(sum(b.count for b in by_type[fmt.BlockType.EVENTS]), dtype=fmt.EVENT_DTYPE)
    tasks = np.empty(sum(b.count for b in by_type[fmt.BlockType.TASKS]), dtype=fmt.TASK_DTYPE)
    good_events = _copy_payloads(data, by_type[fmt.BlockType.EVENTS], events)
    good_tasks = _copy_payloads(data, by_type[fmt.BlockType.TASKS], tasks)
    # The first bad block, of either type, ends what is read.
    bad = [bl[n].pos for bl, n in ((by_type[fmt.BlockType.EVENTS], good_events),
                                   (by_type[fmt.BlockType.TASKS], good_tasks)) if n < len(bl)]
    stop = min(bad) if bad else None
    footer: Footer | None = None
    if stop is None and footer_block is not None:
        start = footer_block.pos + fmt.BLOCK_HEADER_SIZE
        payload = data[start : start + footer_block.payload_size]
        if crc32c(payload) != footer_block.crc:
            stop = footer_block.pos
        else:
            footer = _parse_footer(payload)
    if stop is not None:
        problems.insert(0, f"a block with a bad checksum at byte {stop}")

    def before_stop(bl: list[_Block]) -> list[_Block]:
        return [b for b in bl if stop is None or b.pos < stop]

    kept_events = before_stop(by_type[fmt.BlockType.EVENTS])
    kept_tasks = before_stop(by_type[fmt.BlockType.TASKS])
    ev = _sort_by_seq(events[: sum(b.count for b in kept_events)],
                      list(np.cumsum([0] + [b.count for b in kept_events])[:-1]))
    tk = _sort_by_seq(tasks[: sum(b.count for b in kept_tasks)],
                      list(np.cumsum([0] + [b.count for b in kept_tasks])[:-1]))
    read_blocks = len(kept_events) + len(kept_tasks) + (1 if footer is not None else 0)
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
