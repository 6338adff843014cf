"""Decode a trace file into numpy arrays. Decoding only: no printing, no policy.

A trace whose writer died (QEMU crashed or was killed) has no footer and may
end in a partial block; everything up to the last whole block is returned, and
`Trace.problems` says what is missing.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt
from fputrace.trace.checksum import crc32c
from fputrace.trace.errors import FputraceError
from fputrace.trace.native import READER


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
    damaged: bool = False  # its checksum failed: the fields above are recovered or guessed
    # Where a damaged header's arch and features came from: "footer" (its
    # copy of them), "events" (what the events show), or "" (a guess).
    recovered_from: str = ""


@dataclass(frozen=True)
class Footer:
    events_total: int
    tasks_total: int
    blocks_total: int
    write_errors: int
    events_by_kind: dict[int, int]
    # How the run ended (version 5): an fmt.End, or its unknown number; None
    # for an older footer, which does not say.
    end: fmt.End | int | None = None
    arch: int = 0  # the file header's arch and features, again (version 5)
    features: int = 0


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
    damaged: bool = False  # bytes inside the file are wrong (checksums, garbage)
    truncated: bool = False  # the file ends early: the writer died
    # Records known lost: from the footer's counts when it is intact, else
    # the counts of damaged blocks whose headers survived (a lower bound).
    events_lost: int = 0
    tasks_lost: int = 0
    lost_exact: bool = True
    # Why the footer does not show a finished run (also the first problem).
    end_problem: str | None = None
    # Where records are missing, as inclusive seq ranges (shape (n, 2)): the
    # seqs of lost events, and the windows in which lost task records were
    # announced (gaps()). What a context did there is unknown.
    gaps: npt.NDArray[np.uint64] = field(
        default_factory=lambda: np.zeros((0, 2), dtype=np.uint64))

    @property
    def complete(self) -> bool:
        """Whole, undamaged, and its run finished (the footer says DONE)."""
        return self.footer is not None and not self.problems

    @property
    def intact(self) -> bool:
        """Every record read as written, whatever the run's end."""
        return self.footer is not None and \
            self.problems == ([self.end_problem] if self.end_problem else [])

    @property
    def finished(self) -> bool:
        """The footer says the run finished, whatever else is wrong."""
        return self.footer is not None and self.footer.end == fmt.End.DONE


def _crc_with_zeroed(data: bytes | memoryview, offset: int) -> int:
    """CRC-32C of data with its 4-byte checksum field at offset taken as zero."""
    return crc32c(bytes(data[:offset]) + b"\0\0\0\0" + bytes(data[offset + 4 :]))


def _guessed_header(header_size: int, damaged: bool) -> Header:
    """This reader's own format, for a header that is damaged or cut short."""
    return Header(fmt.FORMAT_VERSION, fmt.MIN_READER_VERSION, header_size, fmt.Feature(0),
                  fmt.Arch.X86_64, fmt.EVENT_DTYPE.itemsize, fmt.TASK_DTYPE.itemsize, 0,
                  "", "", "", damaged=damaged)


