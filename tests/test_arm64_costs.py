"""arm64 trap costs (analyzers/arm64.py) on a synthetic trace, narrated: the
events one KVM_RUN and one SVE-using task produce, with the counts derived by
hand from the definitions in the analyzer's docstring."""

from __future__ import annotations

from pathlib import Path

from tracebuilder import F_L2, F_TASK, USER_ENTRY, USER_RETURN, VM_ENTRY, VM_EXIT, TraceBuilder

from analyzers.arm64 import trap_costs
from analyzers.counts import task_identity
from fputrace.trace.reader import read_trace

# arm64 kinds and ESR values (docs/trace-format.md).
FP_TRAP, CPACR_WRITE, CPTR_WRITE, FPSIMD_SAVE, FPSIMD_LOAD = 32, 33, 34, 36, 37
ESR_FP = 0x07 << 26
ESR_SVE = 0x19 << 26
CPTR_AS_CPACR = 0xC082 | 0xE08A << 16       # CPACR_EL1 named, CPTR_EL2 reached (E2H)
VCPU_TASK, SVE_TASK = 0xFFFF000001000000, 0xFFFF000002000000
HOST_BUF, GUEST_BUF = 0xFFFF000001000A00, 0xFFFF000003000800


def test_trap_costs(tmp_path: Path) -> None:
    b = TraceBuilder(arch=2)
    b.task(VCPU_TASK, 84, "kvm-pingpong")
    b.task(SVE_TASK, 90, "sve-user")
    t = {"task": VCPU_TASK, "flags": F_TASK | 2}

    def run() -> None:
        # One KVM_RUN: host save at vcpu load, a trapped entry, the guest's FP
        # trap, the guest's load, the MMIO exit, the guest's save, the host's load.
        b.event(USER_ENTRY, **t)
        b.event(FPSIMD_SAVE, addr=HOST_BUF, **t)
        b.event(VM_ENTRY, addr=1, **t)
        b.event(VM_EXIT, addr=1, value=ESR_FP, **t)
        b.event(FP_TRAP, value=ESR_FP, pc=0x10014, task=VCPU_TASK, flags=F_TASK | F_L2 | 2)
        b.event(FPSIMD_LOAD, addr=GUEST_BUF, **t)
        b.event(VM_ENTRY, addr=1, **t)
        b.event(VM_EXIT, addr=1, value=0x24 << 26, **t)
        b.event(FPSIMD_SAVE, addr=GUEST_BUF, **t)
        b.event(FPSIMD_LOAD, addr=HOST_BUF, **t)
        b.event(USER_RETURN, pc=0x4007A8, task=VCPU_TASK, flags=F_TASK)

    run()
    run()
    s = {"task": SVE_TASK, "flags": F_TASK | 2}
    # The SVE task: its first SVE use traps, the kernel allows EL0 SVE
    # (ZEN 0b11); a system call drops it (ZEN 0b01); the next use traps again.
    b.event(USER_ENTRY, **s)
    b.event(FP_TRAP, value=ESR_SVE, pc=0x401000, task=SVE_TASK, flags=F_TASK | 2)
    b.event(CPTR_WRITE, index=CPTR_AS_CPACR, aux=0x310000, value=0x330000, **s)
    b.event(USER_RETURN, pc=0x401000, task=SVE_TASK, flags=F_TASK)
    b.event(USER_ENTRY, **s)
    b.event(CPTR_WRITE, index=CPTR_AS_CPACR, aux=0x330000, value=0x310000, **s)
    b.event(USER_RETURN, pc=0x402000, task=SVE_TASK, flags=F_TASK)
    b.event(FP_TRAP, value=ESR_SVE, pc=0x402004, task=SVE_TASK, flags=F_TASK | 2)
    trace = read_trace(b.write(tmp_path / "t.ftr"))
    c = trap_costs(trace.events, task_identity(trace.events, trace.tasks))

    assert c.traps == {"guest": {"fp": 2}, "user": {"sve": 2}}
    # Two KVM_RUN calls (the first VM entry after each user entry), one guest trap each.
    assert c.kvm_runs == 2 and c.as_json()["guest_traps_per_kvm_run"] == 1.0
    # The guest traps follow a save of the host's buffer and precede a load of
    # the guest's: not a save undone. Nothing here is.
    assert c.save_undone == 0
    # One downgrade (ZEN 0b11 -> 0b01), then one SVE trap after it; the first
    # SVE trap had no downgrade before it.
    assert c.sve_downgrades == 1 and c.sve_retraps == 1
    # Host user entries and returns switch from the vCPU thread to the SVE task once.
    assert c.context_switches == 1 and c.host_traps == 2


def test_a_trap_between_a_save_and_a_load_of_the_same_buffer(tmp_path: Path) -> None:
    # The guest's state saved, and on the next run's trap loaded back from the
    # same buffer with nothing else saved or loaded in between: a save undone.
    b = TraceBuilder(arch=2)
    b.task(VCPU_TASK, 84, "kvm-pingpong")
    t = {"task": VCPU_TASK, "flags": F_TASK | 2}
    b.event(FPSIMD_SAVE, addr=GUEST_BUF, **t)
    b.event(VM_ENTRY, addr=1, **t)
    b.event(VM_EXIT, addr=1, value=ESR_FP, **t)
    b.event(FP_TRAP, value=ESR_FP, task=VCPU_TASK, flags=F_TASK | F_L2 | 2)
    b.event(FPSIMD_LOAD, addr=GUEST_BUF, **t)
    trace = read_trace(b.write(tmp_path / "t.ftr"))
    assert trap_costs(trace.events, task_identity(trace.events, trace.tasks)).save_undone == 1
