"""The reader against synthetic traces written by tests/tracebuilder.py.

Each test states the trace it builds, what it asks, and the answer worked
out by hand."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tracebuilder import (
    F_FORM64,
    F_L2,
    F_MEM,
    F_TASK,
    USER_ENTRY,
    USER_RETURN,
    VM_ENTRY,
    VM_EXIT,
    XRSTOR,
    XSAVEOPT,
    XSETBV,
    K,
    TraceBuilder,
    block,
    crc32c,
    header,
)

from fputrace.trace import format as fmt
from fputrace.trace.reader import TraceError, describe_incomplete, read_trace


def with_version(head: bytes, version: int) -> bytes:
    """A file header with another version number and its checksum made
    good again: what a writer of that version would have written."""
    at = fmt.field_offset(fmt.FILE_HEADER_DTYPE, "version")
    crc_at = fmt.HEADER_CRC_OFFSET
    out = head[:at] + struct.pack("<H", version) + head[at + 2:]
    zeroed = out[:crc_at] + b"\0" * 4 + out[crc_at + 4:]
    return zeroed[:crc_at] + struct.pack("<I", crc32c(zeroed)) + zeroed[crc_at + 4:]


def test_round_trip_fields(tmp_path: Path) -> None:
    # One xsetbv, one xsaveopt64 with a content hash, one announced task.
    b = TraceBuilder(kernel="6.1.0-test", qemu="10.0.2", args="out=x,current=0x1fb80")
    b.task(0xFFFF888000001000, 42, "worker")
    b.event(XSETBV, index=0, value=0x207, pc=0xFFFFFFFF81000010)
    b.event(XSAVEOPT, addr=0xFFFF888000002000, value=0x207, mem_hash=0x1234, mem_bytes=576,
            mem_features=0x7, flags=F_FORM64 | F_MEM, task=0xFFFF888000001000)
    t = read_trace(b.write(tmp_path / "t.ftr"))

    assert t.complete and t.problems == []
    assert (t.header.version, t.header.kernel, t.header.qemu) == \
        (fmt.FORMAT_VERSION, "6.1.0-test", "10.0.2")
    assert t.header.plugin_args == "out=x,current=0x1fb80"
    assert t.header.arch is fmt.Arch.X86_64
    assert list(t.events["seq"]) == [0, 1]
    assert list(t.events["kind"]) == [XSETBV, XSAVEOPT]
    assert int(t.events["value"][0]) == 0x207 and int(t.events["pc"][0]) == 0xFFFFFFFF81000010
    assert int(t.events["mem_hash"][1]) == 0x1234 and int(t.events["mem_bytes"][1]) == 576
    assert int(t.events["flags"][1]) == F_FORM64 | F_MEM
    assert bytes(t.tasks["comm"][0]).rstrip(b"\0") == b"worker" and int(t.tasks["pid"][0]) == 42
    assert t.footer is not None and t.footer.events_total == 2
    assert t.footer.events_by_kind == {XSETBV: 1, XSAVEOPT: 1}


def test_blocks_of_two_vcpus_come_back_in_sequence_order(tmp_path: Path) -> None:
    # vCPU 0 gets even seqs, vCPU 1 odd ones; blocks of 3 events interleave in
    # the file as they fill: [0,2,4] [1,3,5] [6,8] [7,9]. Read: 0..9 in order.
    b = TraceBuilder()
    for i in range(10):
        b.event(VM_ENTRY if i % 2 == 0 else VM_EXIT, vcpu=i % 2)
    t = read_trace(b.write(tmp_path / "t.ftr", block_events=3))
    assert list(t.events["seq"]) == list(range(10))
    assert list(t.events["vcpu"]) == [0, 1] * 5
    assert t.blocks_read == 5  # 4 event blocks + footer


def test_truncated_trace_reads_up_to_last_whole_block(tmp_path: Path) -> None:
    # 10 events in blocks of 4: [0-3] [4-7] [8-9], then the footer. Cutting the
    # file in the middle of the second block leaves exactly one whole block.
    b = TraceBuilder()
    for _ in range(10):
        b.event(XRSTOR)
    data = b.build(block_events=4)
    hdr = len(header())
    one_block = 24 + 4 * 144
    cut = tmp_path / "cut.ftr"
    cut.write_bytes(data[: hdr + one_block + 100])
    t = read_trace(cut)
    assert not t.complete and t.footer is None
    assert t.truncated and not t.damaged
    assert list(t.events["seq"]) == [0, 1, 2, 3]
    assert t.problems == [
        f"truncated: the file ends inside a block at byte {hdr + one_block} "
        "(76 of 576 payload bytes)",
        "no footer: the recording did not end cleanly"]
    line = describe_incomplete(t)
    assert line.startswith(f"{cut}: incomplete trace: truncated")
    assert "read 4 events" in line and "100 trailing bytes unread" in line
    assert "an unknown number lost" in line
    assert "\n" not in line


def test_file_cut_right_after_a_block_has_no_partial_block(tmp_path: Path) -> None:
    # As above but cut exactly after two whole blocks: 8 events, only the footer missing.
    b = TraceBuilder()
    for _ in range(10):
        b.event(XRSTOR)
    data = b.build(block_events=4)
    cut = tmp_path / "cut.ftr"
    cut.write_bytes(data[: len(header()) + 2 * (24 + 4 * 144)])
    t = read_trace(cut)
    assert len(t.events) == 8 and t.problems == ["no footer: the recording did not end cleanly"]
    assert t.truncated and not t.damaged


def test_footer_count_disagreeing_with_records_is_reported(tmp_path: Path) -> None:
    # The footer claims 5 events, 3 are in the file: 2 lost.
    b = TraceBuilder()
    for _ in range(3):
        b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr", footer_events_total=5))
    assert not t.complete
    assert t.problems == ["the footer counts 5 events and 0 task records; 3 and 0 were read: "
                          "2 events and 0 task records lost"]
    assert (t.events_lost, t.lost_exact) == (2, True)


def test_corrupted_block_payload_costs_that_block_only(tmp_path: Path) -> None:
    # Flip one byte inside the second of three blocks' payload: its checksum
    # fails, the blocks before and after are read, and the intact footer
    # says exactly how much is missing.
    b = TraceBuilder()
    for _ in range(12):
        b.event(XRSTOR)
    data = bytearray(b.build(block_events=4))
    second = len(header()) + (24 + 4 * 144)
    data[second + 24 + 10] ^= 0xFF
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert list(t.events["seq"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert t.damaged and not t.truncated and t.footer is not None
    assert t.problems[0] == f"damaged: the block at byte {second} (4 events) failed its checksum"
    assert (t.events_lost, t.lost_exact) == (4, True)
    assert describe_incomplete(t).startswith(f"{p}: damaged trace: ")


def test_damaged_block_header_resynchronises_on_the_next_block(tmp_path: Path) -> None:
    # A flipped byte in the second block's count: its header checksum fails,
    # so its extent is unknown; the reader finds the third block by its
    # magic and own checksum.
    b = TraceBuilder()
    for _ in range(12):
        b.event(XRSTOR)
    data = bytearray(b.build(block_events=4))
    second = len(header()) + (24 + 4 * 144)
    data[second + 8] ^= 0x01
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert list(t.events["seq"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    third = second + 24 + 4 * 144
    assert t.problems[0] == (f"damaged: bytes {second}-{third - 1} are not a block "
                             "(a damaged block header or garbage)")
    assert t.events_lost == 4


def test_damaged_header_is_reported_and_blocks_still_read(tmp_path: Path) -> None:
    # One flipped byte in the kernel identity string: the header's checksum
    # fails; the events are still read.
    b = TraceBuilder(kernel="6.1.0-test")
    for _ in range(3):
        b.event(XRSTOR)
    data = bytearray(b.build())
    data[bytes(data).index(b"6.1.0-test")] ^= 0x20
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert t.header.damaged and t.damaged and len(t.events) == 3
    assert t.problems == ["damaged: the file header failed its checksum: its identity strings "
                          "are lost, its arch and features are the footer's copy"]


def test_file_cut_inside_the_header_is_a_truncated_trace(tmp_path: Path) -> None:
    p = tmp_path / "t.ftr"
    p.write_bytes(header()[:20])
    t = read_trace(p)
    assert t.truncated and len(t.events) == 0
    assert t.problems[0] == "truncated: the file ends inside its header, at byte 20"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"NOTATRACE" + b"\0" * 100, "not an fputrace trace (bad magic)"),
        (header(min_reader=6, version=6), "format version 6"),
        (with_version(header(), 0), "format version 0"),
        (header(arch=9), "unknown architecture code 9"),
    ],
    ids=["empty", "magic", "newer-version", "version-zero", "arch"],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, data: bytes, message: str) -> None:
    p = tmp_path / "bad.ftr"
    p.write_bytes(data)
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_newer_version_readable_by_this_reader_is_read(tmp_path: Path) -> None:
    # Version 6 that declares reader version 5 sufficient: read, not refused.
    b = TraceBuilder()
    b.event(XRSTOR)
    data = bytearray(b.build())
    n = len(header())
    data[:n] = with_version(bytes(data[:n]), 6)
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert t.header.version == 6 and len(t.events) == 1 and not t.header.damaged


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "nope.ftr")


def test_garbage_after_header(tmp_path: Path) -> None:
    p = tmp_path / "t.ftr"
    p.write_bytes(header() + b"\x01" * 200)
    t = read_trace(p)
    n = len(header())
    assert len(t.events) == 0
    assert t.problems[0] == (f"damaged: bytes {n}-{n + 199} are not a block (a damaged block "
                             "header or garbage)")


def test_unknown_block_type_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "t.ftr"
    b = TraceBuilder()
    b.event(XRSTOR)
    whole = b.build()
    n = len(header())
    p.write_bytes(whole[:n] + block(9, 0, [b"\0" * 8]) + whole[n:])
    t = read_trace(p)
    assert len(t.events) == 1 and t.problems[0] == (
        f"damaged: bytes {n}-{n + 31} are not a block (a damaged block header or garbage)")


def test_version_2_trace_without_checksums_is_read(tmp_path: Path) -> None:
    # Read whole, but not complete: a footer before version 5 does not say
    # whether its run finished.
    b = TraceBuilder(version=2, min_reader=2)
    b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr"))
    assert len(t.events) == 1 and not t.damaged and not t.truncated
    assert t.footer is not None and t.footer.end is None and not t.complete
    assert t.problems == ["the footer of format version 2 does not say how the run ended: "
                          "its run is not known to have finished"]


def test_version_3_trace_reads_with_no_instruction_count(tmp_path: Path) -> None:
    # 128-byte events, before icount: every field read where it was, icount 0.
    b = TraceBuilder(version=3, features=7)
    b.event(XRSTOR, pc=0xFFFFFFFF81000010, simd_pc=0x81000020, icount=999)
    b.event(XSAVEOPT, aux=5)
    data = b.build()
    assert len(data) == len(header(version=3)) + 24 + 2 * 128 + 24 + 544
    (tmp_path / "v3.ftr").write_bytes(data)
    t = read_trace(tmp_path / "v3.ftr")
    assert not t.damaged and not t.header.features & fmt.Feature.ICOUNT
    assert t.events.dtype == fmt.EVENT_DTYPE
    assert [int(x) for x in t.events["kind"]] == [XRSTOR, XSAVEOPT]
    assert int(t.events["pc"][0]) == 0xFFFFFFFF81000010
    assert int(t.events["simd_pc"][0]) == 0x81000020 and int(t.events["aux"][1]) == 5
    assert [int(x) for x in t.events["icount"]] == [0, 0]


def test_version_4_events_carry_their_instruction_count(tmp_path: Path) -> None:
    b = TraceBuilder(version=4, features=7 | fmt.Feature.ICOUNT)
    b.event(XRSTOR, icount=1234)
    b.event(XSAVEOPT, icount=1 << 40, simd_pc=7)
    data = b.build()
    assert len(data) == len(header(version=4)) + 24 + 2 * 144 + 24 + 544
    (tmp_path / "v4.ftr").write_bytes(data)
    t = read_trace(tmp_path / "v4.ftr")
    assert [int(x) for x in t.events["icount"]] == [1234, 1 << 40]
    assert int(t.events["simd_pc"][1]) == 7


def test_l2_flag_survives(tmp_path: Path) -> None:
    b = TraceBuilder()
    b.event(XSAVEOPT, flags=F_L2)
    t = read_trace(b.write(tmp_path / "t.ftr"))
    assert int(t.events["flags"][0]) & fmt.Flag.L2


def test_crc32c_check_value_and_native_agree() -> None:
    # The standard check value of CRC-32C, and the compiled and Python
    # versions (and the builder's own) agreeing on bytes of every length.
    from tracebuilder import crc32c as builder_crc

    from fputrace.trace.checksum import crc32c, crc32c_python

    assert crc32c_python(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    data = bytes(range(256)) * 3
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 700):
        assert crc32c(data[:n]) == crc32c_python(data[:n]) == builder_crc(data[:n])


def test_python_fallback_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the compiled library the reader copies and checks blocks in
    # Python: same records, same stop at a corrupted block.
    from fputrace.trace.native import READER

    b = TraceBuilder()
    for i in range(10):
        b.event(XSAVEOPT if i % 2 else XRSTOR, vcpu=i % 2)
    data = bytearray(b.build(block_events=3))
    whole = tmp_path / "whole.ftr"
    whole.write_bytes(bytes(data))
    data[len(header()) + 2 * (24 + 3 * 144) + 30] ^= 0xFF  # inside the third block
    broken = tmp_path / "broken.ftr"
    broken.write_bytes(bytes(data))
    compiled = [read_trace(p) for p in (whole, broken)]
    monkeypatch.setattr(READER, "library", lambda: None)
    python = [read_trace(p) for p in (whole, broken)]
    for c, py in zip(compiled, python, strict=True):
        assert c.events.tobytes() == py.events.tobytes() and c.problems == py.problems
    assert len(python[1].events) == 10 - python[1].events_lost == 8
    assert "failed its checksum" in python[1].problems[0]


@pytest.mark.parametrize("end", [e for e in fmt.End if e != fmt.End.DONE])
def test_a_run_that_did_not_finish_is_not_complete(tmp_path: Path, end: fmt.End) -> None:
    # Every byte intact, the footer there: the footer's end alone says that
    # the run was cut short (by its time limit, a signal, QEMU failing).
    b = TraceBuilder()
    b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr", end=end))
    assert t.footer is not None and t.footer.end == end
    assert not t.damaged and not t.truncated and not t.complete and not t.finished
    assert t.problems == [f"the run did not finish: {fmt.END_DESCRIPTIONS[end]}"]
    assert "the run did not finish" in describe_incomplete(t)


def test_a_finished_run_is_complete(tmp_path: Path) -> None:
    b = TraceBuilder()
    b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr"))
    assert t.complete and t.finished and t.footer is not None and t.footer.end == fmt.End.DONE


def test_an_unknown_end_is_not_a_finished_run(tmp_path: Path) -> None:
    b = TraceBuilder()
    b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr", end=77))
    assert not t.complete and t.problems == [
        "the run did not finish: its footer gives the unknown end 77"]


@pytest.mark.parametrize("bit", range(16))
def test_a_flipped_version_bit_is_damage_not_a_refusal(tmp_path: Path, bit: int) -> None:
    # The version lies under the header's checksum like every other byte:
    # whatever version a flipped bit makes of it, the header is damaged and
    # recovered, and the blocks are read.
    b = TraceBuilder(arch=int(fmt.Arch.AARCH64), features=7 | int(fmt.Feature.ICOUNT))
    for _ in range(3):
        b.event(K.FPSIMD_SAVE, icount=5)
    data = bytearray(b.build())
    at = fmt.field_offset(fmt.FILE_HEADER_DTYPE, "version")
    data[at + bit // 8] ^= 1 << (bit % 8)
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert t.header.damaged and t.header.recovered_from == "footer"
    assert t.header.arch == fmt.Arch.AARCH64
    assert t.header.features == 7 | fmt.Feature.ICOUNT
    assert len(t.events) == 3 and t.finished


def test_a_damaged_header_without_footer_is_recovered_from_the_events(tmp_path: Path) -> None:
    # No footer to copy from: the events show an arm64 trace (kinds from 32)
    # with instruction counts and boundaries.
    b = TraceBuilder(arch=int(fmt.Arch.AARCH64), features=0x3F)
    b.event(USER_ENTRY, icount=10)
    b.event(K.FPSIMD_SAVE, icount=20, flags=F_TASK)
    b.event(USER_RETURN, icount=30)
    data = bytearray(b.build(footer=False))
    data[fmt.field_offset(fmt.FILE_HEADER_DTYPE, "arch")] ^= 0x03
    p = tmp_path / "t.ftr"
    p.write_bytes(bytes(data))
    t = read_trace(p)
    assert t.header.damaged and t.header.recovered_from == "events"
    assert t.header.arch == fmt.Arch.AARCH64
    assert t.header.features & fmt.Feature.ICOUNT and t.header.features & fmt.Feature.TASKS
    assert t.header.features & fmt.Feature.BOUNDARIES
    assert "its arch and features are what the events show" in t.problems[0]


def test_more_records_than_the_footer_counts_is_damage(tmp_path: Path) -> None:
    # Records of another run in the file (two writers): never a negative loss.
    b = TraceBuilder()
    for _ in range(5):
        b.event(XRSTOR)
    t = read_trace(b.write(tmp_path / "t.ftr", footer_events_total=3))
    assert t.damaged and not t.complete and t.events_lost == 0 and not t.lost_exact
    assert t.problems[0] == ("damaged: the footer counts 3 events and 0 task records, but 5 "
                             "and 0 were read: the file holds records that are not its run's")
    assert " -2 " not in describe_incomplete(t).split(": ", 1)[1]


def test_gaps_are_the_missing_seqs_and_a_lost_task_blocks_window(tmp_path: Path) -> None:
    # 12 events of one vCPU in blocks of 4, a task announced at seq 5 (so in
    # the task block flushed with events 4-7). Losing events 4-7 leaves the
    # gap 4-7; losing the task block leaves its window, from after events
    # 0-3 to the end of the events it was flushed with: 4-7 again.
    b = TraceBuilder()
    b.task(0x1000, 1, "a")
    for i in range(12):
        if i == 5:
            b.task(0x1000, 2, "b")
        b.event(XRSTOR, task=0x1000)
    data = b.build(block_events=4)
    n = len(header())
    # tasks(a) | events 0-3 | tasks(b) | events 4-7 | events 8-11 | footer
    first_tasks = 24 + 48
    events_block = 24 + 4 * 144
    lost_tasks_at = n + first_tasks + events_block
    lost_events_at = lost_tasks_at + 24 + 48
    for at, missing in ((lost_events_at, 4), (lost_tasks_at, 0)):
        damaged = bytearray(data)
        damaged[at + 24 + 1] ^= 0xFF
        p = tmp_path / "t.ftr"
        p.write_bytes(bytes(damaged))
        t = read_trace(p)
        assert len(t.events) == 12 - missing and t.damaged
        assert t.gaps.tolist() == [[4, 7]], (at, t.gaps.tolist())
    t = read_trace(b.write(tmp_path / "whole.ftr", block_events=4))
    assert t.gaps.tolist() == []
