"""Writes traces in the real binary format (docs/trace-format.md): the one
trace writer in Python, for synthetic traces (the tests' builder,
tests/tracebuilder.py, and the benchmarks, bench/scale and bench/view).

The records, numbers and flags are fputrace.trace.format's, which
tests/test_format_abi.py checks entry for entry against plugin/ftr-format.h,
the plugin's own definition. Blocks are laid out the way the plugin writes
them: per-vCPU buffers flushed when full (task block first), the rest at
exit, then the footer. Every function takes the CRC-32C it checksums with:
the reader's by default, so that the tests can pass one of their own as an
oracle of the reader's.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fputrace.trace import format as fmt
from fputrace.trace.checksum import crc32c
from fputrace.trace.run import sidecar

Crc = Callable[[bytes], int]

@dataclass
class Ev:
    seq: int
    kind: int
    vcpu: int = 0
    pc: int = 0
    task: int = 0
    addr: int = 0
    value: int = 0
    xcr0: int = 0x7
    mem_hash: int = 0
    mem_legacy_hash: int = 0
    mem_ext_hash: int = 0
    regs_hash: int = 0
    regs_after_hash: int = 0
    xstate_bv: int = 0
    aux: int = 0
    index: int = 0
    mem_bytes: int = 0
    mem_features: int = 0
    flags: int = 0
    simd_pc: int = 0
    icount: int = 0
    guest_task: int = 0

    def pack(self, version: int = fmt.FORMAT_VERSION) -> bytes:
        fields = (self.seq, self.pc, self.task, self.addr, self.value, self.xcr0,
                  self.mem_hash, self.mem_legacy_hash, self.mem_ext_hash,
                  self.regs_hash, self.regs_after_hash, self.xstate_bv, self.aux,
                  self.index, self.mem_bytes, self.mem_features, self.flags,
                  self.vcpu, self.kind, 0, self.simd_pc)
        if version < fmt.ICOUNT_SINCE:
            return fmt.EVENT_STRUCT_V3.pack(*fields)
        return fmt.EVENT_STRUCT.pack(*fields, self.icount, self.guest_task)


@dataclass
class Task:
    seq: int
    task: int
    pid: int
    tgid: int
    comm: str
    vcpu: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        return fmt.TASK_STRUCT.pack(self.seq, self.task, self.pid, self.tgid,
                                self.comm.encode()[:15], self.vcpu, self.flags, 0)


V = fmt.FORMAT_VERSION


def block_bytes(btype: int, vcpu: int, count: int, payload: bytes, version: int = V,
                crc: Crc = crc32c) -> bytes:
    """A block: its header (from version 3 with its own checksum over its
    first 20 bytes) and payload."""
    head = fmt.BLOCK_HEADER_STRUCT.pack(fmt.BLOCK_MAGIC, btype, vcpu, count, len(payload),
                                        crc(payload), 0)[:fmt.BLOCK_HEADER_CRC_COVERS]
    return head + struct.pack("<I", crc(head) if version >= 3 else 0) + payload


def footer_block(events_total: int, tasks_total: int, blocks_total: int,
                 events_by_kind: Sequence[int], version: int = V, crc: Crc = crc32c,
                 end: int = fmt.End.DONE, arch: int = 1, features: int = 7) -> bytes:
    """The footer block: totals, events per kind (KIND_MAX counters) and,
    from version 5, how the run ended and the header's arch and features."""
    fields = (events_total, tasks_total, blocks_total, 0, *events_by_kind,
              *[0] * (fmt.KIND_MAX - len(events_by_kind)))
    payload = fmt.FOOTER_STRUCT.pack(*fields, end, arch, 0, features) \
        if version >= fmt.END_SINCE else fmt.FOOTER_STRUCT_V4.pack(*fields)
    return block_bytes(fmt.BlockType.FOOTER, 0, 1, payload, version, crc)


def block(btype: int, vcpu: int, records: list[bytes], version: int = V,
          crc: Crc = crc32c) -> bytes:
    return block_bytes(btype, vcpu, len(records), b"".join(records), version, crc)


def header(version: int = V, min_reader: int | None = None, arch: int = 1, features: int = 7,
           qemu: str = "10.0.2", kernel: str = "synthetic", args: str = "out=test.ftr",
           magic: bytes = b"FPUTRACE", crc: Crc = crc32c) -> bytes:
    strings = b"".join(struct.pack("<H", len(s.encode())) + s.encode()
                       for s in (qemu, kernel, args))
    size = fmt.HEADER_FIXED_SIZE + len(strings)
    size += -size % 8
    if min_reader is None:
        min_reader = version if version >= fmt.ICOUNT_SINCE else min(version, 2)
    fixed = fmt.FILE_HEADER_STRUCT.pack(magic, version, min_reader, size, features, arch,
                                        fmt.event_dtype(version).itemsize,
                                        fmt.TASK_DTYPE.itemsize, 0, 4, 0)
    whole = (fixed + strings).ljust(size, b"\0")
    if version >= 3:
        # The checksum of the whole header, taken while its own field is zero.
        at = fmt.HEADER_CRC_OFFSET
        whole = whole[:at] + struct.pack("<I", crc(whole)) + whole[at + 4:]
    return whole


