"""Time in instructions on synthetic traces: each test narrates what the
kernel did, with each event's instruction count written by hand, and states
the figures analyzers/instructions.py must derive from them, worked out by
hand from those counts. The conformance image (tests/test_conformance.py)
checks that the plugin's counts are the instructions really executed."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tracebuilder import (
    F_TASK,
    PROBE,
    USER_ENTRY,
    USER_RETURN,
    VM_ENTRY,
    VM_EXIT,
    XRSTOR,
    XSAVE,
    TraceBuilder,
)

from analyzers.instructions import enclosing_paths, instruction_costs, machine_time
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.run import sidecar
from fputrace.trace.symbols import Symbols

A = 0xFFFF888000A00000  # the vCPU thread
B = 0xFFFF888000B00000  # a host hog
VMCB = 0x6370000
SWAP, SFR, SWITCH_TO, PUT_FP = (0xFFFFFFFF81040000, 0xFFFFFFFF81041000, 0xFFFFFFFF81030000,
                                0xFFFFFFFF81050000)
KALLSYMS = (f"{SWITCH_TO:016x} T __switch_to\n{SWAP:016x} T fpu_swap_kvm_fpstate\n"
            f"{SFR:016x} T switch_fpu_return\n{SFR + 0x400:016x} T after_sfr\n"
            f"{PUT_FP:016x} T kvm_arch_vcpu_put_fp\n{PUT_FP + 0x400:016x} T after_put\n")
SYMS = Symbols.parse(KALLSYMS)
ICOUNT = 7 | int(fmt.Feature.PROBES) | int(fmt.Feature.ICOUNT)
P_PATH, P_SWITCH, P_PUT = (int(fmt.Probe.FPU_PATH), int(fmt.Probe.CONTEXT_SWITCH),
                           int(fmt.Probe.KVM_PUT_FP))
RETURN = int(fmt.Kind.PROBE_RETURN)


def timed(b: TraceBuilder, fn: int, probe: int, start: int, end: int, task: int = A,
          cpu: int = 0) -> None:
    """A timed function: its probe at `start`, its return at `end`."""
    b.event(PROBE, vcpu=cpu, task=task, pc=fn, index=probe, flags=F_TASK, icount=start)
    b.event(RETURN, vcpu=cpu, task=task, pc=fn, index=probe, flags=F_TASK, icount=end,
            aux=start)


def kvm_story() -> TraceBuilder:
    b = TraceBuilder(features=ICOUNT)
    b.task(A, 10, "vcpu0")
    b.task(B, 20, "hog")
    # 1. An exit KVM handles in the kernel (vcpu_run() loops): 1000
    #    instructions to the next entry; fpu_swap_kvm_fpstate() ran inside,
    #    137 instructions (1100 to 1237), with its save.
    b.event(VM_EXIT, task=A, flags=F_TASK, icount=1000)
    b.event(PROBE, task=A, pc=SWAP, index=P_PATH, flags=F_TASK, icount=1100)
    b.event(XSAVE, task=A, flags=F_TASK, icount=1150)
    b.event(RETURN, task=A, pc=SWAP, index=P_PATH, flags=F_TASK, icount=1237, aux=1100)
    b.event(VM_ENTRY, task=A, addr=VMCB, flags=F_TASK, icount=2000)
    # 2. An exit through the VMM in user mode: KVM_RUN returns;
    #    switch_fpu_return() (45 instructions) before the return to user
    #    mode; the VMM calls KVM_RUN again: 1000 instructions in all.
    b.event(VM_EXIT, task=A, flags=F_TASK, icount=3000)
    timed(b, SFR, P_PATH, 3300, 3345)
    b.event(XRSTOR, task=A, flags=F_TASK, icount=3340)
    b.event(USER_RETURN, task=A, pc=0x401000, flags=F_TASK | 3, icount=3500)
    b.event(USER_ENTRY, task=A, pc=0x401100, flags=F_TASK, icount=3600)
    b.event(VM_ENTRY, task=A, addr=VMCB, flags=F_TASK, icount=4000)
    # 3. An exit after which the vCPU thread is preempted by the hog (116
    #    instructions in __switch_to, each way) before it enters again: its
    #    window holds the hog's instructions, so it is not counted.
    b.event(VM_EXIT, task=A, flags=F_TASK, icount=5000)
    timed(b, SWITCH_TO, P_SWITCH, 5100, 5216)
    timed(b, SWITCH_TO, P_SWITCH, 9000, 9116, task=B)
    b.event(VM_ENTRY, task=A, addr=VMCB, flags=F_TASK, icount=10000)
    return b


def test_instructions_per_exit_path_and_switch(tmp_path: Path) -> None:
    t = read_trace(kvm_story().write(tmp_path / "k.ftr"))
    ic = instruction_costs(t.events, SYMS, True)
    assert ic is not None
    assert [(p.name, p.calls, p.instructions, p.most) for p in ic.paths] == [
        ("fpu_swap_kvm_fpstate", 1, 137, 137), ("switch_fpu_return", 1, 45, 45)]
    assert (ic.in_kernel.count, ic.in_kernel.instructions, ic.in_kernel.fpu_path_instructions) \
        == (1, 1000, 137)
    assert (ic.via_user.count, ic.via_user.instructions, ic.via_user.fpu_path_instructions) \
        == (1, 1000, 45)
    assert ic.preempted_exits == 1
    assert (ic.switches, ic.per_switch()) == (2, 116.0)
    assert ic.per_exit()["instructions"] == 1000.0
    assert ic.per_exit()["fpu_path_instructions"] == 91.0  # (137 + 45) / 2


def test_nested_timed_functions_count_once(tmp_path: Path) -> None:
    # kvm_arch_vcpu_put_fp() from 1050 to 1300 holds a timed FPU path from
    # 1100 to 1237: inside the exit's window, the FPU paths spent 250
    # instructions, not 387; each function still has its own figure.
    b = TraceBuilder(features=ICOUNT)
    b.task(A, 10, "vcpu0")
    b.event(VM_EXIT, task=A, flags=F_TASK, icount=1000)
    b.event(PROBE, task=A, pc=PUT_FP, index=P_PUT, flags=F_TASK, icount=1050)
    timed(b, SWAP, P_PATH, 1100, 1237)
    b.event(RETURN, task=A, pc=PUT_FP, index=P_PUT, flags=F_TASK, icount=1300, aux=1050)
    b.event(VM_ENTRY, task=A, addr=VMCB, flags=F_TASK, icount=2000)
    ic = instruction_costs(read_trace(b.write(tmp_path / "n.ftr")).events, SYMS, True)
    assert ic is not None
    assert ic.in_kernel.fpu_path_instructions == 250
    assert {p.name: p.instructions for p in ic.paths} == {
        "kvm_arch_vcpu_put_fp": 250, "fpu_swap_kvm_fpstate": 137}


def test_older_traces_have_no_instruction_figures(tmp_path: Path) -> None:
    b = kvm_story()
    b.header_args = {"version": 3, "features": 7 | int(fmt.Feature.PROBES)}
    p = b.write(tmp_path / "v3.ftr")
    t = read_trace(p)
    assert instruction_costs(t.events, SYMS, bool(t.header.features & fmt.Feature.ICOUNT)) \
        is None
    # A version 3 footer does not say the run finished: --allow-partial.
    rep = report_json(p, "--allow-partial")
    assert "instructions" not in rep


def test_machine_time_sums_every_cpus_instructions(tmp_path: Path) -> None:
    # cpu0 at 100, cpu1 at 1000, cpu0 at 150 and 300, a user entry of cpu0
    # written late with its older count 120, cpu1 at 1100: each event adds
    # what its CPU retired since that CPU's largest count so far.
    b = TraceBuilder(features=ICOUNT)
    for cpu, n in ((0, 100), (1, 1000), (0, 150), (0, 300)):
        b.event(XSAVE, vcpu=cpu, icount=n)
    b.event(USER_ENTRY, vcpu=0, icount=120)
    b.event(XSAVE, vcpu=1, icount=1100)
    t = read_trace(b.write(tmp_path / "m.ftr"))
    assert machine_time(t.events).tolist() == [100, 1100, 1150, 1300, 1300, 1400]


def with_symbols(path: Path) -> Path:
    sidecar(path, "kallsyms.gz").write_bytes(gzip.compress(KALLSYMS.encode()))
    return path


def report_json(path: Path, *options: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", "--json", *options,
                        str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_report_and_compare_give_the_instructions(tmp_path: Path) -> None:
    p = with_symbols(kvm_story().write(tmp_path / "r.ftr"))
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "instructions per VM exit, to the same task's next entry: 1000.0 for the 1 " \
           "handled in the kernel, 137.0 of them in FPU paths; 1000.0 for the 1 through the " \
           "VMM in user mode, 45.0 of them in FPU paths (1 more with a context switch " \
           "between, not counted)" in text
    assert "instructions per context switch: 116.0 in __switch_to (2 switches)" in text
    assert "instructions in FPU paths: fpu_swap_kvm_fpstate 1 calls, 137.0 each (max 137); " \
           "switch_fpu_return 1 calls, 45.0 each (max 45)" in text
    j = report_json(p)["instructions"]
    assert j["per_vm_exit"]["in_kernel"] == {"count": 1, "instructions": 1000.0,
                                             "fpu_path_instructions": 137.0}
    # compare: the same run against one whose swap took twice as long.
    b = kvm_story()
    swap_return = next(e for e in b.events if e.kind == RETURN and e.pc == SWAP)
    swap_return.icount = 1100 + 274
    q = with_symbols(b.write(tmp_path / "slow.ftr"))
    c = subprocess.run([sys.executable, "-m", "fputrace", "compare", "--json", str(p), str(q)],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    m = json.loads(c.stdout)["metrics"]
    assert m["fpu_path.fpu_swap_kvm_fpstate.instructions_per_call"]["a"] == 137.0
    assert m["fpu_path.fpu_swap_kvm_fpstate.instructions_per_call"]["b"] == 274.0
    assert m["in_kernel_fpu_path_instructions_per_vm_exit"]["b"] == 274.0
    assert m["instructions_per_context_switch"]["a"] == 116.0
    gate = subprocess.run([sys.executable, "-m", "fputrace", "compare", str(p), str(q),
                           "--fail-if", "fpu_path.fpu_swap_kvm_fpstate.instructions_per_call "
                           "> +50%"], capture_output=True, text=True)
    assert gate.returncode == 1, gate.stdout + gate.stderr


def test_export_and_viewer_draw_instruction_time(tmp_path: Path) -> None:
    p = with_symbols(kvm_story().write(tmp_path / "e.ftr"))
    out = tmp_path / "e.json"
    r = subprocess.run([sys.executable, "-m", "fputrace", "export", str(p), "--format",
                        "perfetto", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["displayTimeUnit"] == "ns"
    assert doc["metadata"]["time_axis"].startswith("instructions")
    # One CPU: the time is its count, from the first event (1000), 1 ns each.
    entries = [e for e in doc["traceEvents"] if e.get("cat") == "vm"]
    assert [(e["ts"], e["dur"]) for e in entries] == [(1.0, 1.0), (3.0, 1.0)]
    saves = [e for e in doc["traceEvents"] if e.get("name") == "xsave"]
    assert [e["ts"] for e in saves] == [0.15] and saves[0]["args"]["icount"] == 1150
    v = subprocess.run([sys.executable, "-m", "fputrace", "view", "--static", "--width", "120",
                        str(p)], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    assert "instructions (all CPUs) +0 to +9k of 9k" in v.stdout
    assert "|+0" in v.stdout and "|+" in v.stdout.split("|+0", 1)[1]


def test_a_guest_fp_trap_handled_in_the_world_switch_is_apart(tmp_path: Path) -> None:
    # arm64 VHE: the guest's first FP instruction traps to EL2 (VM exit and
    # FP_TRAP at 100), kvm_hyp_handle_fpsimd() loads its registers and the
    # world switch re-enters at 296: the whole window, 196 instructions, is
    # the trap's; then an exit the run loop handles, 400 instructions.
    b = TraceBuilder(arch=fmt.Arch.AARCH64, features=ICOUNT)
    b.task(A, 10, "vcpu0")
    b.event(VM_EXIT, task=A, flags=F_TASK | 2, icount=100)
    b.event(int(fmt.Kind.FP_TRAP), task=A, flags=F_TASK | 2, icount=100)
    b.event(int(fmt.Kind.FPSIMD_LOAD), task=A, flags=F_TASK | 2, icount=200)
    b.event(VM_ENTRY, task=A, flags=F_TASK | 2, icount=296)
    b.event(VM_EXIT, task=A, flags=F_TASK | 2, icount=1000)
    b.event(VM_ENTRY, task=A, flags=F_TASK | 2, icount=1400)
    ic = instruction_costs(read_trace(b.write(tmp_path / "t.ftr")).events, SYMS, True)
    assert ic is not None
    assert (ic.fp_trap.count, ic.fp_trap.instructions) == (1, 196)
    assert (ic.in_kernel.count, ic.in_kernel.instructions) == (1, 400)
    assert ic.via_user.count == 0


def test_an_event_is_placed_in_the_fpu_path_it_ran_inside(tmp_path: Path) -> None:
    # kvm_story(): the XSAVE at 1150 ran inside fpu_swap_kvm_fpstate()
    # (1100-1237), the XRSTOR at 3340 inside switch_fpu_return() (3300-3345).
    # Nothing encloses the VM exit at 1000, or the hog's __switch_to (not an
    # FPU path). A second CPU's call at the same counts encloses nothing of
    # CPU 0's.
    b = kvm_story()
    timed(b, PUT_FP, P_PUT, 900, 1200, cpu=1)
    t = read_trace(b.write(tmp_path / "k.ftr"))
    kinds = t.events["kind"].tolist()
    xsave, xrstor = kinds.index(XSAVE), kinds.index(XRSTOR)
    vm_exit, switch = kinds.index(VM_EXIT), kinds.index(PROBE, kinds.index(RETURN, xrstor))
    got = enclosing_paths(t.events, SYMS, [xsave, xrstor, vm_exit, switch])
    assert got == {xsave: "fpu_swap_kvm_fpstate", xrstor: "switch_fpu_return"}


def test_the_innermost_of_nested_fpu_paths_is_named(tmp_path: Path) -> None:
    # kvm_arch_vcpu_put_fp() (1000-1400) calls fpu_swap_kvm_fpstate()
    # (1100-1237), whose XSAVE at 1150 is named by the inner one; an XSAVE
    # at 1300, after the inner call returned, by the outer.
    b = TraceBuilder(features=ICOUNT)
    b.task(A, 10, "vcpu0")
    b.event(PROBE, task=A, pc=PUT_FP, index=P_PUT, flags=F_TASK, icount=1000)
    timed(b, SWAP, P_PATH, 1100, 1237)
    b.event(XSAVE, task=A, flags=F_TASK, icount=1150)
    b.event(XSAVE, task=A, flags=F_TASK, icount=1300)
    b.event(RETURN, task=A, pc=PUT_FP, index=P_PUT, flags=F_TASK, icount=1400, aux=1000)
    t = read_trace(b.write(tmp_path / "n.ftr"))
    inner, outer = [i for i, k in enumerate(t.events["kind"].tolist()) if k == XSAVE]
    assert enclosing_paths(t.events, SYMS, [inner, outer]) == {
        inner: "fpu_swap_kvm_fpstate", outer: "kvm_arch_vcpu_put_fp"}