def _parse_header(path: Path, data: mmap.mmap, size: int) -> tuple[Header, bool]:
    """The file header, and whether the file ends inside it. A header whose
    checksum fails is returned as damaged, its fields the best guess, when
    the rest of the file holds blocks; a file with neither a header nor a
    block is refused."""
    fixed = bytes(data[: min(size, fmt.HEADER_FIXED_SIZE)])
    magic_ok = fixed[: len(fmt.MAGIC)] == fmt.MAGIC[: len(fixed)]
    first_block = _find_block(data, 0, size, fmt.FORMAT_VERSION)
    if not magic_ok and first_block is None:
        raise TraceError(f"{path}: not an fputrace trace (bad magic): give a file written by "
                         "'fputrace record'")
    if len(fixed) < fmt.HEADER_FIXED_SIZE:
        if first_block is None:
            return _guessed_header(size, damaged=False), True
        return _guessed_header(first_block, damaged=True), False
    (_, version, min_reader, header_size, features, arch, event_size, task_size, _,
     plugin_api, header_crc) = fmt.FILE_HEADER_STRUCT.unpack_from(fixed, 0)
    if magic_ok and size < header_size <= 1 << 20 and first_block is None:
        return _guessed_header(size, damaged=False), True
    sane_size = fmt.HEADER_FIXED_SIZE <= header_size <= size
    crc_ok = magic_ok and sane_size and \
        _crc_with_zeroed(data[:header_size], fmt.HEADER_CRC_OFFSET) == header_crc
    # The checksum covers every header byte, the version too: a header that
    # claims a version from before checksums (3) is taken as one only with
    # the zero checksum such a writer left, else a flipped version bit would
    # turn a damaged header into a refused one.
    unchecked_old = magic_ok and 1 <= version < fmt.CHECKSUMS_SINCE and header_crc == 0
    damaged = not (crc_ok or unchecked_old)
    if not damaged:
        if min_reader > fmt.READER_VERSION or version < 1:
            raise TraceError(f"{path}: trace format version {version} (readable from reader "
                             f"version {min_reader}) is not supported: this fputrace reads "
                             f"format versions 1 to {fmt.READER_VERSION}; use a matching "
                             "fputrace")
        if not sane_size:
            raise TraceError(f"{path}: header size {header_size} does not fit the file "
                             f"({size} bytes): the file is corrupt")
        if event_size != fmt.event_dtype(version).itemsize or \
                task_size != fmt.TASK_DTYPE.itemsize:
            raise TraceError(f"{path}: record sizes {event_size}/{task_size} do not match "
                             f"format version {version}: the file is corrupt")
    strings = _header_strings(data, header_size) if sane_size else None
    if damaged:
        # Nothing in it can be trusted: decode the rest as this reader's format.
        first = _find_block(data, fmt.HEADER_FIXED_SIZE, size, fmt.FORMAT_VERSION)
        return _guessed_header(first if first is not None else size, damaged=True), False
    if strings is None:
        raise TraceError(f"{path}: header strings run past the header: the file is corrupt")
    try:
        arch_value = fmt.Arch(arch)
    except ValueError:
        raise TraceError(f"{path}: unknown architecture code {arch}: the file is corrupt "
                         "or from a newer fputrace") from None
    qemu, kernel, plugin_args = strings
    return Header(version, min_reader, header_size, fmt.Feature(features), arch_value,
                  event_size, task_size, plugin_api, qemu, kernel, plugin_args), False


def _header_strings(data: mmap.mmap, header_size: int) -> list[str] | None:
    strings: list[str] = []
    pos = fmt.HEADER_FIXED_SIZE
    for _ in range(3):
        if pos + 2 > header_size:
            return None
        (n,) = struct.unpack_from("<H", data, pos)
        pos += 2
        if pos + n > header_size:
            return None
        strings.append(bytes(data[pos : pos + n]).decode("utf-8", "replace"))
        pos += n
    return strings


def _parse_footer(payload: bytes | memoryview, version: int) -> Footer:
    dtype = fmt.footer_dtype(version)
    rec = np.frombuffer(payload, dtype=dtype, count=1)[0]
    by_kind = {k: int(n) for k, n in enumerate(rec["events_by_kind"]) if n}
    footer = Footer(int(rec["events_total"]), int(rec["tasks_total"]),
                    int(rec["blocks_total"]), int(rec["write_errors"]), by_kind)
    if version < fmt.END_SINCE:
        return footer
    end = int(rec["end"])
    return replace(footer, end=fmt.End(end) if end in fmt.End._value2member_map_ else end,
                   arch=int(rec["arch"]), features=int(rec["features"]))


def _end_problem(footer: Footer, version: int) -> str | None:
    """Why the footer does not show a finished run, or None."""
    if footer.end is None:
        return (f"the footer of format version {version} does not say how the run ended: "
                "its run is not known to have finished")
    if footer.end == fmt.End.DONE:
        return None
    if isinstance(footer.end, fmt.End):
        return f"the run did not finish: {fmt.END_DESCRIPTIONS[footer.end]}"
    return f"the run did not finish: its footer gives the unknown end {footer.end}"


