"""arm64 plugin conformance: a freestanding image (tests/conformance/aarch64/)
that QEMU's virt machine starts at EL2 runs every event the plugin records
on arm64 and prints, per event, what it did; the trace must say the same,
record by record.

The image covers FP/SIMD, SVE and SME access traps with FP disabled in
CPTR_EL2 (at EL2), in CPACR_EL1 (at EL1 and for EL0) and in CPTR_EL2 with
E2H (VHE); every FP control register write, by each name and with E2H's
redirections; FPSIMD, SVE and ZA (SME, with ZT0 on SME2) saves and loads
through routines at known addresses, each the kernel's own sequence; user
returns and entries at EL0/EL1; and ERETs into a guest at EL1 with
HCR_EL2.VM set, with FP/SIMD trapped and not, and back.

Its own checksums of the bytes each save stored or each load read ("sum",
and "ext" for the rest of an SVE state) are the independent truth for
content: two trace hashes must be equal exactly where the two sums are.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from analyzers.boundaries import check_boundaries
from analyzers.ownership import FindingKind, analyze
from fputrace.paths import build_dir
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.symbols import Symbols

SAVES_LOADS = ("fpsimd_save", "fpsimd_load", "sve_save", "sve_load", "sme_save", "sme_load")
CONTROL_WRITES = ("cpacr_write", "cptr_write", "zcr_write", "smcr_write", "svcr_write")


@pytest.fixture(scope="module")
def image(qemu_plugin: Path) -> Path:
    require(shutil.which("qemu-system-aarch64") is not None,
            "qemu-system-aarch64 not installed (make setup)")
    path = build_dir() / "tests" / "conformance" / "aarch64" / "conformance-aarch64.elf"
    require(path.exists(), f"{path} not built (make setup: needs gcc-aarch64-linux-gnu)")
    return path


def run_image(plugin: Path, image: Path, out: Path, *plugin_args: str
              ) -> subprocess.CompletedProcess[str]:
    serial = out.with_suffix(".serial")
    return subprocess.run(
        ["qemu-system-aarch64", "-M", "virt,virtualization=on,gic-version=3",
         "-cpu", "max,pauth-impdef=on", "-m", "256", "-display", "none", "-nodefaults",
         "-no-reboot", "-semihosting-config", "enable=on,target=native",
         "-kernel", str(image), "-serial", f"file:{serial}",
         "-plugin", ",".join([str(plugin), f"out={out}", *plugin_args])],
        capture_output=True, text=True, timeout=120)


@dataclass
class Run:
    ops: list[dict[str, str]]   # what the image says happened, in order
    events: np.ndarray          # what the trace says
    serial: str


def record(plugin: Path, image: Path, out: Path, *plugin_args: str) -> Run:
    p = run_image(plugin, image, out, *plugin_args)
    serial = out.with_suffix(".serial").read_text()
    # The image exits with semihosting's status: 0 when every trap it
    # provoked was taken with the EC it expected.
    assert p.returncode == 0, f"image failed ({p.returncode}): {serial}{p.stderr}"
    assert "FAIL" not in serial and "DONE traps=0x8" in serial, serial
    trace = read_trace(out)
    # The image ended QEMU itself, with no recorder to say so: EXITED.
    assert trace.intact and trace.footer is not None and trace.footer.end == fmt.End.EXITED, \
        trace.problems
    ops = [dict(kv.split("=", 1) for kv in line.split()[1:])
           for line in serial.splitlines() if line.startswith("OP ")]
    return Run(ops, trace.events, serial)


@pytest.fixture(scope="module")
def run(qemu_plugin: Path, image: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return record(qemu_plugin, image, tmp_path_factory.mktemp("a64") / "conf.ftr")


def h(op: dict[str, str], key: str) -> int:
    return int(op[key], 16)


def test_one_record_per_event_in_order(run: Run) -> None:
    assert [o["kind"] for o in run.ops] == [fmt.kind_name(int(k)) for k in run.events["kind"]]
    # Every arm64 kind is there.
    assert {o["kind"] for o in run.ops} >= {
        "fp_trap", *CONTROL_WRITES, *SAVES_LOADS, "vm_entry", "vm_exit", "user_entry",
        "user_return"}


def test_fields_match_record_by_record(run: Run) -> None:
    for op, ev in zip(run.ops, run.events, strict=True):
        where = f"{op} vs seq {int(ev['seq'])}"
        flags = int(ev["flags"])
        kind = op["kind"]
        assert flags & fmt.Flag.PL_MASK == h(op, "el"), where
        assert bool(flags & fmt.Flag.L2) == (op.get("l2", "0x0") == "0x1"), where
        if kind in CONTROL_WRITES:
            # index: the encoding the MSR named | the register it reached << 16.
            assert (int(ev["index"]), int(ev["value"]), int(ev["aux"])) == \
                (h(op, "index"), h(op, "value"), h(op, "old")), where
        if kind in ("fp_trap", "vm_exit"):
            assert int(ev["value"]) == h(op, "value"), where      # ESR
            assert int(ev["index"]) == h(op, "vector"), where
        if kind in SAVES_LOADS:
            assert (int(ev["pc"]), int(ev["addr"]), int(ev["index"])) == \
                (h(op, "pc"), h(op, "addr"), h(op, "vl")), where
            assert flags & fmt.Flag.MEM_VALID, where
        if kind in ("sme_save", "sme_load"):
            # value: the components moved, ZA (4) and ZT0 (8).
            assert int(ev["value"]) == 4 | (8 if op["zt"] == "0x1" else 0), where
        if kind in ("vm_entry", "vm_exit"):
            # The vCPU: VTTBR_EL2 (stage-2 base, VMID) | VMPIDR_EL2.Aff0 << 1 | 1.
            assert int(ev["addr"]) == h(op, "addr"), where
            assert bool(flags & fmt.Flag.GUEST_FP_TRAPPED) == (op["trapped"] == "0x1"), where
        if kind == "user_return":
            assert bool(flags & fmt.Flag.QUIET) == (op["quiet"] == "0x1"), where
            assert bool(flags & fmt.Flag.NO_ENTRY) == (op["noentry"] == "0x1"), where
        if "task" in op:
            # The task the kernel named in SP_EL0 (the user SP written there
            # before each return to EL0 is not one).
            assert flags & fmt.Flag.TASK_VALID and int(ev["task"]) == h(op, "task"), where


def test_traps_with_fp_disabled_in_cptr_and_cpacr(run: Run) -> None:
    # EL2 traps its own FP/SIMD, SVE and SME use through CPTR_EL2 (TFP, TZ,
    # TSM), EL1 through CPACR_EL1 (FPEN, ZEN), EL0 through CPACR_EL1's FPEN
    # 0b01, VHE's EL2 through CPTR_EL2.FPEN, and the guest through TFP.
    traps = [(h(o, "el"), h(o, "value") >> 26, h(o, "vector"), o.get("l2", "0x0"))
             for o in run.ops if o["kind"] == "fp_trap"]
    assert traps == [(2, 0x07, 0x200, "0x0"), (2, 0x19, 0x200, "0x0"), (2, 0x1D, 0x200, "0x0"),
                     (1, 0x07, 0x200, "0x0"), (1, 0x19, 0x200, "0x0"),
                     (1, 0x07, 0x400, "0x0"),
                     (2, 0x07, 0x400, "0x1"),
                     (2, 0x07, 0x200, "0x0")]


def test_content_hashes_equal_exactly_where_bytes_equal(run: Run) -> None:
    # Saves, loads, and the registers at user entries and returns: the
    # content image is the same for all (V0-V31 or Z0-Z31's low 128 bits,
    # FPSR, FPCR), so an SVE save of the registers an FPSIMD save stored
    # hashes the same.
    def content(op: dict[str, str], ev: np.void) -> int:
        return int(ev["mem_hash"] if op["kind"] in SAVES_LOADS else ev["regs_hash"])

    moved = [(op, ev) for op, ev in zip(run.ops, run.events, strict=True) if "sum" in op]
    assert len(moved) >= 20
    pairs = cross = 0
    for (op_a, ev_a), (op_b, ev_b) in combinations(moved, 2):
        same = op_a["sum"] == op_b["sum"]
        assert same == (content(op_a, ev_a) == content(op_b, ev_b)), (op_a, op_b)
        pairs += same
        cross += same and op_a["kind"].startswith("sve") != op_b["kind"].startswith("sve")
    assert pairs >= 20 and cross >= 5


def test_sve_rest_of_state(run: Run) -> None:
    # The Z registers' high parts and the P registers: a change of the high
    # parts, then of one predicate bit, changes the hash; a save after a load
    # of the same state hashes as the load.
    sve = [(op, ev) for op, ev in zip(run.ops, run.events, strict=True) if "ext" in op]
    assert len(sve) == 5
    for (op_a, ev_a), (op_b, ev_b) in combinations(sve, 2):
        assert (op_a["ext"] == op_b["ext"]) == \
            (int(ev_a["mem_ext_hash"]) == int(ev_b["mem_ext_hash"])), (op_a, op_b)
    assert len({op["ext"] for op, _ in sve}) == 3


def test_registers_at_user_and_vm_boundaries(run: Run) -> None:
    ops, ev = run.ops, run.events
    kinds = [o["kind"] for o in ops]
    # A user entry is written when the kernel first touches the registers,
    # with what EL0 left there: what the save that follows stores.
    for i, k in enumerate(kinds):
        if k == "user_entry":
            assert kinds[i + 1] == "fpsimd_save"
            assert int(ev["regs_hash"][i]) == int(ev["mem_hash"][i + 1])
    # The guest that ran untrapped leaves with d0 = 1.0 over what the
    # hypervisor loaded for it; the save right after its exit stores
    # exactly what the exit read, and the untrapped entry read what the
    # load before it put there.
    (entry,) = [i for i, o in enumerate(ops)
                if o["kind"] == "vm_entry" and o["trapped"] == "0x0" and kinds[i - 1] ==
                "fpsimd_load"]
    assert int(ev["regs_hash"][entry]) == int(ev["mem_hash"][entry - 1])
    exit_ = entry + 1
    assert kinds[exit_] == "vm_exit" and kinds[exit_ + 1] == "fpsimd_save"
    assert int(ev["regs_hash"][exit_]) == int(ev["mem_hash"][exit_ + 1])
    assert int(ev["regs_hash"][exit_]) != int(ev["regs_hash"][entry])


def test_analysis_finds_exactly_what_the_image_staged(run: Run) -> None:
    # The image stages a task switch that leaves task A's registers to B
    # (B's save, and the hypervisor's save of the host's registers while B
    # is current, store A's state), a system call that returns other
    # registers, and a guest entered untrapped with registers it never had.
    # Everything else is clean.
    ops, ev = run.ops, run.events
    staged = {(i, o["finding"]) for i, o in enumerate(ops) if "finding" in o}
    result = analyze(ev)
    found = {(f.event, f.kind.name.lower()) for f in result.findings}
    b = check_boundaries(ev, np.empty(0, dtype=fmt.TASK_DTYPE),
                         np.full(len(ev), -1, dtype=np.int64), Symbols.parse(""), False,
                         fmt.Arch.AARCH64)
    found |= {(f.after, f.kind) for f in b.findings}
    assert found == staged
    assert {k for _, k in staged} == {FindingKind.FOREIGN_SAVE.name.lower(), "corrupted_state"}


def test_register_reads_agree_with_derived_hashes(qemu_plugin: Path, image: Path, run: Run,
                                                  tmp_path: Path) -> None:
    # By default a save's register hash is taken from the bytes it stored;
    # regs=read reads Z0-Z31, FPSR and FPCR through the plugin API instead.
    # The two must agree record by record.
    read = record(qemu_plugin, image, tmp_path / "read.ftr", "regs=read").events
    derived = run.events
    assert len(read) == len(derived)
    for field in ("kind", "addr", "regs_hash", "regs_after_hash", "mem_hash", "mem_ext_hash"):
        assert list(read[field]) == list(derived[field]), field


@pytest.mark.parametrize(("arg", "reason"), [
    ("fpcode=0x1000:0", "fpcode=0x1000:0: a length of 1 byte to 1 MiB"),
    ("fpcode=0x1000", "fpcode=0x1000: give ADDR:LEN"),
    # x86's own arguments, on arm64: not accepted and silently ignored.
    ("msr=0x1c4", "unknown plugin argument 'msr' (for target aarch64)"),
    ("dmap=0x1000", "unknown plugin argument 'dmap' (for target aarch64)"),
])
def test_bad_plugin_argument_is_named(qemu_plugin: Path, image: Path, tmp_path: Path,
                                      arg: str, reason: str) -> None:
    p = run_image(qemu_plugin, image, tmp_path / "x.ftr", arg)
    assert p.returncode != 0
    assert reason in p.stderr, p.stderr