# The sidecars write() leaves by default: a kernel's text bounds, and a
# recording that finished with no workload of its own.
KALLSYMS = ("ffffffff81000000 T _stext\n"
            "ffffffff81000100 T synthetic_kernel_function\n"
            "ffffffff82000000 T _etext\n")
META: dict[str, object] = {"status": "ok", "partial": False, "workloads": [], "runs": []}


def write_sidecars(path: Path, symbols: str | None = KALLSYMS,
                   meta: dict[str, object] | None = META) -> Path:
    """The sidecars of the trace at path (None: leave that one out)."""
    if symbols is not None:
        sidecar(path, "kallsyms.gz").write_bytes(gzip.compress(symbols.encode()))
    if meta is not None:
        sidecar(path, "meta.json").write_text(json.dumps(meta))
    return path


class TraceBuilder:
    """Collect events and task announcements; seq numbers are handed out in order."""

    def __init__(self, crc: Crc = crc32c, **header_args: object) -> None:
        self.crc = crc
        self.header_args = header_args
        self.events: list[Ev] = []
        self.tasks: list[Task] = []
        self.next_seq = 0

    def event(self, kind: int, **fields: int) -> Ev:
        ev = Ev(seq=self.next_seq, kind=kind, **fields)
        self.next_seq += 1
        self.events.append(ev)
        return ev

    def task(self, task: int, pid: int, comm: str, vcpu: int = 0, tgid: int | None = None,
             flags: int = 0) -> Task:
        """Announce a task at the seq of the next event (as the plugin does)."""
        t = Task(self.next_seq, task, pid, pid if tgid is None else tgid, comm, vcpu, flags)
        self.tasks.append(t)
        return t

    def build(self, block_events: int = 512, footer: bool = True,
              footer_events_total: int | None = None, end: int = fmt.End.DONE) -> bytes:
        out = bytearray(header(**self.header_args, crc=self.crc))  # type: ignore[arg-type]
        version = int(self.header_args.get("version", V))  # type: ignore[call-overload]
        ev_buf: dict[int, list[Ev]] = {}
        task_buf: dict[int, list[Task]] = {}
        blocks = 0
        pending_tasks = sorted(self.tasks, key=lambda t: t.seq)

        def flush(vcpu: int) -> None:
            nonlocal blocks
            if task_buf.get(vcpu):
                out.extend(block(fmt.BlockType.TASKS, vcpu, [t.pack() for t in task_buf[vcpu]],
                                 version, self.crc))
                task_buf[vcpu] = []
                blocks += 1
            if ev_buf.get(vcpu):
                out.extend(block(fmt.BlockType.EVENTS, vcpu,
                                 [e.pack(version) for e in ev_buf[vcpu]], version, self.crc))
                ev_buf[vcpu] = []
                blocks += 1

        for ev in sorted(self.events, key=lambda e: e.seq):
            while pending_tasks and pending_tasks[0].seq <= ev.seq:
                t = pending_tasks.pop(0)
                task_buf.setdefault(t.vcpu, []).append(t)
            ev_buf.setdefault(ev.vcpu, []).append(ev)
            if len(ev_buf[ev.vcpu]) == block_events:
                flush(ev.vcpu)
        for t in pending_tasks:
            task_buf.setdefault(t.vcpu, []).append(t)
        for vcpu in sorted(set(ev_buf) | set(task_buf)):
            flush(vcpu)
        if footer:
            by_kind = [0] * fmt.KIND_MAX
            for e in self.events:
                by_kind[e.kind] += 1
            total = len(self.events) if footer_events_total is None else footer_events_total
            out.extend(footer_block(
                total, len(self.tasks), blocks, by_kind, version, self.crc, end=end,
                arch=int(self.header_args.get("arch", 1)),  # type: ignore[call-overload]
                features=int(self.header_args.get("features", 7))))  # type: ignore[call-overload]
        return bytes(out)

    def write(self, path: Path, symbols: str | None = KALLSYMS,
              meta: dict[str, object] | None = META, **kw: object) -> Path:
        """The trace and, as fputrace record leaves them, its sidecars: the
        kernel's symbols (run.kallsyms.gz) and the recording's metadata
        (run.meta.json); None leaves one out."""
        path.write_bytes(self.build(**kw))  # type: ignore[arg-type]
        return write_sidecars(path, symbols, meta)