def _recovered_header(header: Header, footer: Footer | None,
                      events: npt.NDArray[np.void]) -> Header:
    """A damaged header's arch and features, from the footer's copy of them
    (version 5) or else from what the events show; the identity strings
    are lost either way."""
    if footer is not None and footer.end is not None and \
            footer.arch in fmt.Arch._value2member_map_:
        return replace(header, arch=fmt.Arch(footer.arch),
                       features=fmt.Feature(footer.features), recovered_from="footer")
    if not len(events):
        return header
    kinds = events["kind"]
    flags = events["flags"]
    features = fmt.Feature.MEM_HASH | fmt.Feature.REGS_HASH
    shown = ((fmt.Feature.TASKS, bool(np.any(flags & np.uint32(fmt.Flag.TASK_VALID)))),
             (fmt.Feature.BOUNDARIES, bool(np.any((kinds == fmt.Kind.USER_ENTRY)
                                                  | (kinds == fmt.Kind.USER_RETURN)))),
             (fmt.Feature.PROBES, bool(np.any(kinds == fmt.Kind.PROBE))),
             (fmt.Feature.ICOUNT, bool(np.any(events["icount"] != 0))))
    for feature, present in shown:
        if present:
            features |= feature
    # Kinds 32..63 are arm64's, 1..12 (the XSAVE family, XSETBV, WRMSR) x86's.
    arm64 = bool(np.any(kinds >= 32))
    x86 = bool(np.any((kinds >= 1) & (kinds <= fmt.Kind.WRMSR)))
    if arm64 == x86:
        return replace(header, features=features, recovered_from="events")
    return replace(header, arch=fmt.Arch.AARCH64 if arm64 else fmt.Arch.X86_64,
                   features=features, recovered_from="events")


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
    vcpu: int


def _record_sizes(version: int) -> dict[int, int]:
    return {int(fmt.BlockType.EVENTS): fmt.event_dtype(version).itemsize,
            int(fmt.BlockType.TASKS): fmt.TASK_DTYPE.itemsize,
            int(fmt.BlockType.FOOTER): fmt.footer_dtype(version).itemsize}


RECORD_SIZES = {version: _record_sizes(version) for version in range(1, fmt.READER_VERSION + 1)}
RECORD_NAMES = {int(fmt.BlockType.EVENTS): "events", int(fmt.BlockType.TASKS): "task records",
                int(fmt.BlockType.FOOTER): "footer"}
_BLOCK_MAGIC_BYTES = struct.pack("<I", fmt.BLOCK_MAGIC)


def _block_at(data: mmap.mmap, pos: int, size: int, version: int) -> _Block | None:
    """The block header at pos when it is one: its magic, its own checksum
    (format 3 on) and a known type whose record count matches its size."""
    if size - pos < fmt.BLOCK_HEADER_SIZE:
        return None
    magic, btype, vcpu, count, psize, crc, header_crc = fmt.BLOCK_HEADER_STRUCT.unpack_from(
        data, pos)
    if magic != fmt.BLOCK_MAGIC:
        return None
    if version >= fmt.CHECKSUMS_SINCE and \
            crc32c(data[pos : pos + fmt.BLOCK_HEADER_CRC_COVERS]) != header_crc:
        return None
    record_size = RECORD_SIZES[min(version, fmt.READER_VERSION)].get(btype)
    if record_size is None or count * record_size != psize or \
            (btype == fmt.BlockType.FOOTER and count != 1):
        return None
    return _Block(pos, btype, count, psize, crc, vcpu)


