"""The ownership analysis on synthetic traces: each test narrates a scenario,
builds it in the real binary format, and states the classes by hand.

Content is written symbolically: a register image L (x87/SSE) with AVX upper
halves X is a save with regs_hash = mem_legacy_hash = L and mem_hash = L + X,
or a restore with mem_legacy_hash = L, mem_hash = L + X and
regs_after_hash = L. Equal symbols mean equal bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from contenthash import AVX_INIT_HASH
from tracebuilder import (
    F_AFTER,
    F_FORM64,
    F_KSIMD,
    F_L2,
    F_MEM,
    F_PRIOR,
    F_REGS,
    F_TASK,
    P_EXEC_RESET,
    P_FORK_COPY,
    P_SIGRETURN,
    PROBE,
    VM_ENTRY,
    VM_EXIT,
    XRSTOR,
    XSAVEOPT,
    Ev,
    TraceBuilder,
)

from analyzers.costs import vcpu_vmcb
from analyzers.ownership import (
    Class,
    ContextKind,
    FindingKind,
    Ownership,
    Unknown,
    analyze,
)
from fputrace.trace.reader import read_trace

T = 0xFFFF888000100000  # task_struct of task T
U = 0xFFFF888000200000  # task_struct of task U
# Each task's fpstate buffer lies at the same offset inside its task_struct
# allocation (thread.fpu is its last member); the analysis learns the offset
# from the tasks' own saves.
FPU_OFFSET = 0x1640
BT = T + FPU_OFFSET  # T's fpstate buffer
BU = U + FPU_OFFSET  # U's fpstate buffer
BG = 0xFFFF888003000040  # a vCPU's guest fpstate buffer
VMCB = 0x6370000
FULL = 0x7  # RFBM and XCR0: x87 | SSE | AVX
M64 = (1 << 64) - 1
L1, L2, L3, LG1, LG2, GARBAGE = 0x1111, 0x2222, 0x3333, 0x6161, 0x6262, 0x9999
X1, XG = 0x10000, 0x20000

N, RS, RR, LOST, STALE, UNK = (Class.NECESSARY, Class.REDUNDANT_SAVE, Class.REDUNDANT_RESTORE,
                               Class.LOST_STATE, Class.STALE_RESTORE, Class.UNKNOWN)


def save(b: TraceBuilder, buf: int, regs: int, avx: int = X1, task: int = T, cpu: int = 0,
         flags: int = 0) -> Ev:
    return b.event(XSAVEOPT, vcpu=cpu, task=task, addr=buf, value=FULL, xcr0=FULL,
                   regs_hash=regs, mem_legacy_hash=regs, mem_hash=(regs + avx) & M64,
                   xstate_bv=FULL, mem_bytes=576 + 64, mem_features=FULL,
                   flags=F_TASK | F_FORM64 | F_MEM | F_REGS | flags)


def restore(b: TraceBuilder, buf: int, before: int, loads: int, avx: int = X1,
            task: int = T, cpu: int = 0, flags: int = 0) -> Ev:
    return b.event(XRSTOR, vcpu=cpu, task=task, addr=buf, value=FULL, xcr0=FULL,
                   regs_hash=before, regs_after_hash=loads, mem_legacy_hash=loads,
                   mem_hash=(loads + avx) & M64, xstate_bv=FULL, mem_bytes=576 + 64,
                   mem_features=FULL,
                   flags=F_TASK | F_FORM64 | F_MEM | F_REGS | F_AFTER | flags)


def classes(tmp_path: Path, b: TraceBuilder) -> tuple[list[Class], Ownership]:
    t = read_trace(b.write(tmp_path / "t.ftr"))
    own = analyze(t.events)
    return [Class(int(c)) for c in own.cls if c != Class.NOT_CLASSIFIED], own


def test_first_save_judged_by_what_the_buffer_held(tmp_path: Path) -> None:
    # The plugin reads a buffer before the first save to it the trace sees
    # (aux, PRIOR_VALID). T's buffer already held L1+X1 when T saved L1+X1:
    # redundant. U's held something else: necessary. A first save without
    # the prior read stays unknown, first sight.
    b = TraceBuilder()
    ev = save(b, BT, regs=L1, flags=F_PRIOR)
    ev.aux = (L1 + X1) & M64
    ev = save(b, BU, regs=L2, task=U, flags=F_PRIOR)
    ev.aux = L1
    save(b, BG, regs=L2, task=U)
    got, own = classes(tmp_path, b)
    assert got == [Class.REDUNDANT_SAVE, N, UNK]
    reasons = [Unknown(int(w)) for w, c in zip(own.unknown_reason, own.cls, strict=True)
               if c == UNK]
    assert reasons == [Unknown.FIRST_SIGHT]


def test_double_save_of_unchanged_registers(tmp_path: Path) -> None:
    # T's state L1 is restored (the trace's first event: nobody known before),
    # saved twice without change (both redundant: the buffer already holds L1),
    # then changed to L2 and saved again (necessary).
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)
    save(b, BT, regs=L1)
    save(b, BT, regs=L1)
    save(b, BT, regs=L2)
    got, own = classes(tmp_path, b)
    assert got == [UNK, RS, RS, N]
    assert own.unknown_reason[0] == Unknown.NO_PREVIOUS_OWNER


def test_redundant_save_needs_the_avx_halves_equal_too(tmp_path: Path) -> None:
    # Same x87/SSE image, but the AVX upper halves changed from X1 to X1+1:
    # the save has new bytes to write.
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)
    save(b, BT, regs=L1, avx=X1 + 1)
    assert classes(tmp_path, b)[0] == [UNK, N]


def test_save_after_restore_of_init_avx(tmp_path: Path) -> None:
    # The restore found AVX in its init state (XSTATE_BV bit 2 clear: no AVX
    # bytes read, the registers' upper halves zeroed). A save of unchanged
    # registers writes zeros there: redundant, judged with the init hash.
    b = TraceBuilder()
    r = restore(b, BT, before=GARBAGE, loads=L1, avx=0)
    r.xstate_bv = 0x3
    save(b, BT, regs=L1, avx=AVX_INIT_HASH)
    assert classes(tmp_path, b)[0] == [UNK, RS]


def test_restore_of_what_is_already_loaded(tmp_path: Path) -> None:
    # T saves L1 (first sight of BT: unknown), then restores BT while the
    # registers still hold L1 for T: redundant. U then runs (restore BU), and
    # T's next restore of BT is necessary.
    b = TraceBuilder()
    save(b, BT, regs=L1)
    restore(b, BT, before=L1, loads=L1)
    restore(b, BU, before=L1, loads=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    got, own = classes(tmp_path, b)
    assert got == [UNK, RR, N, N]
    assert own.unknown_reason[0] == Unknown.FIRST_SIGHT


def test_task_switch_that_loses_dirty_state(tmp_path: Path) -> None:
    # T's state L1 is loaded; T changes its registers (the next event sees L3).
    # U's buffer is restored over them with no save of T: T's change is gone.
    # When T later resumes from BT it gets L1, not L3: lost state, reported at
    # the overwrite with T's last sync and the resumption.
    b = TraceBuilder()
    b.task(T, 10, "t")
    b.task(U, 20, "u")
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)  # T's last sync (event 1)
    restore(b, BU, before=L3, loads=L2, task=U)  # overwrite (event 2)
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)  # resumed (event 4)
    got, own = classes(tmp_path, b)
    assert got == [UNK, N, LOST, RS, N]
    findings = own.findings
    assert len(findings) == 1
    f = findings[0]
    assert (f.kind, f.event, f.last_sync, f.resumed, f.context_buffer) == (
        FindingKind.LOST_STATE, 2, 1, 4, BT)


def test_overwritten_state_of_a_context_that_never_resumes_is_not_lost(tmp_path: Path) -> None:
    # As above, but T never comes back (it exited): dropping its registers is
    # what the kernel does on exit, not a loss.
    b = TraceBuilder()
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    restore(b, BU, before=L3, loads=L2, task=U)
    got, own = classes(tmp_path, b)
    assert got == [UNK, N, N] and own.findings == []


def test_resumption_from_a_rewritten_buffer_is_not_lost(tmp_path: Path) -> None:
    # As the loss above, but when T resumes its buffer holds something else
    # (L2 here): software rewrote it in memory (exec resetting the state,
    # ptrace, KVM_SET_XSAVE). The trace cannot show a loss.
    b = TraceBuilder()
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    restore(b, BU, before=L3, loads=L2, task=U)
    restore(b, BT, before=L2, loads=LG1)
    assert classes(tmp_path, b)[0] == [UNK, N, N, N]


def test_guest_entry_and_exit_with_host_state_kept_lazily(tmp_path: Path) -> None:
    # A KVM_RUN as 6.1 does it (fpu_swap_kvm_fpstate): the vCPU thread's user
    # state is saved (unchanged since its last restore: redundant), the guest
    # state loaded, the guest entered twice (it changes its registers), the
    # guest state saved and the user state restored. Then a second KVM_RUN.
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)  # 0: back in user space
    save(b, BT, regs=L1)  # 1: user state: redundant
    restore(b, BG, before=L1, loads=LG1, avx=XG)  # 2: guest state in
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)
    b.event(VM_EXIT, task=T, flags=F_TASK)
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)
    b.event(VM_EXIT, task=T, flags=F_TASK)
    save(b, BG, regs=LG2, avx=XG)  # 7: the guest changed its state: necessary
    restore(b, BT, before=LG2, loads=L1)  # 8: user state back
    save(b, BT, regs=L1)  # 9: next KVM_RUN: redundant again
    restore(b, BG, before=L1, loads=LG2, avx=XG)  # 10
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)
    save(b, BG, regs=LG2, avx=XG)  # 12: the guest left its state as it was
    got, own = classes(tmp_path, b)
    assert got == [UNK, RS, N, N, N, RS, N, RS]
    assert {b: vcpu_vmcb(v) for b, v in own.guest_buffers.items()} == {BG: VMCB}
    assert own.findings == []
    assert int(own.context_kind[2]) == ContextKind.GUEST


def test_kernel_mode_fpu_section_inside_a_task(tmp_path: Path) -> None:
    # kernel_fpu_begin() saves T's registers (unchanged since loaded:
    # redundant), the kernel uses SIMD (the next event carries KERNEL_SIMD and
    # sees the kernel's garbage), and T's state is restored on the way back to
    # user space: necessary, not a stale restore over newer registers.
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)
    save(b, BT, regs=L1)
    restore(b, BT, before=GARBAGE, loads=L1, flags=F_KSIMD)
    got, own = classes(tmp_path, b)
    assert got == [UNK, RS, N] and own.findings == []


def test_stale_restore(tmp_path: Path) -> None:
    # Without kernel SIMD use, the same restore means T's own newer registers
    # (L3, changed after the load of L1) are replaced by its older buffer.
    b = TraceBuilder()
    save(b, BT, regs=L2)
    restore(b, BT, before=L2, loads=L1)
    restore(b, BT, before=L3, loads=L1)
    got, own = classes(tmp_path, b)
    assert got == [UNK, N, STALE]
    f = own.findings[0]
    assert (f.kind, f.event, f.last_sync) == (FindingKind.STALE_RESTORE, 2, 1)


def test_trace_starting_mid_run(tmp_path: Path) -> None:
    # The recording starts with T's save on CPU 0 and U's restore on CPU 1:
    # neither the buffer's nor the registers' history is known; then T's
    # second save on CPU 0 can be judged.
    b = TraceBuilder()
    save(b, BT, regs=L1)
    restore(b, BU, before=GARBAGE, loads=L2, task=U, cpu=1)
    save(b, BT, regs=L1)
    got, own = classes(tmp_path, b)
    assert got == [UNK, UNK, RS]
    assert [Unknown(int(u)) for u in own.unknown_reason[:2]] == [
        Unknown.FIRST_SIGHT, Unknown.NO_PREVIOUS_OWNER]


def test_operations_inside_the_nested_guest_are_not_judged(tmp_path: Path) -> None:
    b = TraceBuilder()
    save(b, BT, regs=L1, flags=F_L2)
    got, own = classes(tmp_path, b)
    assert got == [UNK]
    assert own.unknown_reason[0] == Unknown.NESTED_GUEST


def lost_state_trace(path: Path) -> Path:
    b = TraceBuilder()
    b.task(T, 10, "t")
    b.task(U, 20, "u")
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    restore(b, BU, before=L3, loads=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    return b.write(path)


def test_report_exit_status_without_lost_state(tmp_path: Path) -> None:
    b = TraceBuilder()
    save(b, BT, regs=L1)
    save(b, BT, regs=L1)
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", "--json",
                        str(b.write(tmp_path / "ok.ftr"))], capture_output=True, text=True)
    assert r.returncode == 0
    rep = json.loads(r.stdout)
    assert rep["classes"]["redundant_save"] == 1 and rep["findings"] == []
    assert rep["redundant_percent"]["saves"] == 50.0


def test_cpu_timeline_of_a_kvm_run(tmp_path: Path) -> None:
    # One KVM_RUN on CPU 0, as in the guest scenario above: the intervals
    # between its boundaries, with owner, content and how each began and ended.
    from analyzers.timeline import Begin, End, context_timeline, cpu_timeline

    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)  # 0
    save(b, BT, regs=L1)  # 1
    restore(b, BG, before=L1, loads=LG1, avx=XG)  # 2
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)  # 3
    b.event(VM_EXIT, task=T, flags=F_TASK)  # 4
    save(b, BG, regs=LG2, avx=XG)  # 5: the guest changed its registers
    restore(b, BT, before=LG2, loads=L1)  # 6
    t = read_trace(b.write(tmp_path / "t.ftr"))
    tl = cpu_timeline(t.events, analyze(t.events))
    rows = [(int(r["start_seq"]), int(r["end_seq"]), int(r["owner"]), int(r["content"]),
             Begin(int(r["begin"])), End(int(r["end"])), bool(r["modified"]),
             bool(r["in_guest"])) for r in tl]
    assert rows == [
        (0, 1, BT, L1, Begin.RESTORE, End.SAVE, False, False),
        (1, 2, BT, L1, Begin.SAVE, End.OVERWRITE, False, False),
        (2, 3, BG, LG1, Begin.RESTORE, End.VM_ENTRY, False, False),
        (3, 4, BG, LG1, Begin.VM_ENTRY, End.VM_EXIT, False, True),
        (4, 5, BG, LG1, Begin.VM_EXIT, End.SAVE, True, False),
        (5, 6, BG, LG2, Begin.SAVE, End.OVERWRITE, False, False),
        (6, 6, BT, L1, Begin.RESTORE, End.END_OF_TRACE, False, False),
    ]
    # The guest context's own timeline: live on CPU 0 from seq 2 to 6; its
    # buffer is stale only while the guest's changed registers are unsaved
    # (the interval from the VM exit to the save is modified, but ends in the
    # save, so even there the buffer is current at its end).
    guest = context_timeline(tl, BG)
    assert (int(guest["start_seq"][0]), int(guest["end_seq"][-1])) == (2, 6)
    assert guest["buffer_current"].tolist() == [True, True, True, True]
    assert bool(tl["modified"][4]) and int(tl["end"][4]) == End.SAVE


def test_timeline_marks_a_buffer_left_stale(tmp_path: Path) -> None:
    # The lost-state scenario: T's interval from its restore (seq 1) to U's
    # restore over its changed registers (seq 2) ends with T's buffer behind
    # its registers; every other interval ends with its buffer current.
    from analyzers.timeline import End, cpu_timeline

    t = read_trace(lost_state_trace(tmp_path / "lost.ftr"))
    tl = cpu_timeline(t.events, analyze(t.events))
    rows = [(int(r["start_seq"]), int(r["owner"]), End(int(r["end"])), bool(r["buffer_current"]))
            for r in tl]
    assert rows == [(0, BU, End.OVERWRITE, True), (1, BT, End.OVERWRITE, False),
                    (2, BU, End.OVERWRITE, True), (3, BT, End.END_OF_TRACE, True)]


def test_sigreturn_replaces_the_registers_on_purpose(tmp_path: Path) -> None:
    # test_stale_restore's sequence with a sigreturn in between: T's handler
    # left L3 in the registers, and sigreturn loads T's buffer, rewritten in
    # memory from the signal frame (arm64: restore_fpsimd_context() ->
    # fpsimd_update_current_state()), which here holds L1 again. The
    # handler's registers are dropped by design: nothing is stale or lost.
    b = TraceBuilder()
    save(b, BT, regs=L2)
    restore(b, BT, before=L2, loads=L1)
    probe(b, P_SIGRETURN)
    restore(b, BT, before=L3, loads=L1)
    restore(b, BT, before=L3, loads=L1)   # the next one is judged again
    got, own = classes(tmp_path, b)
    assert got == [UNK, N, N, STALE]
    assert findings_of(own) == [(FindingKind.STALE_RESTORE, 4)]


# ---- the kernel's ownership model: copies, life cycle, foreign saves ----

CHILD = 0xFFFF888000300000
BC = CHILD + FPU_OFFSET  # the child's buffer


def probe(b: TraceBuilder, which: int, task: int = T, arg0: int = 0, cpu: int = 0) -> Ev:
    return b.event(PROBE, vcpu=cpu, task=task, index=which, value=arg0, flags=F_TASK)


def findings_of(own: Ownership) -> list[tuple[FindingKind, int]]:
    return [(f.kind, f.event) for f in own.findings]


def test_fork_copy_is_no_transfer_of_ownership(tmp_path: Path) -> None:
    # T's state L1 is loaded; fpu_clone() saves it into the child's new buffer
    # (a copy: T still owns the registers). T changes them to L3 and execs:
    # exec drops them and rewrites T's buffer in memory, and T's restore
    # loads the init state. Nothing here lost anyone's state: the old rules,
    # which gave the registers to the last buffer saved into, called the
    # child's context overwritten and T's restore stale.
    b = TraceBuilder()
    restore(b, BT, before=GARBAGE, loads=L1)  # 0
    probe(b, P_FORK_COPY, arg0=CHILD)  # 1
    save(b, BC, regs=L1)  # 2: the fork copy
    probe(b, P_EXEC_RESET)  # 3
    restore(b, BT, before=L3, loads=L2)  # 4: the init state, say L2
    restore(b, BC, before=L2, loads=L1, task=CHILD)  # 5: the child runs
    got, own = classes(tmp_path, b)
    assert got == [UNK, N, N, N]
    assert own.findings == []


def test_foreign_save_and_save_of_nobodys_registers(tmp_path: Path) -> None:
    # U's state is loaded on CPU 0; then T, without a restore of its own (a
    # missed restore, or a save while TIF_NEED_FPU_LOAD said its registers
    # were not live), saves them into its buffer: a foreign save. Then the
    # kernel uses SIMD registers (KERNEL_SIMD) and T saves again: the
    # registers held nobody's state, kernel scratch.
    b = TraceBuilder()
    restore(b, BU, before=GARBAGE, loads=L2, task=U)  # 0
    save(b, BT, regs=L2)  # 1: foreign
    restore(b, BT, before=L2, loads=L1)  # 2: T's own state
    save(b, BT, regs=GARBAGE, flags=F_KSIMD)  # 3: kernel scratch saved
    _, own = classes(tmp_path, b)
    assert findings_of(own) == [(FindingKind.FOREIGN_SAVE, 1), (FindingKind.DROPPED_SAVE, 3)]
    assert own.findings[0].last_sync == 0  # U's restore made the registers U's
    assert all(f.kind.label == "foreign_save" for f in own.findings)


def test_guest_state_saved_into_the_threads_own_buffer_counts_for_the_vcpu(
        tmp_path: Path) -> None:
    # 5.10: kvm_load_guest_fpu() saves T's user state into KVM's user_fpu
    # (BU here) and loads the guest's (BG). Preempted inside KVM_RUN, the
    # guest state is saved into T's own thread.fpu (BT) and restored from it
    # before the next VM entry. Every guest-state operation counts for the
    # vCPU; T's user-state operations do not, and BT is not a guest buffer.
    b = TraceBuilder()
    b.task(T, 10, "vcpu-thread")
    restore(b, BT, before=GARBAGE, loads=L1)  # 0: T's user state
    save(b, BU, regs=L1)  # 1: kvm_save_current_fpu(user_fpu)
    restore(b, BG, before=L1, loads=LG1, avx=XG)  # 2
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)  # 3
    b.event(VM_EXIT, task=T, addr=VMCB, flags=F_TASK)  # 4
    save(b, BT, regs=LG2, avx=XG)  # 5: preempted: guest state into thread.fpu
    restore(b, BU, before=LG2, loads=L2, task=U)  # 6: another task runs
    save(b, BU, regs=L2, task=U)  # 7
    restore(b, BT, before=L2, loads=LG2, avx=XG)  # 8: back, guest state
    b.event(VM_ENTRY, task=T, addr=VMCB, flags=F_TASK)  # 9
    b.event(VM_EXIT, task=T, addr=VMCB, flags=F_TASK)  # 10
    save(b, BG, regs=LG2, avx=XG)  # 11: kvm_put_guest_fpu
    restore(b, BU, before=LG2, loads=L1)  # 12: T's user state back
    t = read_trace(b.write(tmp_path / "t.ftr"))
    own = analyze(t.events, None, t.tasks)
    guest = [i for i, v in enumerate(own.guest_of.tolist()) if v]
    assert guest == [2, 5, 8, 11]
    assert {vcpu_vmcb(int(v)) for v in own.guest_of if v} == {VMCB}
    assert list(own.guest_buffers) == [BG]
