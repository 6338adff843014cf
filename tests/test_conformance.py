"""Plugin conformance: a freestanding image (tests/conformance/) runs a known
sequence of every traced instruction and prints what it did; the trace must
say the same, record by record.

The image's own checksum ("sum") of the bytes each save wrote or each restore
read is the independent truth for content: two trace hashes must be equal
exactly where the two sums are equal.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from analyzers.ownership import Class, FindingKind, analyze
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace

TSC_AUX = 0xC0000103
EXIT_PASS = (0x10 << 1) | 1  # isa-debug-exit: status (value << 1) | 1


def run_image(plugin: Path, image: Path, out: Path, *plugin_args: str
              ) -> subprocess.CompletedProcess[str]:
    serial = out.with_suffix(".serial")
    return subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "256", "-display", "none",
         "-no-reboot", "-nodefaults", "-kernel", str(image),
         "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
         "-chardev", f"file,id=s0,path={serial}", "-serial", "chardev:s0",
         "-plugin", ",".join([str(plugin), f"out={out}", *plugin_args])],
        capture_output=True, text=True, timeout=120)


def parse_ops(serial_text: str) -> list[dict[str, str]]:
    """OP lines as dicts; an op after a DIRTY line (registers changed without a
    traced instruction) gets dirty_before=1."""
    ops = []
    dirty = False
    for line in serial_text.splitlines():
        if line.startswith("DIRTY"):
            dirty = True
        elif line.startswith("OP "):
            op = dict(kv.split("=", 1) for kv in line.split()[1:])
            if dirty:
                op["dirty_before"] = "1"
            dirty = False
            ops.append(op)
    return ops


@dataclass
class ConformanceRun:
    ops: list[dict[str, str]]  # what the image says it did, in order
    events: np.ndarray  # what the trace says
    serial: str


@pytest.fixture(scope="module")
def conformance_run(qemu_plugin: Path, conformance_image: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> ConformanceRun:
    out = tmp_path_factory.mktemp("conf") / "conf.ftr"
    p = run_image(qemu_plugin, conformance_image, out, f"msr={TSC_AUX:#x}")
    serial = out.with_suffix(".serial").read_text()
    assert p.returncode == EXIT_PASS, f"image failed ({p.returncode}): {serial}{p.stderr}"
    assert "SELFTEST ud2 faulted=0x1" in serial  # the fault fix-up path works
    trace = read_trace(out)
    # The image ended QEMU itself, with no recorder to say so: EXITED.
    assert trace.intact and trace.footer is not None and trace.footer.end == fmt.End.EXITED, \
        trace.problems
    # The untraced WRMSR (not in msr=) must not appear; everything else must.
    ops = [o for o in parse_ops(serial) if o["kind"] != "wrmsr_untraced"]
    return ConformanceRun(ops, trace.events, serial)


def test_one_record_per_operation_in_order(conformance_run: ConformanceRun) -> None:
    ops, events, serial = conformance_run.ops, conformance_run.events, conformance_run.serial
    # Look-alikes (fences, LDMXCSR/STMXCSR, CLFLUSH, CMPXCHG16B, XGETBV) and the
    # unlisted WRMSR produce nothing: the counts match exactly.
    assert "LOOKALIKES done" in serial
    assert [o["kind"] for o in ops] == [fmt.kind_name(int(k)) for k in events["kind"]]


def test_fields_match_record_by_record(conformance_run: ConformanceRun) -> None:
    ops, events = conformance_run.ops, conformance_run.events
    for op, ev in zip(ops, events, strict=True):
        flags = int(ev["flags"])
        where = f"{op} vs seq {int(ev['seq'])}"
        if "form64" in op:
            assert bool(flags & fmt.Flag.FORM64) == (int(op["form64"], 16) == 1), where
        if "addr" in op:
            assert int(ev["addr"]) == int(op["addr"], 16), where
        if "rfbm" in op and int(ev["kind"]) != fmt.Kind.FXSAVE and \
                int(ev["kind"]) != fmt.Kind.FXRSTOR:
            assert int(ev["value"]) == int(op["rfbm"], 16), where
        if "index" in op:
            assert int(ev["index"]) == int(op["index"], 16), where
            assert int(ev["value"]) == int(op["value"], 16), where
        if "l2" in op:
            assert bool(flags & fmt.Flag.L2) == (int(op["l2"], 16) == 1), where
        # The user-mode part says cpl=3; the user entry is written in the kernel.
        assert flags & fmt.Flag.PL_MASK == int(op.get("cpl", "0"), 16), where


def test_xcr0_follows_xsetbv(conformance_run: ConformanceRun) -> None:
    events = conformance_run.events
    assert int(events["xcr0"][0]) == 1  # before the first XSETBV: reset value, x87 only
    assert all(int(x) == 7 for x in events["xcr0"][1:])


def test_content_hashes_equal_exactly_where_bytes_equal(conformance_run: ConformanceRun) -> None:
    ops, events = conformance_run.ops, conformance_run.events
    moved = [(op, ev) for op, ev in zip(ops, events, strict=True)
             if "sum" in op and int(ev["flags"]) & fmt.Flag.MEM_VALID]
    # Every save and restore that executed touched memory...
    assert len(moved) >= 15
    pairs = 0
    for (op_a, ev_a), (op_b, ev_b) in combinations(moved, 2):
        same_bytes = op_a["sum"] == op_b["sum"]
        same_hash = int(ev_a["mem_hash"]) == int(ev_b["mem_hash"])
        assert same_bytes == same_hash, (op_a, op_b)
        pairs += same_bytes
    # ... and the sequence has several equal pairs (the repeated saves and restores).
    assert pairs >= 10


def test_register_hash_equals_what_a_full_save_stores(conformance_run: ConformanceRun) -> None:
    # Before an XSAVE of x87|SSE or an FXSAVE, the registers are exactly what
    # the instruction then stores into the legacy area.
    ops, events = conformance_run.ops, conformance_run.events
    checked = 0
    for op, ev in zip(ops, events, strict=True):
        if op["kind"] in ("xsave", "xsaveopt", "fxsave") and int(ev["flags"]) & fmt.Flag.MEM_VALID:
            assert int(ev["flags"]) & fmt.Flag.REGS_VALID
            assert int(ev["regs_hash"]) == int(ev["mem_legacy_hash"]), op
            checked += 1
    assert checked >= 8


def test_restore_loads_the_registers(conformance_run: ConformanceRun) -> None:
    # After an XRSTOR/FXRSTOR, the next traced operation sees the restored
    # legacy contents in the registers (nothing in between touches them).
    ops, events = conformance_run.ops, conformance_run.events
    checked = 0
    for i, op in enumerate(ops[:-1]):
        ev = events[i]
        nxt = events[i + 1]
        if op["kind"] in ("xrstor", "fxrstor") and int(ev["flags"]) & fmt.Flag.MEM_VALID \
                and int(nxt["flags"]) & fmt.Flag.REGS_VALID and "dirty_before" not in ops[i + 1]:
            assert int(nxt["regs_hash"]) == int(ev["mem_legacy_hash"]), op
            checked += 1
    assert checked >= 3


def test_registers_after_a_restore(conformance_run: ConformanceRun) -> None:
    # The plugin reads the register file right after each restore: it holds
    # exactly the legacy bytes loaded (every component was saved non-init, so
    # nothing comes from the init state), and the next operation sees the same.
    ops, events = conformance_run.ops, conformance_run.events
    checked = 0
    for i, op in enumerate(ops):
        ev = events[i]
        if op["kind"] in ("xrstor", "fxrstor") and int(ev["flags"]) & fmt.Flag.MEM_VALID:
            assert int(ev["flags"]) & fmt.Flag.REGS_AFTER_VALID, op
            assert int(ev["regs_after_hash"]) == int(ev["mem_legacy_hash"]), op
            if i + 1 < len(events) and int(events[i + 1]["flags"]) & fmt.Flag.REGS_VALID \
                    and "dirty_before" not in ops[i + 1]:
                assert int(events[i + 1]["regs_hash"]) == int(ev["regs_after_hash"]), op
            checked += 1
    assert checked >= 6


def test_xstate_bv_of_saves_and_restores(conformance_run: ConformanceRun) -> None:
    # XSAVE writes XSTATE_BV = components in use; QEMU's TCG counts every
    # component as in use, so it is RFBM & XCR0. XRSTOR reads that back.
    ops, events = conformance_run.ops, conformance_run.events
    for op, ev in zip(ops, events, strict=True):
        if op["kind"] in ("xsave", "xsaveopt", "xrstor") and int(ev["flags"]) & fmt.Flag.MEM_VALID:
            assert int(ev["xstate_bv"]) == int(op["rfbm"], 16) & 7, op
        if op["kind"] in ("fxsave", "fxrstor"):
            assert int(ev["xstate_bv"]) == 0, op


def test_compacted_and_supervisor_forms_are_recorded(conformance_run: ConformanceRun) -> None:
    # QEMU 10.0's TCG does not implement XSAVEC/XSAVES/XRSTORS: the attempt is
    # still recorded, with no memory access seen.
    ops, events = conformance_run.ops, conformance_run.events
    kinds = {fmt.kind_name(int(k)) for k in events["kind"]}
    assert {"xsavec", "xsaves", "xrstors", "wrmsr_xfd", "wrmsr_xfd_err"} <= kinds
    for op, ev in zip(ops, events, strict=True):
        if op["kind"] in ("xsavec", "xsaves", "xrstors"):
            assert int(ev["addr"]) == int(op["addr"], 16)
            assert int(ev["value"]) == int(op["rfbm"], 16)


def test_vm_entry_and_exit_bracket_the_nested_guest(conformance_run: ConformanceRun) -> None:
    events, serial = conformance_run.events, conformance_run.serial
    kinds = [fmt.kind_name(int(k)) for k in events["kind"]]
    i = kinds.index("vm_entry")
    assert kinds[i + 1] == "xsave" and kinds[i + 2] == "vm_exit"
    assert int(events["flags"][i + 1]) & fmt.Flag.L2
    assert not int(events["flags"][i]) & fmt.Flag.L2
    assert not int(events["flags"][i + 2]) & fmt.Flag.L2
    assert "exitcode=0x81" in serial  # the guest really ran and left with VMMCALL


def test_derived_register_hashes_equal_the_registers_read(
        qemu_plugin: Path, conformance_image: Path, conformance_run: ConformanceRun,
        tmp_path: Path) -> None:
    # By default the plugin takes the register file's hash at a 64-bit save
    # or restore from the bytes it moved, and before a restore from the last
    # one known; regs=read reads every register instead. Record by record,
    # the two must agree (DIRTY steps change registers between operations).
    out = tmp_path / "read.ftr"
    p = run_image(qemu_plugin, conformance_image, out, f"msr={TSC_AUX:#x}", "regs=read")
    assert p.returncode == EXIT_PASS
    read, derived = read_trace(out).events, conformance_run.events
    assert len(read) == len(derived)
    for field in ("kind", "addr", "regs_hash", "regs_after_hash", "mem_hash", "flags"):
        assert list(read[field]) == list(derived[field]), field


@pytest.mark.parametrize(("word", "end"), [("DONE", fmt.End.DONE), ("TIMEOUT\n", fmt.End.TIMEOUT),
                                           ("INTERRUPTED", fmt.End.INTERRUPTED),
                                           ("finished", fmt.End.EXITED), (None, fmt.End.EXITED)])
def test_the_footer_says_how_the_run_ended(qemu_plugin: Path, conformance_image: Path,
                                           tmp_path: Path, word: str | None,
                                           end: fmt.End) -> None:
    # The plugin takes the end from its end= file as QEMU exits: a name it
    # knows, else EXITED (and a word it does not know is said on stderr), as
    # is a file that was never written.
    out, end_file = tmp_path / "c.ftr", tmp_path / "end"
    if word is not None:
        end_file.write_text(word)
    p = run_image(qemu_plugin, conformance_image, out, f"end={end_file}")
    assert p.returncode == EXIT_PASS
    t = read_trace(out)
    assert t.intact and t.footer is not None and t.footer.end == end
    assert t.complete == (end == fmt.End.DONE)
    assert ("no run end the trace knows" in p.stderr) == (word == "finished")


def test_footer_counts_match(qemu_plugin: Path, conformance_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.ftr"
    assert run_image(qemu_plugin, conformance_image, out, "block_events=3").returncode == EXIT_PASS
    t = read_trace(out)
    assert t.intact and t.footer is not None
    counted = dict(zip(*np.unique(t.events["kind"], return_counts=True), strict=True))
    assert t.footer.events_by_kind == {int(k): int(n) for k, n in counted.items()}
    assert t.blocks_read > 8  # small blocks: many of them, all read


@pytest.mark.parametrize(("arg", "reason"), [
    ("bogus=1", "unknown plugin argument 'bogus' (for target x86_64)"),
    # arm64's own argument, on x86: not accepted and silently ignored.
    ("fpcode=0x1000:16", "unknown plugin argument 'fpcode' (for target x86_64)"),
    ("msr=notanumber", "msr=notanumber: an MSR index is a 32-bit number"),
    ("block_events=0", "block_events=0: give 1 to 65536 events"),
    ("task_pid=-5", "task_pid=-5: an offset in struct task_struct"),
    ("probe=0x1000", "probe=0x1000: give ADDR:ID[:FLAGS]"),
    ("probe=0x1000:300", "probe id 300 out of range 1-"),
    ("probe=0x1000:1:x", "flag 'x' is not t (timed) or q (quiet)"),
    ("probe=x:1", "probe=x:1: give ADDR:ID[:FLAGS]"),
    ("boundaries=maybe", "boundaries=maybe: give on or off"),
    ("regs=guess", "regs=guess: give derive or read"),
    # QEMU itself makes a bare word key=on (and noKEY key=off).
    ("bare", "unknown plugin argument 'bare'"),
])
def test_bad_plugin_argument_is_named(qemu_plugin: Path, conformance_image: Path,
                                      tmp_path: Path, arg: str, reason: str) -> None:
    # One line, naming the argument and why it was refused.
    p = run_image(qemu_plugin, conformance_image, tmp_path / "x.ftr", arg)
    assert p.returncode != 0
    assert reason in p.stderr, p.stderr


def test_ownership_classes_end_to_end(conformance_run: ConformanceRun) -> None:
    # The image states, for every save and restore, the class its sequence
    # implies (expect=; "-" for a first save, which the plugin judges from the
    # buffer it read before it), repeats are redundant, and it stages one
    # lost state (dirty registers overwritten by another buffer, then resumed
    # from the older buffer) and one stale restore. The real plugin's trace,
    # through the analyzer, must agree on every one.
    ops, events = conformance_run.ops, conformance_run.events
    result = analyze(events)
    expected = [(i, op["expect"]) for i, op in enumerate(ops) if op.get("expect", "-") != "-"]
    got = [(i, Class(int(result.cls[i])).name.lower()) for i, _ in expected]
    assert got == expected
    assert {e for _, e in expected} >= {"necessary", "redundant_save", "redundant_restore",
                                        "lost_state", "stale_restore", "unknown"}
    lost = [f for f in result.findings if f.kind == FindingKind.LOST_STATE]
    assert len(lost) == 1 and len(result.findings) == 2
    # Both events of the lost-state finding: the overwrite and the context's last sync.
    f = lost[0]
    assert ops[f.event]["addr"] != ops[f.last_sync]["addr"]
    assert int(events["addr"][f.last_sync]) == f.context_buffer
    assert int(events["addr"][f.resumed]) == f.context_buffer


def test_user_mode_boundaries(conformance_run: ConformanceRun) -> None:
    # The image's last part runs at CPL 3 and makes four system calls whose
    # kernel side does nothing, saves and reloads the same registers, loads
    # other registers, or runs an SSE instruction in kernel-half code. Around
    # each call it XSAVEs the registers in user mode (what they held at the
    # boundary) and prints whether the kernel changed them (BOUNDARY lines).
    ops, events = conformance_run.ops, conformance_run.events
    kinds = [fmt.kind_name(int(k)) for k in events["kind"]]
    returns = [i for i, k in enumerate(kinds) if k == "user_return"]
    told = [dict(kv.split("=", 1) for kv in line.split()[1:])
            for line in conformance_run.serial.splitlines() if line.startswith("BOUNDARY")]
    assert len(returns) == 5 and len(told) == 4
    flags = [int(events["flags"][i]) for i in returns]
    # The first return (SYSRET into user mode) had no entry before it.
    assert flags[0] & fmt.Flag.NO_ENTRY
    # Nothing in between: QUIET, no register read, nothing changed.
    assert flags[1] & fmt.Flag.QUIET and not flags[1] & fmt.Flag.REGS_VALID
    assert told[0] == {"request": "0x0", "changed": "0x0"}
    for n, i in enumerate(returns[2:], start=2):
        assert not flags[n] & fmt.Flag.QUIET and flags[n] & fmt.Flag.REGS_VALID
        # The registers at the return are what the next user-mode XSAVE finds.
        assert kinds[i + 1] == "xsave" and int(events["regs_hash"][i]) == int(
            events["regs_hash"][i + 1])
        # The entry was written before the first kernel operation, with the
        # registers the user-mode XSAVE before the system call found.
        before = max(j for j in range(i) if kinds[j] == "xsave" and
                     ops[j].get("cpl") == "0x3")
        (entry,) = [j for j in range(before, i) if kinds[j] == "user_entry"]
        assert int(events["regs_hash"][entry]) == int(events["regs_hash"][before])
        changed = int(events["regs_hash"][entry]) != int(events["regs_hash"][i])
        assert changed == (told[n - 1]["changed"] == "0x1"), told[n - 1]
    assert [t["changed"] for t in told] == ["0x0", "0x0", "0x1", "0x1"]
    # The kernel-half SSE instruction is seen, before the return.
    assert flags[4] & fmt.Flag.KERNEL_SIMD
    # The boundary checks: the two calls that changed the registers are the
    # violations, each explained.
    from analyzers.boundaries import check_boundaries
    from fputrace.trace.symbols import Symbols

    b = check_boundaries(events, np.empty(0, dtype=fmt.TASK_DTYPE),
                         np.full(len(events), -1, dtype=np.int64), Symbols.parse(""), False,
                         fmt.Arch.X86_64)
    assert (b.user.checked, b.user.quiet, b.user.violations) == (4, 1, 2)
    load, sse = b.findings
    assert (load.after, sse.after) == (returns[3], returns[4])
    assert "loaded state that differs" in load.explanation
    assert "kernel SIMD use" in sse.explanation


def test_probe_records_function_entry_and_arguments(qemu_plugin: Path, conformance_image: Path,
                                                    tmp_path: Path) -> None:
    # A probe on the image's kernel_side(request): one event per system call
    # that reaches it, with its first argument, in the order the user-mode
    # part makes them (nothing, save/load, load other, kernel SSE; the exit
    # request returns before calling it), and the return address its CALL
    # pushed.
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    elf_path = conformance_image.parent / "conformance-payload.elf"
    with open(elf_path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        (sym,) = symtab.get_symbol_by_name("kernel_side") or []
        addr = int(sym["st_value"])
        (back,) = symtab.get_symbol_by_name("kernel_side_return") or []
    out = tmp_path / "p.ftr"
    p = run_image(qemu_plugin, conformance_image, out,
                  f"probe={addr:#x}:{int(fmt.Probe.FORK_COPY)}")
    assert p.returncode == EXIT_PASS, p.stderr
    t = read_trace(out)
    probes = t.events[t.events["kind"] == fmt.Kind.PROBE]
    assert [int(v) for v in probes["value"]] == [0, 1, 2, 3]
    assert all(int(i) == fmt.Probe.FORK_COPY for i in probes["index"])
    assert all(int(pc) == addr for pc in probes["pc"])
    # Each names its caller: the address after the image's CALL, by its label.
    assert all(int(c) == int(back["st_value"]) for c in probes[fmt.PROBE_CALLER])
    assert t.header.features & fmt.Feature.PROBES


def _image_symbol(conformance_image: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(conformance_image.parent / "conformance-payload.elf", "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        (sym,) = symtab.get_symbol_by_name(name) or []
        return int(sym["st_value"])


KERNEL_HALF_ALIAS = 0xFFFFFF8000000000  # the image's second mapping of its first GiB


def test_instruction_count_between_two_events(conformance_run: ConformanceRun) -> None:
    # counted_run(): XSETBV, MOV, 1000 x (DEC, JNZ), XSETBV. By the image's
    # own instructions, the second XSETBV comes 2 + 2 * 1000 instructions
    # after the first, whatever blocks QEMU cut them into.
    ops, events = conformance_run.ops, conformance_run.events
    first = next(i for i, o in enumerate(ops) if o.get("counted") == "first")
    second = next(i for i, o in enumerate(ops) if o.get("counted") == "second")
    assert second == first + 1
    loops = int(ops[second]["loops"], 16)
    assert [int(events["kind"][i]) for i in (first, second)] == [fmt.Kind.XSETBV] * 2
    assert int(events["icount"][second]) - int(events["icount"][first]) == 2 + 2 * loops
    # Every event's count only grows on the one vCPU, and is not all zeros.
    icount = events["icount"].astype(np.int64)
    assert np.all(np.diff(icount) > 0) and icount[0] > 0


def test_timed_probe_returns_with_its_instruction_count(
        qemu_plugin: Path, conformance_image: Path, tmp_path: Path) -> None:
    # A timed probe on counted_leaf (NOP, NOP, RET, run at its kernel-half
    # alias): a probe at its entry, then a probe_return at the instruction
    # its RET went to, 3 instructions later, naming that address.
    leaf = _image_symbol(conformance_image, "counted_leaf") + KERNEL_HALF_ALIAS
    back = _image_symbol(conformance_image, "counted_leaf_return") + KERNEL_HALF_ALIAS
    out = tmp_path / "timed.ftr"
    p = run_image(qemu_plugin, conformance_image, out,
                  f"probe={leaf:#x}:{int(fmt.Probe.FPU_PATH)}:tq")
    assert p.returncode == EXIT_PASS, p.stderr
    t = read_trace(out)
    assert t.header.features & fmt.Feature.ICOUNT
    ev = t.events
    (entry,) = np.flatnonzero(ev["kind"] == fmt.Kind.PROBE)
    (ret,) = np.flatnonzero(ev["kind"] == fmt.Kind.PROBE_RETURN)
    assert ret == entry + 1
    assert int(ev["pc"][ret]) == leaf and int(ev["addr"][ret]) == back
    assert int(ev[fmt.PROBE_CALLER][entry]) == back
    assert int(ev["icount"][ret]) - int(ev["icount"][entry]) == 3
    assert int(ev["aux"][ret]) == int(ev["icount"][entry])
    assert int(ev["index"][ret]) == fmt.Probe.FPU_PATH


def test_instruction_count_off(qemu_plugin: Path, conformance_image: Path,
                               tmp_path: Path) -> None:
    out = tmp_path / "off.ftr"
    p = run_image(qemu_plugin, conformance_image, out, "icount=off")
    assert p.returncode == EXIT_PASS, p.stderr
    t = read_trace(out)
    assert not t.header.features & fmt.Feature.ICOUNT
    assert not np.any(t.events["icount"])