def _find_block(data: mmap.mmap, start: int, size: int, version: int) -> int | None:
    """The first offset at or after start where a block header is."""
    pos = start
    while True:
        pos = data.find(_BLOCK_MAGIC_BYTES, pos, size)
        if pos < 0:
            return None
        if _block_at(data, pos, size, version) is not None:
            return pos
        pos += 1


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a whole trace. Raises TraceError for a file that is not one.

    The file is mapped; block headers are scanned in place, then each
    payload is copied into its place in preallocated arrays, its checksum
    verified on the way: the file is never held twice in memory. A damaged
    block costs that block only: the scan resynchronises on the next block
    header whose own checksum holds.
    """
    p = Path(path)
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise TraceError(f"{p}: no such trace file") from None
    except IsADirectoryError:
        raise TraceError(f"{p}: is a directory, not a trace file") from None
    except OSError as e:
        raise TraceError(f"{p}: cannot open: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TraceError(f"{p}: empty file, not a trace: record it again")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header, cut_in_header = _parse_header(p, data, size)
        if cut_in_header:
            scan = _Scan(truncation=[f"the file ends inside its header, at byte {size}"])
        else:
            scan = _scan_blocks(data, header, size)
        return _load(p, data, header, scan, size)
    finally:
        data.close()


@dataclass
class _Scan:
    blocks: list[_Block] = field(default_factory=list)
    footer: _Block | None = None
    damage: list[str] = field(default_factory=list)
    truncation: list[str] = field(default_factory=list)
    end: int = 0  # where whole blocks end
    damaged_to_end: bool = False  # the file ends in bytes that are not a block
    bad_regions: list[int] = field(default_factory=list)  # where bytes were not a block


def _scan_blocks(data: mmap.mmap, header: Header, size: int) -> _Scan:
    """Walk the block headers. Bytes that are not a block are damage, skipped
    up to the next block; a block the file ends inside of is truncation."""
    scan = _Scan()
    pos = header.header_size
    version = header.version
    while pos < size:
        block = _block_at(data, pos, size, version)
        if block is None:
            rest = bytes(data[pos : pos + 4])
            if size - pos < fmt.BLOCK_HEADER_SIZE and _BLOCK_MAGIC_BYTES.startswith(rest):
                scan.truncation.append(f"the file ends inside a block header at byte {pos}")
                break
            nxt = _find_block(data, pos + 1, size, version)
            stop = size if nxt is None else nxt
            scan.bad_regions.append(pos)
            scan.damage.append(f"bytes {pos}-{stop - 1} are not a block (a damaged block "
                               "header or garbage)")
            if nxt is None:
                scan.damaged_to_end = True
                break
            pos = nxt
            continue
        payload_at = pos + fmt.BLOCK_HEADER_SIZE
        if payload_at + block.payload_size > size:
            scan.truncation.append(f"the file ends inside a block at byte {pos} "
                                   f"({size - payload_at} of {block.payload_size} payload "
                                   "bytes)")
            break
        pos = payload_at + block.payload_size
        scan.end = pos
        if block.btype == fmt.BlockType.FOOTER:
            scan.footer = block
            if pos != size:
                scan.damage.append(f"{size - pos} bytes after the footer")
            break
        scan.blocks.append(block)
    return scan


def _copy_payloads(data: mmap.mmap, blocks: list[_Block], dest: npt.NDArray[np.void]
                   ) -> npt.NDArray[np.bool_]:
    """Copy the blocks' payloads one after another into dest, skipping those
    with a bad checksum; returns which were good (dest holds them packed)."""
    ok = np.zeros(len(blocks), dtype=np.uint8)
    if not blocks:
        return ok.astype(bool)
    raw = dest.view(np.uint8).reshape(-1)
    lib = READER.library()
    pointer = READER.pointer
    if lib is not None:
        offsets = np.array([b.pos + fmt.BLOCK_HEADER_SIZE for b in blocks], dtype=np.uint64)
        sizes = np.array([b.payload_size for b in blocks], dtype=np.uint32)
        crcs = np.array([b.crc for b in blocks], dtype=np.uint32)
        # A read-only view: its address for C; dropped before the mapping closes.
        source = np.frombuffer(data, dtype=np.uint8)
        try:
            lib.ftr_read_copy_blocks(pointer("uint8_t *", source), len(data),
                                     pointer("uint64_t *", offsets), pointer("uint32_t *", sizes),
                                pointer("uint32_t *", crcs), len(blocks),
                                pointer("uint8_t *", raw), pointer("uint8_t *", ok))
        finally:
            del source
        return ok.astype(bool)
    out = 0
    for i, b in enumerate(blocks):
        start = b.pos + fmt.BLOCK_HEADER_SIZE
        payload = data[start : start + b.payload_size]
        if crc32c(payload) != b.crc:
            continue
        ok[i] = 1
        raw[out : out + b.payload_size] = np.frombuffer(payload, dtype=np.uint8)
        out += b.payload_size
    return ok.astype(bool)


def _load(p: Path, data: mmap.mmap, header: Header, scan: _Scan, size: int) -> Trace:
    damage = list(scan.damage)
    kept: dict[int, list[_Block]] = {}
    arrays: dict[int, npt.NDArray[np.void]] = {}
    block_seqs: dict[int, tuple[int, int]] = {}  # event block's position -> its seq range
    lost_in_bad_blocks = {int(fmt.BlockType.EVENTS): 0, int(fmt.BlockType.TASKS): 0}
    for btype, dtype in ((int(fmt.BlockType.EVENTS), fmt.event_dtype(header.version)),
                         (int(fmt.BlockType.TASKS), fmt.TASK_DTYPE)):
        blocks = [b for b in scan.blocks if b.btype == btype]
        dest = np.empty(sum(b.count for b in blocks), dtype=dtype)
        ok = _copy_payloads(data, blocks, dest)
        for b, good in zip(blocks, ok, strict=True):
            if not good:
                damage.append(f"the block at byte {b.pos} ({b.count} {RECORD_NAMES[btype]}) "
                              "failed its checksum")
                lost_in_bad_blocks[btype] += b.count
        kept[btype] = [b for b, good in zip(blocks, ok, strict=True) if good]
        counts = [b.count for b in kept[btype]]
        starts = list(np.cumsum([0, *counts])[:-1])
        if btype == fmt.BlockType.EVENTS:
            block_seqs = {b.pos: (int(dest["seq"][s]), int(dest["seq"][s + b.count - 1]))
                          for b, s in zip(kept[btype], starts, strict=True) if b.count}
        arrays[btype] = _sort_by_seq(dest[: sum(counts)], starts)
    ev, tk = arrays[int(fmt.BlockType.EVENTS)], arrays[int(fmt.BlockType.TASKS)]
    if ev.dtype != fmt.EVENT_DTYPE:
        # An older format: the same fields, icount 0 (no Feature.ICOUNT says so).
        widened = np.zeros(len(ev), dtype=fmt.EVENT_DTYPE)
        for name in ev.dtype.names or ():
            widened[name] = ev[name]
        ev = widened
    footer: Footer | None = None
    if scan.footer is not None:
        start = scan.footer.pos + fmt.BLOCK_HEADER_SIZE
        payload = data[start : start + scan.footer.payload_size]
        if crc32c(payload) != scan.footer.crc:
            damage.append(f"the footer at byte {scan.footer.pos} failed its checksum")
        else:
            footer = _parse_footer(payload, header.version)
    if header.damaged:
        header = _recovered_header(header, footer, ev)
        source = {"footer": "the footer's copy", "events": "what the events show",
                  "": "guesses"}[header.recovered_from]
        damage.insert(0, "the file header failed its checksum: its identity strings are "
                         f"lost, its arch and features are {source}")
    problems = [f"damaged: {d}" for d in damage]
    problems += [f"truncated: {t}" for t in scan.truncation]
    # A footer may have been among damaged bytes at the end: not a truncation.
    cut_short = bool(scan.truncation) or (scan.footer is None and not scan.damaged_to_end)
    if scan.footer is None:
        problems.append("no intact footer: the damaged bytes at the end may have held it"
                        if scan.damaged_to_end else
                        "no footer: the recording did not end cleanly")
    events_lost = lost_in_bad_blocks[int(fmt.BlockType.EVENTS)]
    tasks_lost = lost_in_bad_blocks[int(fmt.BlockType.TASKS)]
    lost_exact = not scan.damage and not scan.truncation and scan.footer is not None
    if footer is not None:
        events_lost = max(footer.events_total - len(ev), 0)
        tasks_lost = max(footer.tasks_total - len(tk), 0)
        lost_exact = True
        if footer.events_total < len(ev) or footer.tasks_total < len(tk):
            # Two writers into one file (fputrace.record.output locks it against that).
            lost_exact = False
            damage.append(f"the footer counts {footer.events_total} events and "
                          f"{footer.tasks_total} task records, but {len(ev)} and {len(tk)} "
                          "were read: the file holds records that are not its run's")
            problems.insert(0, f"damaged: {damage[-1]}")
        elif footer.events_total != len(ev) or footer.tasks_total != len(tk):
            problems.append(f"the footer counts {footer.events_total} events and "
                            f"{footer.tasks_total} task records; {len(ev)} and {len(tk)} "
                            f"were read: {events_lost} events and {tasks_lost} task "
                            "records lost")
        if footer.write_errors:
            problems.append(f"the plugin failed {footer.write_errors} writes")
        end_problem = _end_problem(footer, header.version)
        if end_problem is not None:
            problems.insert(0, end_problem)
    else:
        end_problem = None
    good_tasks = {b.pos for b in kept[int(fmt.BlockType.TASKS)]}
    lost_tasks: list[tuple[int, int | None]] = [
        (b.pos, b.vcpu) for b in scan.blocks
        if b.btype == fmt.BlockType.TASKS and b.pos not in good_tasks]
    gaps = _gaps(ev["seq"], scan.blocks, block_seqs,
                 [*lost_tasks, *((pos, None) for pos in scan.bad_regions)])
    read_blocks = len(kept[int(fmt.BlockType.EVENTS)]) + len(kept[int(fmt.BlockType.TASKS)]) \
        + (1 if footer is not None else 0)
    unread = size - scan.end if cut_short else 0
    return Trace(p, header, ev, tk, footer, read_blocks, unread, problems,
                 damaged=bool(damage), truncated=cut_short,
                 events_lost=events_lost, tasks_lost=tasks_lost, lost_exact=lost_exact,
                 end_problem=end_problem, gaps=gaps)


def _gaps(seqs: npt.NDArray[np.uint64], blocks: list[_Block],
          block_seqs: dict[int, tuple[int, int]],
          lost: list[tuple[int, int | None]]) -> npt.NDArray[np.uint64]:
    """Where records are missing, as inclusive seq ranges.

    Lost events show as missing seqs (the plugin numbers every event, all
    vCPUs together). A lost task block is placed by the plugin's order of
    writing: a vCPU's task block goes out just before its event block of
    the same flush (plugin/trace.c, vcpu_commit_event()), so its records
    were announced after that vCPU's previous event block and by the end of
    its next one. Bytes that were not a block may have been any vCPU's: the
    window then spans every vCPU's previous and next event block."""
    out: list[tuple[int, int]] = []
    if len(seqs):
        s = seqs.astype(np.int64)
        at = np.flatnonzero(np.diff(s) > 1)
        out += [(int(s[i]) + 1, int(s[i + 1]) - 1) for i in at.tolist()]
    events = [b for b in blocks if b.btype == fmt.BlockType.EVENTS and b.pos in block_seqs]
    last_seq = int(seqs.max()) if len(seqs) else 0
    for pos, vcpu in lost:
        # Per vCPU (the lost block's own, or any): the last seq of its latest
        # event block before the loss, and of its first one after.
        before: dict[int, int] = {}
        after: dict[int, int] = {}
        for b in events:
            if vcpu is not None and b.vcpu != vcpu:
                continue
            if b.pos < pos:
                before[b.vcpu] = block_seqs[b.pos][1]
            elif b.vcpu not in after:
                after[b.vcpu] = block_seqs[b.pos][1]
        lo = min(before.values()) + 1 if before else 0
        hi = max(after.values()) if after else last_seq
        out.append((lo, max(lo, hi)))
    return np.array(sorted(out), dtype=np.uint64).reshape(-1, 2)


def describe_incomplete(trace: Trace) -> str:
    """One line for a trace that is not complete: its first problem, how
    many more it has, and what was read."""
    state = ("damaged and truncated" if trace.damaged and trace.truncated else
             "damaged" if trace.damaged else "incomplete")
    what = trace.problems[0] if trace.problems else "no footer"
    if trace.damaged:
        what = what.removeprefix("damaged: ")  # the state says it already
    if len(trace.problems) > 1:
        what += f" (and {len(trace.problems) - 1} more: fputrace dump --header)"
    if trace.events_lost or trace.tasks_lost:
        bound = "" if trace.lost_exact else "at least "
        lost = f", {bound}{trace.events_lost} events and {trace.tasks_lost} task records lost"
    elif not trace.lost_exact:
        lost = ", an unknown number lost"
    else:
        lost = ""
    tail = f", {trace.bytes_unread} trailing bytes unread" if trace.bytes_unread else ""
    return (f"{trace.path}: {state} trace: {what}; read {len(trace.events)} events and "
            f"{len(trace.tasks)} task records{tail}{lost}")
