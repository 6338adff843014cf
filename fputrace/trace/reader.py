"""Decode a trace file into numpy arrays. Decoding only: no printing, no policy.

A trace whose writer died (QEMU crashed or was killed) has no footer and may
end in a partial block; everything up to the last whole block is returned, and
`Trace.problems` says what is missing.
"""

from __future__ import annotations

import mmap
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


def _parse_header(path: Path, data: bytes | mmap.mmap) -> Header:
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


def _concat_sorted(parts: list[npt.NDArray[np.void]], dtype: np.dtype[np.void]
                   ) -> npt.NDArray[np.void]:
    if not parts:
        return np.empty(0, dtype=dtype)
    arr = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
    seq = arr["seq"]
    # Blocks from several vCPUs interleave; one vCPU's are already in order.
    if len(seq) > 1 and not bool(np.all(seq[1:] > seq[:-1])):
        arr = arr[np.argsort(seq, kind="stable")]
    return arr


def read_trace(path: str | os.PathLike[str], verify_crc: bool = True) -> Trace:
    """Read a whole trace. Raises TraceError for a file that is not one."""
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below, mmap outlives the with
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
        return _decode(p, data, verify_crc)
    finally:
        data.close()


def _decode(p: Path, data: mmap.mmap, verify_crc: bool) -> Trace:
    header = _parse_header(p, data)
    view = memoryview(data)
    events: list[npt.NDArray[np.void]] = []
    tasks: list[npt.NDArray[np.void]] = []
    footer: Footer | None = None
    problems: list[str] = []
    pos = header.header_size
    blocks = 0
    size = len(data)
    try:
        while pos < size:
            if size - pos < fmt.BLOCK_HEADER_SIZE:
                problems.append(f"a partial block header at byte {pos} ({size - pos} bytes)")
                break
            magic, btype, _vcpu, count, psize, crc, _ = struct.unpack_from(
                fmt.BLOCK_HEADER, data, pos)
            if magic != fmt.BLOCK_MAGIC:
                problems.append(f"garbage instead of a block at byte {pos}")
                break
            start = pos + fmt.BLOCK_HEADER_SIZE
            if start + psize > size:
                problems.append(f"a partial block at byte {pos} ({size - start} of {psize} "
                                "payload bytes)")
                break
            payload = view[start : start + psize]
            if verify_crc and zlib.crc32(payload) != crc:
                problems.append(f"a block with a bad checksum at byte {pos}")
                break
            record_size = {fmt.BlockType.EVENTS: fmt.EVENT_DTYPE.itemsize,
                           fmt.BlockType.TASKS: fmt.TASK_DTYPE.itemsize,
                           fmt.BlockType.FOOTER: fmt.FOOTER_DTYPE.itemsize}.get(btype)
            if record_size is None or count * record_size != psize:
                problems.append(f"a block of unknown type {btype} or size at byte {pos}")
                break
            if btype == fmt.BlockType.EVENTS:
                events.append(np.frombuffer(payload, dtype=fmt.EVENT_DTYPE))
            elif btype == fmt.BlockType.TASKS:
                tasks.append(np.frombuffer(payload, dtype=fmt.TASK_DTYPE))
            else:
                footer = _parse_footer(payload)
                pos = start + psize
                blocks += 1
                if pos != size:
                    problems.append(f"{size - pos} bytes after the footer")
                break
            pos = start + psize
            blocks += 1
        ev = _concat_sorted(events, fmt.EVENT_DTYPE)
        tk = _concat_sorted(tasks, fmt.TASK_DTYPE)
    finally:
        del events, tasks
        view.release()
    if footer is None:
        problems.insert(0, "no footer: the recording did not end cleanly")
    else:
        if footer.events_total != len(ev):
            problems.append(f"the footer counts {footer.events_total} events but "
                            f"{len(ev)} were read: {footer.events_total - len(ev)} lost")
        if footer.write_errors:
            problems.append(f"the plugin failed {footer.write_errors} writes")
    return Trace(p, header, ev, tk, footer, blocks, size - pos, problems)


def describe_incomplete(trace: Trace) -> str:
    """One line for a trace that is not complete: what is missing, what was read."""
    what = "; ".join(trace.problems)
    tail = f", {trace.bytes_unread} trailing bytes unread" if trace.bytes_unread else ""
    return (f"{trace.path}: incomplete trace: {what}; read {len(trace.events)} events and "
            f"{len(trace.tasks)} task records in {trace.blocks_read} whole blocks{tail}")
