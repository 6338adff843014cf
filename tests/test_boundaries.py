"""Boundary checks and findings on synthetic traces: each test narrates what a
kernel did, builds the trace in the real binary format, and states by hand
what the report must conclude.

Register contents are symbols (see test_ownership.py): a user entry or
return carries the hash of the register file at that moment.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from contenthash import a64_sve_hash, xsave_hash
from test_ownership import (
    BG,
    BT,
    BU,
    FPU_OFFSET,
    FULL,
    L1,
    L2,
    L3,
    LG1,
    LG2,
    VMCB,
    X1,
    T,
    U,
    restore,
    save,
)
from tracebuilder import (
    F_KSIMD,
    F_L2,
    F_MEM,
    F_NO_ENTRY,
    F_QUIET,
    F_REGS,
    F_TASK,
    P_EXEC_RESET,
    P_FORK_COPY,
    P_KFPU_BEGIN,
    P_KFPU_END,
    P_KVM_UABI_SET,
    P_REGSET_SET,
    P_RESTORE_FAULT,
    P_SIGFRAME_SAVE,
    P_SIGRETURN,
    P_TASK_EXIT,
    PROBE,
    USER_ENTRY,
    USER_RETURN,
    VM_ENTRY,
    VM_EXIT,
    TraceBuilder,
)

from analyzers.boundaries import (
    GAP_UNCHECKED,
    VCPU_SET_FPU_UNSEEN,
    VCPU_SET_ON_PURPOSE,
    VCPU_SET_XSAVE,
    check_boundaries,
)
from analyzers.counts import task_identity
from fputrace.trace import format as fmt
from fputrace.trace.reader import read_trace
from fputrace.trace.symbols import Symbols

CHILD = 0xFFFF888000300000  # task_struct of a forked child
BC = CHILD + FPU_OFFSET  # the child's fpstate buffer, where T's is in its task_struct
SIGFRAME = 0x7FFC0000  # a signal frame on T's user stack
# The init state's register hash, from the hash's definition (contenthash):
# FCW 0x37f and MXCSR 0x1f80, everything else zero.
INIT = xsave_hash(bytes.fromhex("7f03") + bytes(22) + bytes.fromhex("801f") + bytes(390))
ENTRY_SYSCALL = 0xFFFFFFFF81E00000
KFPU_BEGIN_FN, KFPU_END_FN = 0xFFFFFFFF81040000, 0xFFFFFFFF81040100
FLUSH_FN = 0xFFFFFFFF81050000
SEED_FN, CRYPTO_FN, FPU_INIT_FN = 0xFFFFFFFFC0001000, 0xFFFFFFFFC0002000, 0xFFFFFFFF83000000
KALLSYMS = f"""\
{ENTRY_SYSCALL:x} T entry_SYSCALL_64
{KFPU_BEGIN_FN:x} T kernel_fpu_begin_mask
{KFPU_END_FN:x} T kernel_fpu_end
{FPU_INIT_FN:x} T fpu__init_cpu
{FLUSH_FN:x} T fpu_flush_thread
{FLUSH_FN + 0x100:x} T copy_fpstate_to_sigframe
{FLUSH_FN + 0x200:x} T xstateregs_set
{FLUSH_FN + 0x300:x} T xfpregs_set
{FLUSH_FN + 0x400:x} T fpregs_set
{FLUSH_FN + 0x500:x} T fpu_swap_kvm_fpstate
{FLUSH_FN + 0x600:x} T fpu_copy_uabi_to_guest_fpstate
{FPU_INIT_FN + 0x100:x} T some_other_function
{FPU_INIT_FN + 0x200:x} t fpr_set
{FPU_INIT_FN + 0x300:x} t sve_set
{SEED_FN:x} t seed_clobber_xmm\t[fputrace_seed]
{SEED_FN + 0x100:x} t seed_missed_restore\t[fputrace_seed]
{SEED_FN + 0x200:x} t seed_ioctl\t[fputrace_seed]
{CRYPTO_FN:x} t sha256_transform\t[sha256_ssse3]
"""


def entry(b: TraceBuilder, regs: int, task: int = T, cpu: int = 0, flags: int = 0) -> None:
    b.event(USER_ENTRY, vcpu=cpu, task=task, pc=ENTRY_SYSCALL, regs_hash=regs,
            flags=F_TASK | F_REGS | flags)


def ret(b: TraceBuilder, regs: int | None, task: int = T, cpu: int = 0, flags: int = 0
        ) -> None:
    """A return to user mode; regs None: a QUIET one (no register read)."""
    if regs is None:
        b.event(USER_RETURN, vcpu=cpu, task=task, pc=0x401000, addr=ENTRY_SYSCALL,
                flags=F_TASK | F_QUIET | 3 | flags)
    else:
        b.event(USER_RETURN, vcpu=cpu, task=task, pc=0x401000, addr=ENTRY_SYSCALL,
                regs_hash=regs, flags=F_TASK | F_REGS | 3 | flags)


def probe(b: TraceBuilder, which: int, task: int = T, arg0: int = 0, cpu: int = 0,
          pc: int = 0, flags: int = 0, simd_pc: int = 0, caller: int = 0) -> None:
    """caller: the return address at the function's entry."""
    b.event(PROBE, vcpu=cpu, task=task, index=which, value=arg0, pc=pc,
            flags=F_TASK | flags, simd_pc=simd_pc & 0xFFFFFFFF, **{fmt.PROBE_CALLER: caller})


def tasks(b: TraceBuilder) -> None:
    b.task(T, 10, "t")
    b.task(U, 20, "u")


def report(tmp_path: Path, b: TraceBuilder) -> tuple[int, dict[str, Any]]:
    p = b.write(tmp_path / "t.ftr")
    (tmp_path / "t.kallsyms.gz").write_bytes(gzip.compress(KALLSYMS.encode()))
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", "--json", str(p)],
                       capture_output=True, text=True)
    assert r.returncode in (0, 3), r.stderr
    return r.returncode, json.loads(r.stdout)


def bounds(tmp_path: Path, b: TraceBuilder, uabi_probed: bool = True) -> Any:
    t = read_trace(b.write(tmp_path / "b.ftr"))
    return check_boundaries(t.events, t.tasks, task_identity(t.events, t.tasks),
                            Symbols.parse(KALLSYMS), uabi_probed, fmt.Arch.X86_64)


def test_quiet_returns_and_equal_registers_are_checked(tmp_path: Path) -> None:
    # T makes three system calls with no FP activity (quiet returns), then one
    # in which it is switched out and back: its state is saved and restored,
    # and it returns with what it entered with.
    b = TraceBuilder()
    tasks(b)
    for _ in range(3):
        ret(b, None)
    entry(b, L1)
    save(b, BT, regs=L1)
    restore(b, BU, before=L1, loads=L2, task=U)
    ret(b, L2, task=U, flags=F_NO_ENTRY)  # U's first return: the trace began mid-syscall
    entry(b, L2, task=U)
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    ret(b, L1)
    code, rep = report(tmp_path, b)
    checks = rep["boundary_checks"]
    assert code == 0 and rep["findings"] == []
    assert checks["by_kind"]["user_return"]["checked"] == 4
    assert checks["by_kind"]["user_return"]["quiet"] == 3
    assert checks["by_kind"]["user_return"]["unchecked"] == {
        "the trace began while the task was in the kernel": 1}
    assert checks["violations"] == 0


def lost_state_with_boundaries(b: TraceBuilder) -> None:
    # T returns to user mode with L1 and changes its registers to L3; it
    # enters the kernel with L3. There U's state is restored over T's live
    # registers without saving them (seq 4: the lost state), and T later
    # resumes from its old buffer (L1) and returns to user mode with L1.
    tasks(b)
    save(b, BU, regs=L2, task=U)  # 0
    restore(b, BT, before=L2, loads=L1)  # 1
    ret(b, L1, flags=F_NO_ENTRY)  # 2
    entry(b, L3)  # 3
    restore(b, BU, before=L3, loads=L2, task=U)  # 4: L3 is lost
    restore(b, BT, before=L2, loads=L1)  # 5
    ret(b, L1)  # 6: T sees L1, not its L3


def test_lost_state_confirmed_at_the_boundary(tmp_path: Path) -> None:
    b = TraceBuilder()
    lost_state_with_boundaries(b)
    code, rep = report(tmp_path, b)
    assert code == 3
    kinds = [(f["kind"], f["event"]["seq"]) for f in rep["findings"]]
    assert kinds == [("lost_state", 4), ("corrupted_state", 6)]
    lost, corrupted = rep["findings"]
    assert lost["confirmed_by"]["seq"] == 6 and lost["task"] == "10 t"
    assert lost["buffer"] == f"{BT:#x}"
    assert (lost["events"]["last_sync"]["seq"], lost["events"]["resumed"]["seq"]) == (1, 5)
    assert (corrupted["events"]["entry"]["seq"], corrupted["events"]["return"]["seq"]) == (3, 6)
    assert rep["boundary_checks"]["findings_by_kind"]["corrupted_state"] == 1
    # The text report leads with the findings.
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", str(tmp_path / "t.ftr")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout.splitlines()[0].startswith("2 finding(s)")


def test_lost_state_not_confirmed_is_not_a_finding(tmp_path: Path) -> None:
    # The same operations with no boundary after them (T never returned to
    # user mode in the trace), and with T returning intact: neither shows a
    # state anyone lost, so the report says so apart and exits 0.
    b = TraceBuilder()
    tasks(b)
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    restore(b, BU, before=L3, loads=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == []
    assert [(u["kind"], u["reason"]) for u in rep["unconfirmed"]] == [
        ("lost_state", "the context reached no boundary after it in the trace")]
    # The short report says so too, one line with the reason, and its class
    # line counts the lost_state operation (it left it out).
    short = subprocess.run([sys.executable, "-m", "fputrace", "report",
                            str(tmp_path / "t.ftr")], capture_output=True, text=True).stdout
    assert "no lost or corrupted FPU state" in short
    assert "1 operation(s) looked like lost or stale state" in short
    assert "  lost_state at seq 2 " in short and \
        "the context reached no boundary after it in the trace" in short
    assert ", lost_state 1, stale_restore 0, " in short

    b = TraceBuilder()
    tasks(b)
    save(b, BU, regs=L2, task=U)
    restore(b, BT, before=L2, loads=L1)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L3)
    restore(b, BU, before=L3, loads=L2, task=U)
    restore(b, BT, before=L2, loads=L3)  # the buffer did hold L3 (saved by memcpy)
    ret(b, L3)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == []


def test_purposeful_changes_are_not_findings(tmp_path: Path) -> None:
    # Signal delivery: T enters with L1, its state goes to the signal frame
    # and the handler starts from the init state. Sigreturn: the frame's
    # state (L1) comes back. Exec: the init state. A ptrace regset write by U
    # into T: T returns with what the tracer wrote (L3). None is a finding,
    # and each is counted as a purposeful change.
    b = TraceBuilder()
    tasks(b)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    probe(b, P_SIGFRAME_SAVE)
    save(b, SIGFRAME, regs=L1)
    restore(b, 0xFFFFFFFF82000000, before=L1, loads=INIT)
    ret(b, INIT)
    entry(b, L2)
    probe(b, P_SIGRETURN)
    restore(b, SIGFRAME, before=L2, loads=L1)
    ret(b, L1)
    entry(b, L1)
    probe(b, P_EXEC_RESET)
    restore(b, BT, before=L1, loads=INIT)
    ret(b, INIT)
    entry(b, INIT)
    save(b, BT, regs=INIT)
    restore(b, BU, before=INIT, loads=L2, task=U)
    probe(b, P_REGSET_SET, task=U, arg0=T)
    restore(b, BT, before=L2, loads=L3)
    ret(b, L3)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == []
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["changed_on_purpose"] == {"sigreturn": 1, "ptrace regset write": 1}
    # The frame's save is checked against its purpose (it holds L1, what T
    # entered the kernel with), and so are the handler's start and exec's
    # first return (the init state each).
    assert user["purpose_checked"] == {"signal frame": 1, "signal handler's init state": 1,
                                       "exec's init state": 1}


def test_a_purposeful_change_that_misses_its_result_is_corrupted_state(
        tmp_path: Path) -> None:
    # The handler must start from the init state, and so must the first
    # return after exec: here the restore before the return loads L2 (a
    # buffer that exec's reset, or fpu__clear_user_states(), did not
    # reset). The finding names the purposeful change (its probe) and the
    # restore. A return after sigreturn with registers other than the
    # entry's is no finding: the frame's contents are not in the trace.
    for change, fn, name, what in (
            (P_EXEC_RESET, FLUSH_FN, "fpu_flush_thread", "the first return after exec"),
            (P_SIGFRAME_SAVE, FLUSH_FN + 0x100, "copy_fpstate_to_sigframe",
             "the signal handler's start")):
        b = TraceBuilder()
        tasks(b)
        entry(b, L1)
        probe(b, change, pc=fn)
        if change == P_SIGFRAME_SAVE:
            save(b, SIGFRAME, regs=L1)
        restore(b, BT, before=L1, loads=L2)
        ret(b, L2)
        code, rep = report(tmp_path, b)
        assert code == 3, rep
        (f,) = rep["findings"]
        assert f["kind"] == "corrupted_state" and f["task"] == "10 t"
        assert f["description"].startswith(what) and "does not hold the init state" in \
            f["description"], f["description"]
        assert f"after {name}() (seq 1)" in f["description"]
        assert f["events"]["purpose"]["seq"] == 1 and f["events"]["restore"]["seq"] == \
            f["events"]["return"]["seq"] - 1
        user = rep["boundary_checks"]["by_kind"]["user_return"]
        assert user["violations"] == 1

    b = TraceBuilder()
    tasks(b)
    entry(b, L1)
    probe(b, P_SIGRETURN)
    restore(b, SIGFRAME, before=L1, loads=L2)
    ret(b, L2)
    code, rep = report(tmp_path, b)
    assert (code, rep["findings"]) == (0, [])


def test_a_signal_frame_with_another_tasks_registers_is_corrupted_state(
        tmp_path: Path) -> None:
    # Linux 5.2's Go/AVX bug class: T enters with L1 and a signal is due;
    # copy_fpstate_to_sigframe() takes T's registers for live, but U ran in
    # between (its L2 is in the registers), and the frame gets L2. The
    # handler's return and the sigreturn look purposeful; the frame's save
    # is where the damage shows, and it names the frame and the save.
    b = TraceBuilder()
    tasks(b)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    save(b, BT, regs=L1)                          # T preempted: its state saved
    restore(b, BU, before=L1, loads=L2, task=U)   # U runs with L2
    probe(b, P_SIGFRAME_SAVE)                     # back in T: no reload of its state
    save(b, SIGFRAME, regs=L2)                    # the frame gets U's registers
    restore(b, 0xFFFFFFFF82000000, before=L2, loads=INIT)
    ret(b, INIT)
    entry(b, INIT)
    probe(b, P_SIGRETURN)
    restore(b, SIGFRAME, before=INIT, loads=L2)
    ret(b, L2)
    code, rep = report(tmp_path, b)
    assert code == 3, rep
    (f,) = rep["findings"]
    assert f["kind"] == "corrupted_state" and f["task"] == "10 t"
    assert f["events"]["frame_save"]["kind"] == "xsaveopt"
    assert f["description"].startswith(f"the signal frame at {SIGFRAME:#x} got FP registers")
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["purpose_checked"] == {"signal frame": 1, "signal handler's init state": 1}
    assert user["violations"] == 1


def test_forked_child_returns_with_the_parents_registers(tmp_path: Path) -> None:
    # fpu_clone(): T (the parent) saves its live registers L1 into the child's
    # buffer. The child's first return to user mode must show L1; a second
    # child that returns with L2 is corrupted.
    for child_sees, want_findings in ((L1, []), (L2, ["corrupted_state"])):
        b = TraceBuilder()
        tasks(b)
        b.task(CHILD, 30, "child")
        entry(b, L1)
        probe(b, P_FORK_COPY, arg0=CHILD)
        save(b, BC, regs=L1)
        ret(b, L1)
        restore(b, BC, before=L1, loads=child_sees, task=CHILD)
        ret(b, child_sees, task=CHILD)
        code, rep = report(tmp_path, b)
        assert [f["kind"] for f in rep["findings"]] == want_findings
        assert rep["boundary_checks"]["by_kind"]["user_return"]["checked"] == 2
        if want_findings:
            assert code == 3
            assert "forked child's first return" in rep["findings"][0]["description"]


def test_fork_by_memory_copy_leaves_the_first_return_unchecked(tmp_path: Path) -> None:
    # 5.10's fpu__copy() with TIF_NEED_FPU_LOAD set (the parent T was
    # preempted inside the syscall): the child's buffer gets a memcpy() of
    # T's buffer (L1), which the trace cannot see. T's next save is of its
    # own registers (here the init state L3, after a restore) into its own
    # buffer, which lies just above the child's task_struct (slab
    # neighbours): that is not the fork copy, and the child's first return
    # with L1 is left unchecked rather than called corrupted.
    child = T - 0x3000
    b = TraceBuilder()
    tasks(b)
    b.task(child, 30, "child")
    entry(b, L1)
    save(b, BT, regs=L1)  # preempted: T's state goes to its buffer
    restore(b, BU, before=L1, loads=L2, task=U)
    probe(b, P_FORK_COPY, arg0=child)  # T again, its registers not loaded: memcpy
    restore(b, BT, before=L2, loads=L3)  # (T's registers change)
    save(b, BT, regs=L3)  # within 64 KiB above the child's pointer
    restore(b, child + FPU_OFFSET, before=L3, loads=L1, task=child)
    ret(b, L1, task=child)
    code, rep = report(tmp_path, b)
    assert (code, rep["findings"]) == (0, [])
    assert rep["boundary_checks"]["by_kind"]["user_return"]["unchecked"] == {
        "first return of a task whose fork copy the trace did not show (a memory copy, or a "
        "fork before the trace)": 1}


def test_missed_restore(tmp_path: Path) -> None:
    # T enters with L1 and is switched out (saved); U's state L2 is restored
    # and U runs. Back to T, the kernel forgets to restore T's state: T
    # returns to user mode holding U's registers.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)
    save(b, BT, regs=L1)
    restore(b, BU, before=L1, loads=L2, task=U)
    ret(b, L2, task=U, flags=F_NO_ENTRY)
    entry(b, L2, task=U)
    save(b, BU, regs=L2, task=U)
    ret(b, L2)
    code, rep = report(tmp_path, b)
    assert code == 3
    (f,) = rep["findings"]
    assert f["kind"] == "corrupted_state" and f["task"] == "10 t"
    assert f["description"].startswith(f"missed restore: its registers were saved to {BT:#x}")
    assert "the registers were last synced by another task" in f["description"]
    assert f["events"]["cause"]["task"] == "20 u"
    assert f["events"]["other_task"]["buffer"] == f"{BU:#x}"  # U's save, last on the CPU


def test_missed_restore_names_the_save_the_section_and_the_simd_code(tmp_path: Path) -> None:
    # The seed module's MISSED ioctl, as the kernel runs it: T enters with
    # L1; seed_missed_restore() calls kernel_fpu_begin_mask(), which saves
    # L1 to T's buffer and sets TIF_NEED_FPU_LOAD; the module clears the
    # flag and seed_clobber_xmm() writes XMM0/1 (L2); kernel_fpu_end(),
    # tail-called, returns to seed_ioctl(). No restore follows: T returns
    # with L2. The finding must tell all of it, each event with its site.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)
    probe(b, P_KFPU_BEGIN, pc=KFPU_BEGIN_FN, arg0=3, caller=SEED_FN + 0x10f)
    save(b, BT, regs=L1)
    probe(b, P_KFPU_END, pc=KFPU_END_FN, flags=F_KSIMD, simd_pc=SEED_FN + 9,
          caller=SEED_FN + 0x238)
    ret(b, L2)
    code, rep = report(tmp_path, b)
    (f,) = rep["findings"]
    assert code == 3 and f["kind"] == "corrupted_state" and f["task"] == "10 t"
    why = f["description"]
    assert why.startswith("missed restore: its registers were saved to "
                          f"{BT:#x} at ")
    assert "when kernel_fpu_begin_mask() called from seed_missed_restore+0xf " \
           "[fputrace_seed] (seq 1) began a kernel FPU section" in why
    assert "kernel SIMD code at seed_clobber_xmm+0x9 [fputrace_seed] then changed them" in why
    assert "the section ended at kernel_fpu_end() called from seed_ioctl+0x38" in why
    assert why.endswith("no restore of this context's state followed before the return")
    ev = f["events"]
    assert list(ev) == ["entry", "section_begin", "save", "simd", "section_end", "return",
                        "cause"]
    assert ev["section_begin"]["caller"] == "seed_missed_restore+0xf [fputrace_seed]"
    assert ev["simd"]["site"] == "seed_clobber_xmm+0x9 [fputrace_seed]"
    assert ev["save"]["buffer"] == f"{BT:#x}" and ev["save"]["seq"] == 2
    assert ev["cause"]["seq"] == 3  # the event the SIMD code ran before


def test_corrupted_saved_buffer(tmp_path: Path) -> None:
    # kernel_fpu_begin() saves T's registers L1 into its buffer; something
    # changes the buffer in memory; the return to user mode restores it.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)
    probe(b, P_KFPU_BEGIN, pc=KFPU_BEGIN_FN, caller=SEED_FN + 0x26b)
    save(b, BT, regs=L1)
    probe(b, P_KFPU_END, pc=KFPU_END_FN, flags=F_KSIMD, simd_pc=CRYPTO_FN,
          caller=SEED_FN + 0x28a)
    restore(b, BT, before=L2, loads=L3)
    ret(b, L3)
    code, rep = report(tmp_path, b)
    (f,) = rep["findings"]
    assert code == 3 and f["kind"] == "corrupted_state"
    assert "changed in memory between its save" in f["description"]
    # The section open meanwhile, where code could reach the saved buffer.
    assert "meanwhile kernel_fpu_begin_mask() called from seed_ioctl+0x6b [fputrace_seed] " \
           "(seq 1) began a kernel FPU section, which ended at kernel_fpu_end() called from " \
           "seed_ioctl+0x8a [fputrace_seed] (seq 3)" in f["description"]
    assert f["events"]["cause"]["seq"] == 4  # the restore that loaded it


def test_kernel_simd_outside_a_section(tmp_path: Path) -> None:
    # SIMD inside kernel_fpu_begin()/end() (sha256) and in the FPU core's own
    # init code is fine; SIMD in seed_clobber_xmm with no section open is a
    # kernel_fpu_misuse finding, and the registers T gets back differ from
    # those it entered with: a corrupted_state explained by it.
    b = TraceBuilder()
    tasks(b)
    probe(b, P_KFPU_BEGIN, task=U, pc=KFPU_BEGIN_FN, flags=F_KSIMD, simd_pc=FPU_INIT_FN + 4)
    probe(b, P_KFPU_END, task=U, pc=KFPU_END_FN, flags=F_KSIMD, simd_pc=CRYPTO_FN)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    ret(b, L2, flags=F_KSIMD)
    b.events[-1].simd_pc = (SEED_FN + 9) & 0xFFFFFFFF
    code, rep = report(tmp_path, b)
    assert code == 3
    assert [f["kind"] for f in rep["findings"]] == ["corrupted_state", "kernel_fpu_misuse"]
    corrupted, misuse = rep["findings"]
    assert "seed_clobber_xmm+0x9 [fputrace_seed]" in misuse["description"]
    assert "kernel SIMD use outside" in corrupted["description"]
    assert rep["boundary_checks"]["kfpu_sections"] == 1


def test_guest_registers_across_exits(tmp_path: Path) -> None:
    # A vCPU leaves the guest with LG1 and enters it again with LG1 (checked);
    # then KVM_SET_XSAVE sets LG2 between an exit and the entry (on purpose:
    # its image was not read, as in a trace of an older plugin); then the
    # guest's registers change with nothing to say why (corrupted).
    b = TraceBuilder()
    tasks(b)

    def vm(kind: int, regs: int) -> None:
        b.event(kind, task=T, addr=VMCB, regs_hash=regs, flags=F_TASK | F_REGS)

    restore(b, BG, before=L1, loads=LG1)
    vm(VM_ENTRY, LG1)
    vm(VM_EXIT, LG1)
    vm(VM_ENTRY, LG1)
    vm(VM_EXIT, LG1)
    probe(b, P_KVM_UABI_SET)
    restore(b, BG, before=LG1, loads=LG2)
    vm(VM_ENTRY, LG2)
    vm(VM_EXIT, LG2)
    vm(VM_ENTRY, LG1)
    got = bounds(tmp_path, b)
    assert (got.vcpu.checked, got.vcpu.violations) == (2, 1)
    assert dict(got.vcpu.changed_on_purpose) == {VCPU_SET_ON_PURPOSE: 1}
    (f,) = got.findings
    assert (f.kind, f.context, f.vmcb) == ("corrupted_state", "vcpu", VMCB)
    assert list(got.per_vcpu.values()) == [(2, 1)]
    assert [vmcb for vmcb, _ in got.per_vcpu] == [VMCB]


def test_guest_corruption_names_the_save_and_the_restore_between(tmp_path: Path) -> None:
    # At the exit KVM saves the guest's LG1 to its buffer BG; before the next
    # entry it restores BG, which now holds LG2: nothing set it on purpose.
    # The finding names both, with their sites, and that BG changed.
    b = TraceBuilder()
    tasks(b)
    b.event(VM_EXIT, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    save(b, BG, regs=LG1)
    restore(b, BG, before=L1, loads=LG2)
    b.event(VM_ENTRY, task=T, addr=VMCB, regs_hash=LG2, flags=F_TASK | F_REGS)
    code, rep = report(tmp_path, b)
    (f,) = rep["findings"]
    assert code == 3 and f["kind"] == "corrupted_state"
    assert f["description"].endswith(
        f"; in between, its last save was to {BG:#x} at 0x0 (seq 1), the restore before the "
        f"entry loaded {BG:#x} at 0x0 (seq 2), the buffer changed in memory between them")
    assert (f["events"]["save"]["seq"], f["events"]["restore"]["seq"]) == (1, 2)
    assert f["events"]["cause"]["seq"] == 2


def test_guest_change_while_in_user_space_unverifiable_without_uabi_probe(
        tmp_path: Path) -> None:
    # 5.10 copies KVM_SET_XSAVE inside kvm.ko, which is not probed: a guest
    # state changed while KVM_RUN had returned to user space is unchecked,
    # not a finding.
    b = TraceBuilder()
    tasks(b)
    b.event(VM_EXIT, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    b.event(VM_ENTRY, task=T, addr=VMCB, regs_hash=LG2, flags=F_TASK | F_REGS)
    got = bounds(tmp_path, b, uabi_probed=False)
    assert got.findings == [] and got.vcpu.violations == 0
    assert sum(got.vcpu.unchecked.values()) == 1
    got = bounds(tmp_path, b, uabi_probed=True)
    assert got.vcpu.violations == 1


def test_task_keys_split_a_reused_task_struct(tmp_path: Path) -> None:
    # pid 10 exits; its task_struct is reused by pid 11. Their boundaries are
    # checked apart: 11's first return is not compared with 10's entry.
    b = TraceBuilder()
    b.task(T, 10, "old")
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    b.task(T, 11, "new")
    ret(b, L2)
    got = bounds(tmp_path, b)
    assert got.findings == []
    assert got.user.unchecked == {"the trace began while the task was in the kernel": 1,
                                  "first return of a task whose fork copy the trace did not "
                                  "show (a memory copy, or a fork before the trace)": 1}


def test_foreign_save_confirmed_at_the_boundary(tmp_path: Path) -> None:
    # T enters with L1 and its state is saved into BT. U's state L2 is loaded
    # and U runs; then T, switched back in without a restore of its own,
    # saves the registers (U's!) into BT (a foreign save: the kernel only
    # saves current's registers), and its return restores BT: T gets U's L2.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)  # 0
    save(b, BT, regs=L1)  # 1
    restore(b, BU, before=L1, loads=L2, task=U)  # 2
    save(b, BT, regs=L2)  # 3: foreign
    restore(b, BT, before=L2, loads=L2)  # 4
    ret(b, L2)  # 5
    code, rep = report(tmp_path, b)
    assert code == 3
    assert [(f["kind"], f["event"]["seq"]) for f in rep["findings"]] == [
        ("foreign_save", 3), ("corrupted_state", 5)]
    foreign, corrupted = rep["findings"]
    assert foreign["confirmed_by"]["seq"] == 5 and foreign["task"] == "10 t"
    assert foreign["events"]["made_live"]["task"] == "20 u"
    assert corrupted["description"].startswith("foreign save")


def test_init_state_after_a_faulting_restore_is_purposeful(tmp_path: Path) -> None:
    # sigreturn from a corrupt frame: the restore faults, and the fix-up
    # (fpu_reset_from_exception_fixup) loads the init state. The task returns
    # with the init state: a purposeful change, checked against its result.
    b = TraceBuilder()
    tasks(b)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L2)
    probe(b, P_RESTORE_FAULT)
    restore(b, 0xFFFFFFFF82000000, before=L2, loads=INIT)
    ret(b, INIT)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == []
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["changed_on_purpose"] == {}
    assert user["purpose_checked"] == {"init state after a faulting restore": 1}


def test_simd_pc_completed_by_the_kernels_own_text_address() -> None:
    # An event keeps the low 32 bits of the kernel SIMD instruction's pc; the
    # high half is the kernel text's: arm64's from _stext, x86's top 2 GiB.
    from analyzers.boundaries import kernel_text_high
    from fputrace.trace.symbols import Symbols

    arm64 = Symbols.parse("ffff800008010000 T _stext\nffff800008020000 T do_neon\n")
    assert kernel_text_high(arm64) == 0xFFFF800000000000
    assert arm64.function(0x08020010 | kernel_text_high(arm64)).startswith("do_neon")
    assert kernel_text_high(Symbols.parse("")) == 0xFFFFFFFF00000000


def damaged_report(tmp_path: Path, b: TraceBuilder, block: int, block_events: int = 4
                   ) -> tuple[int, dict[str, Any]]:
    """report --json --allow-partial of b's trace with one byte of the
    payload of its block number `block` (0: the first after the header)
    flipped: that block's checksum fails and it is lost."""
    p = b.write(tmp_path / "t.ftr", block_events=block_events)
    (tmp_path / "t.kallsyms.gz").write_bytes(gzip.compress(KALLSYMS.encode()))
    data = bytearray(p.read_bytes())
    pos = len(p.read_bytes()) - len(b.build(block_events=block_events)) + \
        read_trace(p).header.header_size
    for _ in range(block):
        pos += 24 + int.from_bytes(data[pos + 12:pos + 16], "little")
    data[pos + 24 + 3] ^= 0xFF
    p.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "fputrace", "report", "--json",
                        "--allow-partial", str(p)], capture_output=True, text=True)
    assert r.returncode in (0, 3), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_a_check_across_lost_events_is_not_judged(tmp_path: Path) -> None:
    # T enters at seq 0 with L1; a signal is delivered (its sigframe probe
    # changes the registers on purpose) and T returns to the handler with
    # the init state. The block
    # holding the probe is lost: the return seems to give T registers it did
    # not leave, but records are missing between entry and return, so it is
    # not judged. The same trace whole shows the signal, and is clean.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)                          # seq 0
    for _ in range(3):
        probe(b, P_KFPU_END, task=U)      # seq 1-3
    probe(b, P_SIGFRAME_SAVE)             # seq 4
    for _ in range(3):
        probe(b, P_KFPU_END, task=U)      # seq 5-7
    ret(b, INIT)                          # seq 8
    status, rep = report(tmp_path, b)
    assert status == 0 and rep["findings"] == []
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["purpose_checked"] == {"signal handler's init state": 1}
    # Blocks: tasks, events 0-3, events 4-7 (lost), events 8.
    status, rep = damaged_report(tmp_path, b, block=2)
    assert status == 0 and rep["findings"] == [], rep["findings"]
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["unchecked"] == {GAP_UNCHECKED: 1} and user["violations"] == 0
    # The oracle: with the gap rule's window missed (the same registers
    # changed with no reason in a whole trace), it is a violation.
    b2 = TraceBuilder()
    tasks(b2)
    entry(b2, L1)
    ret(b2, L2)
    status, rep = report(tmp_path, b2)
    assert status == 3 and [f["kind"] for f in rep["findings"]] == ["corrupted_state"]


def test_a_lost_task_block_renames_no_one(tmp_path: Path) -> None:
    # Process A (pid 10) on task_struct T enters the kernel with L1 and
    # exits; T's memory is reused by process B (pid 30), announced at seq 5,
    # whose first return holds its own registers L2. With B's announcement
    # lost, B's return looks like A's return from A's entry with registers
    # A never had: the announcement's window is a gap, and nothing is found.
    b = TraceBuilder()
    b.task(T, 10, "a")
    entry(b, L1)                          # seq 0
    probe(b, P_TASK_EXIT)                 # seq 1
    probe(b, P_KFPU_END, task=U)          # seq 2, 3
    probe(b, P_KFPU_END, task=U)
    probe(b, P_KFPU_END, task=U)          # seq 4
    b.task(T, 30, "b")                    # announced at seq 5: the second task block
    ret(b, L2, flags=F_NO_ENTRY)          # seq 5: B's first return
    for _ in range(2):
        probe(b, P_KFPU_END, task=U)
    status, rep = report(tmp_path, b)
    assert status == 0 and rep["findings"] == []
    # Blocks: tasks (A), events 0-3, tasks (B), events 4-7.
    status, rep = damaged_report(tmp_path, b, block=2)
    assert status == 0 and rep["findings"] == [], rep["findings"]


def test_a_signal_frame_after_an_entry_the_trace_missed_is_not_judged(
        tmp_path: Path) -> None:
    # T's last entry seen (L1) lies before a return (QUIET): the frame's save
    # belongs to a later stay in the kernel whose entry the trace did not
    # show, and user code may have changed the registers since. Not judged.
    b = TraceBuilder()
    tasks(b)
    entry(b, L1)
    ret(b, None)
    probe(b, P_SIGFRAME_SAVE)
    save(b, SIGFRAME, regs=L2)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == []
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["unchecked"] == {"a signal frame save whose task's entry the trace did not "
                                 "show": 1} and user["purpose_checked"] == {}


def test_a_signal_frame_after_a_failed_sigreturn_is_not_judged(tmp_path: Path) -> None:
    # x86 selftest corrupt_xstate_header: the handler breaks its frame, the
    # sigreturn cannot load it (fpu__restore_sig() leaves the init state),
    # and the kernel delivers SIGSEGV in the same stay in the kernel: that
    # frame holds the init state, not the registers of the sigreturn's
    # entry, on purpose. Not judged against the entry, and said why.
    b = TraceBuilder()
    tasks(b)
    entry(b, L2)
    probe(b, P_SIGRETURN)
    restore(b, 0xFFFFFFFF82000000, before=L2, loads=INIT)
    probe(b, P_SIGFRAME_SAVE)
    save(b, SIGFRAME, regs=INIT)
    restore(b, 0xFFFFFFFF82000000, before=INIT, loads=INIT)
    ret(b, INIT)
    code, rep = report(tmp_path, b)
    assert code == 0 and rep["findings"] == [], rep["findings"]
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    assert user["unchecked"] == {
        "a signal frame after sigreturn in the same stay in the kernel": 1}


def test_the_return_after_sigreturn_holds_the_frame_as_the_handler_left_it(
        tmp_path: Path) -> None:
    # fpu__restore_sig(): the plugin reads the 64-bit frame at the probe (its
    # x87, MXCSR and SSE shares, and XSTATE_BV); the kernel restores it from
    # user memory, and the return must hold it: x87 and SSE from the frame
    # where both the restore's request and the frame's XSTATE_BV have them,
    # else their init state. Shares here are symbols; the init shares come
    # from the hash's definition.
    x87, mxcsr, sse = 0x1111, 0x2222, 0x3333
    sse_init = xsave_hash(bytes(256), 160)
    cases = [
        # (frame's XSTATE_BV, restored from the frame, registers at the return, expected)
        (FULL, True, x87 + mxcsr + sse, "checked"),
        (FULL, True, L2, "finding"),            # the handler's frame lost
        (0b101, True, x87 + mxcsr + sse_init, "checked"),  # SSE in its init state
        (0b101, True, x87 + mxcsr + sse, "finding"),
        (FULL, False, L2, "unchecked"),         # no restore from the frame seen
    ]
    for bv, restored, at_return, expected in cases:
        b = TraceBuilder()
        tasks(b)
        entry(b, L1)
        b.event(PROBE, task=T, index=P_SIGRETURN, value=SIGFRAME, mem_hash=x87 + mxcsr + sse,
                mem_legacy_hash=x87, mem_ext_hash=sse, mem_features=bv, mem_bytes=520,
                flags=F_TASK | F_MEM)
        if restored:
            restore(b, SIGFRAME, before=L1, loads=at_return)
        else:
            restore(b, BT, before=L1, loads=at_return)
        ret(b, at_return)
        code, rep = report(tmp_path, b)
        user = rep["boundary_checks"]["by_kind"]["user_return"]
        if expected == "checked":
            assert (code, rep["findings"]) == (0, []), (bv, rep["findings"])
            assert user["purpose_checked"] == {"sigreturn's frame": 1}
        elif expected == "finding":
            assert code == 3
            (f,) = [f for f in rep["findings"] if f["kind"] == "corrupted_state"]
            assert f["description"].startswith("the return after sigreturn (")
            assert f"frame's FP state at {SIGFRAME:#x} as the handler left it" in \
                f["description"]
            assert f["events"]["purpose"]["seq"] == 1
            assert f["events"]["frame_restore"]["seq"] == 2
        else:
            assert (code, rep["findings"]) == (0, [])
            assert user["changed_on_purpose"] == {"sigreturn": 1}


def test_the_nested_guests_purposeful_changes_are_not_the_vcpu_threads(
        tmp_path: Path) -> None:
    # T is a vCPU thread: the nested guest's kernel runs on it, and its exec
    # probe (flag L2) is the guest's own task's exec, not T's. T's return
    # to user mode must still hold what T entered with: with L1 it is
    # checked and clean; with L2 it is a finding, neither waved through as
    # "changed on purpose" nor judged against exec's init state.
    for at_return, findings in ((L1, []), (L2, ["corrupted_state"])):
        b = TraceBuilder()
        tasks(b)
        entry(b, L1)
        probe(b, P_EXEC_RESET, pc=FLUSH_FN, flags=F_L2)
        restore(b, BT, before=L1, loads=at_return)
        ret(b, at_return)
        code, rep = report(tmp_path, b)
        assert [f["kind"] for f in rep["findings"]] == findings
        assert code == (3 if findings else 0)
        user = rep["boundary_checks"]["by_kind"]["user_return"]
        assert user["changed_on_purpose"] == {} and user["purpose_checked"] == {}
        if findings:
            assert rep["findings"][0]["description"].startswith("the restore")


def test_the_tracees_return_after_a_regset_write_holds_what_the_tracer_wrote(
        tmp_path: Path) -> None:
    # U (the tracer) writes T's FP state with PTRACE_SETREGSET; the plugin
    # reads the image at the probe. T's next return must hold it as the
    # function copies it (xfpregs_set(): the whole FXSAVE region;
    # xstateregs_set(): each component in the image's XSTATE_BV, the rest
    # in its init state), or, where the write was refused, what T entered
    # with. fpregs_set() (the fsave layout) is not read: changed on purpose.
    x87, mxcsr, sse = 0x1111, 0x2222, 0x3333
    sse_init = xsave_hash(bytes(256), 160)
    xstate, xfp, fsave = FLUSH_FN + 0x200, FLUSH_FN + 0x300, FLUSH_FN + 0x400
    cases = [
        (xfp, 0, x87 + mxcsr + sse, "checked"),
        (xfp, 0, L1, "checked"),                 # refused: T's registers as they were
        (xfp, 0, L2, "finding"),
        (xstate, FULL, x87 + mxcsr + sse, "checked"),
        (xstate, 0b101, x87 + mxcsr + sse_init, "checked"),
        (xstate, 0b101, x87 + mxcsr + sse, "finding"),
        (fsave, 0, L2, "unchecked"),
    ]
    for fn, bv, at_return, expected in cases:
        b = TraceBuilder()
        tasks(b)
        ret(b, None)
        entry(b, L1)
        b.event(PROBE, task=U, index=P_REGSET_SET, value=T, pc=fn, mem_hash=x87 + mxcsr + sse,
                mem_legacy_hash=x87, mem_ext_hash=sse, mem_features=bv, mem_bytes=520,
                flags=F_TASK | F_MEM)
        restore(b, BT, before=L1, loads=at_return)
        ret(b, at_return)
        code, rep = report(tmp_path, b)
        user = rep["boundary_checks"]["by_kind"]["user_return"]
        if expected == "checked":
            assert (code, rep["findings"]) == (0, []), (fn, bv, rep["findings"])
            assert user["purpose_checked"] == {"ptrace regset write": 1}
        elif expected == "finding":
            assert code == 3
            (f,) = rep["findings"]
            assert f["description"].startswith("the tracee's return after the regset write ")
            assert f["events"]["purpose"]["seq"] == 2 and f["task"] == "10 t"
        else:
            assert (code, rep["findings"]) == (0, [])
            assert user["changed_on_purpose"] == {"ptrace regset write": 1}


GFPU, OTHER_GFPU = 0xFFFF888000500000, 0xFFFF888000600000  # struct fpu_guest of two vCPUs
SWAP_FN, COPY_UABI_FN = FLUSH_FN + 0x500, FLUSH_FN + 0x600
KVM_IOCTL = 0xFFFFFFFFC0003000  # kvm_arch_vcpu_ioctl's call of the copy, in kvm.ko


def vcpu_back_in_user_space(b: TraceBuilder) -> None:
    """A vCPU's first entry and its exit with LG1: KVM_RUN saves the guest's
    state to BG (fpu_swap_kvm_fpstate()) and returns to user space."""
    tasks(b)
    b.event(VM_ENTRY, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    b.event(VM_EXIT, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    save(b, BG, regs=LG1)
    ret(b, None, flags=F_NO_ENTRY)


def kvm_run(b: TraceBuilder, loads: int, gfpu: int = GFPU) -> None:
    """The next KVM_RUN: fpu_swap_kvm_fpstate(gfpu, true) loads BG, then
    the VM entry."""
    entry(b, L1)
    probe(b, fmt.Probe.FPU_PATH, arg0=gfpu, pc=SWAP_FN)
    b.events[-1].addr = 1
    restore(b, BG, before=L1, loads=loads)
    b.event(VM_ENTRY, task=T, addr=VMCB, regs_hash=loads, flags=F_TASK | F_REGS)


def test_a_vcpu_entry_after_kvm_set_xsave_holds_the_image(tmp_path: Path) -> None:
    # User space sets the guest's state with KVM_SET_XSAVE between two
    # KVM_RUNs; the plugin reads the image at fpu_copy_uabi_to_guest_fpstate().
    # The next entry must hold it as copy_uabi_to_xstate() copies it: each
    # component in the image's XSTATE_BV, the rest in their init state, MXCSR
    # with FP, SSE or YMM. A difference when nothing else ran in between is a
    # finding that names the set; after other system calls (an unseen
    # KVM_SET_FPU among them?) it is unchecked, as is a set of another vCPU
    # (the struct fpu_guest that KVM_RUN loads is not the one set) and one
    # that leaves MXCSR as it was.
    x87, mxcsr, sse = 0x1111, 0x2222, 0x3333
    image = x87 + mxcsr + sse
    sse_init = xsave_hash(bytes(256), 160)
    cases = [
        (FULL, image, 0, GFPU, "checked"),
        (0b101, x87 + mxcsr + sse_init, 0, GFPU, "checked"),    # x87 and YMM: SSE from init
        (FULL, LG2, 0, GFPU, "finding"),
        (0b101, image, 0, GFPU, "finding"),
        (FULL, LG2, 1, GFPU, "unchecked"),                      # another ioctl in between
        (FULL, LG2, 0, OTHER_GFPU, "unchecked"),
        (0b1000, LG2, 0, GFPU, "unchecked"),                    # no FP, SSE or YMM
    ]
    for bv, at_entry, other_calls, entered, expected in cases:
        b = TraceBuilder()
        vcpu_back_in_user_space(b)
        entry(b, L1)
        b.event(PROBE, task=T, index=P_KVM_UABI_SET, value=GFPU, addr=0xFFFF888000700000,
                pc=COPY_UABI_FN, mem_hash=image, mem_legacy_hash=x87, mem_ext_hash=sse,
                mem_features=bv, mem_bytes=520, flags=F_TASK | F_MEM,
                **{fmt.PROBE_CALLER: KVM_IOCTL})
        ret(b, L1)
        for _ in range(other_calls):
            entry(b, L1)
            ret(b, L1)
        kvm_run(b, at_entry, entered)
        got = bounds(tmp_path, b)
        case = (bv, at_entry, other_calls, entered)
        assert got.vcpu.changed_on_purpose == {}, case
        if expected == "checked":
            assert (got.vcpu.checked, got.vcpu.violations) == (1, 0), case
            assert got.vcpu.purpose_checked == {VCPU_SET_XSAVE: 1}, case
            assert got.findings == [], case
        elif expected == "finding":
            assert (got.vcpu.checked, got.vcpu.violations) == (1, 1), case
            assert got.vcpu.purpose_checked == {VCPU_SET_XSAVE: 1}, case
            (f,) = got.findings
            assert f.context == "vcpu" and f.explanation.startswith(
                "the guest's FP registers at this VM entry do not hold the image that "
                "KVM_SET_XSAVE wrote (fpu_copy_uabi_to_guest_fpstate() called from "), case
            assert [role for role, _ in f.trail] == ["save", "purpose", "restore"], case
        else:
            assert (got.vcpu.checked, got.findings) == (0, []), case
            assert sum(got.vcpu.unchecked.values()) == 2, case  # with the first entry


def test_a_vcpu_state_changed_in_its_buffer_while_in_user_space_is_unchecked(
        tmp_path: Path) -> None:
    # KVM_SET_FPU writes the guest's buffer by memcpy inside kvm.ko, which is
    # not probed: a guest state that changed in its buffer while KVM_RUN had
    # returned to user space, with no set seen, may be one. If the buffer
    # came back as it was saved and the entry still differs, nothing in user
    # space explains it: a finding.
    for loads, buffer, expected in [(LG2, LG2, "unchecked"), (LG2, LG1, "finding")]:
        b = TraceBuilder()
        vcpu_back_in_user_space(b)
        entry(b, L1)
        probe(b, fmt.Probe.FPU_PATH, arg0=GFPU, pc=SWAP_FN)
        b.events[-1].addr = 1
        r = restore(b, BG, before=L1, loads=loads)
        r.mem_hash = (buffer + X1) & ((1 << 64) - 1)
        b.event(VM_ENTRY, task=T, addr=VMCB, regs_hash=loads, flags=F_TASK | F_REGS)
        got = bounds(tmp_path, b)
        if expected == "unchecked":
            assert got.vcpu.unchecked[VCPU_SET_FPU_UNSEEN] == 1 and got.findings == []
        else:
            assert got.vcpu.violations == 1 and len(got.findings) == 1


def arm64_bounds(tmp_path: Path, b: TraceBuilder) -> Any:
    t = read_trace(b.write(tmp_path / "a.ftr"))
    return check_boundaries(t.events, t.tasks, task_identity(t.events, t.tasks),
                            Symbols.parse(KALLSYMS), True, fmt.Arch.AARCH64)


def test_arm64_sve_state_beyond_v_comes_back_from_an_exception(tmp_path: Path) -> None:
    # T runs with SVE enabled for EL0 (its Z upper bits, P and FFR hash to
    # S1). An interrupt (ESR 0) or a data abort (EC 0x24) keeps that state:
    # the return must hold S1, and a return with S2 is a finding. A system
    # call (EC 0x15) leaves it all zero or as it was (sve.rst: "preserved
    # or replaced with zeros"), a signal handler starts with
    # it (setup_return() leaves the registers), an entry with SVE disabled for EL0
    # that is not an SVE access trap tells nothing, and a vector length
    # changed in between makes another register file: none of these is a
    # check; after an exec it is unknown. An SVE access trap (EC 0x19)
    # enables SVE with that state all zero (do_sve_acc()), whose hash the
    # hash's definition gives.
    S1, S2, VL = 0x5151, 0x5252, 64
    sve, svc, abort = F_TASK | F_REGS | fmt.Flag.SVE_VALID, 0x15 << 26, 0x24 << 26
    zero = sve_zero_hash(VL)
    cases = [
        (0, sve, S1, VL, None, "checked"),
        (abort, sve, S1, VL, None, "checked"),
        (0, sve, S2, VL, None, "finding"),
        (0x19 << 26, F_TASK | F_REGS, zero, VL, None, "checked"),
        (0x19 << 26, F_TASK | F_REGS, S1, VL, None, "finding"),
        # A system call leaves it zero or as it was (sve.rst), nothing else.
        (svc, sve, S1, VL, None, "checked"),
        (svc, sve, zero, VL, None, "checked"),
        (svc, F_TASK | F_REGS, zero, VL, None, "checked"),
        (svc, sve, S2, VL, None, "finding"),
        (svc, F_TASK | F_REGS, S1, VL, None, "finding"),
        # A signal handler starts with the state it interrupted (setup_return()).
        (0, sve, S1, VL, P_SIGFRAME_SAVE, "checked"),
        (0, sve, S2, VL, P_SIGFRAME_SAVE, "finding"),
        (0, sve, S2, VL, P_EXEC_RESET, "unchecked"),
        (0, F_TASK | F_REGS, S2, VL, None, "unchecked"),
        (0, sve, S2, 2 * VL, None, "unchecked"),
    ]
    for esr, entry_flags, at_return, vl, change, expected in cases:
        b = TraceBuilder(arch=2)
        tasks(b)
        ret(b, None)
        b.event(USER_ENTRY, task=T, pc=ENTRY_SYSCALL, regs_hash=L1, value=esr,
                regs_after_hash=S1, index=VL, flags=entry_flags)
        save(b, BT, regs=L1)
        if change is not None:
            probe(b, change)
        restore(b, BT, before=L2, loads=L1)
        b.event(USER_RETURN, task=T, pc=0x401000, addr=ENTRY_SYSCALL, regs_hash=L1,
                regs_after_hash=at_return, index=vl, flags=sve | 3)
        got = arm64_bounds(tmp_path, b)
        case = (esr, entry_flags, at_return, vl, change)
        trap = esr == 0x19 << 26
        if expected == "checked":
            assert (got.sve.checked, got.sve.violations, got.findings) == (1, 0, []), case
        elif expected == "finding":
            assert (got.sve.checked, got.sve.violations) == (1, 1), case
            (f,) = got.findings
            assert f.explanation.startswith("the SVE registers beyond V0-V31 "), case
            assert ("are not all zero after an SVE access trap" in f.explanation) == trap
            assert ("are neither all zero nor those the task entered with, after a system "
                    "call" in f.explanation) == (esr == svc), case
        if expected != "unchecked":
            assert got.sve.purpose_checked == (
                {"SVE access trap's zeroed state": 1} if trap else
                {"system call's kept or zeroed SVE state": 1} if esr == svc else
                {"signal handler's SVE state": 1} if change == P_SIGFRAME_SAVE else {}), case
        else:
            assert (got.sve.checked, sum(got.sve.unchecked.values())) == (0, 1), case
            assert not [f for f in got.findings if "SVE" in f.explanation], case


def sve_zero_hash(vl: int) -> int:
    """The SVE state beyond V0-V31 all zero at vector length vl, from the
    hash's definition (contenthash)."""
    return a64_sve_hash(b"", vl)


def test_the_compiled_sve_zero_hash_follows_the_definition() -> None:
    from analyzers import native

    for vl in (16, 64, 256):
        assert native.a64_sve_zero_hash(vl) == sve_zero_hash(vl), vl


SVE_ON = F_TASK | F_REGS | fmt.Flag.SVE_VALID
ESR_SVC, ESR_IRQ = 0x15 << 26, 0


def arm64_delivery(b: TraceBuilder, esr: int, entry_sve: int | None, frame_v: int | None,
                   frame_sve: tuple[int, int, int] | None, vl: int = 64) -> None:
    """T enters the kernel (ESR esr; its SVE state beyond V0-V31 entry_sve,
    None: SVE disabled for EL0) with V0-V31 L1, a signal is delivered
    (fpsimd_signal_preserve_current_state(), the SIGFRAME_SAVE probe), the
    handler starts with L1, and the plugin reads its frame there: the
    FP/SIMD record's hash frame_v (None: not found) and the SVE record's
    (its Z0-Z31 low halves with FPSR/FPCR, the rest, its flags; None: no
    register data)."""
    tasks(b)
    ret(b, None)
    flags = F_TASK | F_REGS if entry_sve is None else SVE_ON
    b.event(USER_ENTRY, task=T, pc=ENTRY_SYSCALL, regs_hash=L1, value=esr,
            regs_after_hash=entry_sve or 0, index=vl, flags=flags)
    probe(b, P_SIGFRAME_SAVE)
    save(b, BT, regs=L1)
    b.event(USER_RETURN, task=T, pc=0x402000, addr=ENTRY_SYSCALL, regs_hash=L1,
            regs_after_hash=entry_sve or 0, index=vl, flags=flags | 3)
    frame: dict[str, int] = {"flags": F_TASK}
    if frame_v is not None:
        frame.update(mem_hash=frame_v, mem_bytes=528, flags=F_TASK | F_MEM)
    if frame_sve is not None:
        v_part, rest, record_flags = frame_sve
        frame.update(mem_legacy_hash=v_part, mem_ext_hash=rest,
                     mem_features=vl | record_flags << 16,
                     flags=frame["flags"] | fmt.Flag.SVE_VALID)
    b.event(fmt.Kind.SIGFRAME, task=T, pc=0x402000, addr=SIGFRAME, **frame)


def test_an_arm64_signal_frame_holds_the_registers_the_task_entered_with(
        tmp_path: Path) -> None:
    # setup_rt_frame() saves the live registers into the task's state and
    # copies them to the frame's FP/SIMD record: read at the handler's
    # start, it must hold V0-V31, FPSR and FPCR as the task entered (L1).
    # With L2 the frame got other registers: a finding at the frame, which
    # names the delivery. A frame whose record could not be read tells
    # nothing.
    for frame_v, expected in [(L1, "checked"), (L2, "finding"), (None, "unchecked")]:
        b = TraceBuilder(arch=2)
        arm64_delivery(b, ESR_SVC, None, frame_v, None)
        got = arm64_bounds(tmp_path, b)
        if expected == "checked":
            assert got.findings == [] and got.user.purpose_checked["signal frame"] == 1
        elif expected == "finding":
            (f,) = got.findings
            assert (f.kind, f.context, f.before, f.after) == (
                "corrupted_state", "signal_frame", 1, 5)
            assert f.explanation.startswith(
                f"the signal frame at {SIGFRAME:#x} got FP registers that are not those the "
                "task entered the kernel with (written by ")
            assert got.user.violations == 1
        else:
            assert got.findings == [] and got.user.unchecked[
                "a signal frame whose FP/SIMD record could not be read"] == 1


def test_an_arm64_signal_frames_sve_record_is_the_tasks_sve_state(tmp_path: Path) -> None:
    # preserve_sve_context() writes the SVE registers of a task whose state
    # was saved in SVE form. Its Z0-Z31's low halves are the FP/SIMD
    # record's V0-V31 (one saved state; 61da7c8e2a60 fixed a frame that took
    # a stale SVE buffer). Beyond V0-V31: what the entry had (S1) after an
    # interrupt, all zero after a system call (fp_user_discard()). An
    # interrupt that kept the SVE state and a frame without it loses it at
    # sigreturn. Streaming mode's record (flag 1) is SME's: not checked.
    S1, S2, VL = 0x5151, 0x5252, 64
    zero = sve_zero_hash(VL)
    cases = [
        # (entry ESR, entry SVE, frame SVE record, expected, text)
        (ESR_IRQ, S1, (L1, S1, 0), "checked", ""),
        (ESR_IRQ, S1, (L1, S2, 0), "finding", "differ from those the task entered with"),
        (ESR_IRQ, S1, (L2, S1, 0), "finding", "do not hold the V0-V31 of the frame's FP/SIMD"),
        (ESR_IRQ, S1, None, "finding", "has no registers, while the task's SVE state"),
        (ESR_SVC, S1, (L1, zero, 0), "checked", ""),
        (ESR_SVC, S1, (L1, S1, 0), "checked", ""),
        (ESR_SVC, S1, (L1, S2, 0), "finding", "are neither all zero nor the task's"),
        (ESR_SVC, S1, None, "nothing", ""),
        (ESR_IRQ, None, (L1, S1, 0), "unchecked", ""),
        (ESR_IRQ, S1, (L1, S2, 1), "unchecked", ""),
    ]
    for esr, entry_sve, frame_sve, expected, text in cases:
        b = TraceBuilder(arch=2)
        arm64_delivery(b, esr, entry_sve, L1, frame_sve, VL)
        got = arm64_bounds(tmp_path, b)
        case = (esr, entry_sve, frame_sve)
        # The FP/SIMD record holds L1 in every case.
        assert got.user.purpose_checked["signal frame"] == 1, case
        frame_checks = got.sve.purpose_checked["signal frame's SVE record"]
        if expected == "checked":
            assert (frame_checks, got.findings) == (1, []), case
        elif expected == "finding":
            (f,) = got.findings
            assert (frame_checks, f.context, f.after) == (1, "signal_frame", 5), case
            assert f.explanation.startswith("the signal frame's SVE record"), case
            assert text in f.explanation, (case, f.explanation)
        else:
            assert (frame_checks, got.findings) == (0, []), case
            assert sum(got.sve.unchecked.values()) == (expected == "unchecked"), case


def test_the_return_after_an_arm64_sigreturn_holds_the_frame_as_the_handler_left_it(
        tmp_path: Path) -> None:
    # rt_sigreturn: the plugin read the frame at its SVC (in user mode), into
    # the sigreturn probe's memory fields; restore_fpsimd_context() loads
    # V0-V31, FPSR and FPCR from its FP/SIMD record (F), and
    # restore_sve_fpsimd_context() the SVE registers from its SVE record
    # (S3 beyond V0-V31). The return must hold both.
    F, S3, S2, VL = 0x4646, 0x5353, 0x5252, 64
    cases = [
        (F, S3, "clean"), (L2, S3, "registers"), (F, S2, "sve"),
    ]
    for at_return, sve_at_return, expected in cases:
        b = TraceBuilder(arch=2)
        tasks(b)
        ret(b, None)
        b.event(USER_ENTRY, task=T, pc=ENTRY_SYSCALL, regs_hash=L1, value=ESR_SVC,
                regs_after_hash=0x5151, index=VL, flags=SVE_ON)
        b.event(PROBE, task=T, index=P_SIGRETURN, value=0xFFFF800008000000, mem_hash=F,
                mem_legacy_hash=F, mem_ext_hash=S3, mem_features=VL, mem_bytes=528,
                flags=F_TASK | F_MEM | fmt.Flag.SVE_VALID)
        restore(b, BT, before=L1, loads=at_return)
        b.event(USER_RETURN, task=T, pc=0x401000, addr=ENTRY_SYSCALL, regs_hash=at_return,
                regs_after_hash=sve_at_return, index=VL, flags=SVE_ON | 3)
        got = arm64_bounds(tmp_path, b)
        assert got.user.purpose_checked["sigreturn's frame"] == 1, expected
        assert got.sve.purpose_checked["sigreturn's SVE record"] == 1, expected
        texts = [f.explanation for f in got.findings]
        if expected == "clean":
            assert texts == []
        elif expected == "registers":
            (t,) = texts
            assert t.startswith("the return after sigreturn (") and \
                "FP/SIMD record of the signal frame as the handler left it" in t
        else:
            (t,) = texts
            assert "the SVE registers beyond V0-V31 of the signal frame's SVE record" in t


def test_an_arm64_tracees_return_after_fpr_set_holds_what_the_tracer_wrote(
        tmp_path: Path) -> None:
    # U (the tracer) writes T's V0-V31, FPSR and FPCR with PTRACE_SETREGSET
    # NT_PRFPREG; the plugin read the struct user_fpsimd_state at U's SVC
    # (W) into the fpr_set() probe. __fpr_set() copies it whole, so T's
    # next return must hold W. sve_set()'s image is not read: changed on
    # purpose, unchecked.
    W = 0x5757
    fpr, sve_fn = FPU_INIT_FN + 0x200, FPU_INIT_FN + 0x300
    for fn, at_return, expected in [(fpr, W, "checked"), (fpr, L2, "finding"),
                                    (sve_fn, L2, "unchecked")]:
        b = TraceBuilder(arch=2)
        tasks(b)
        ret(b, None)
        entry(b, L1)
        mem = {"mem_hash": W, "mem_bytes": 520, "flags": F_TASK | F_MEM} \
            if fn == fpr else {"flags": F_TASK}
        b.event(PROBE, task=U, index=P_REGSET_SET, value=T, pc=fn, **mem)
        restore(b, BT, before=L1, loads=at_return)
        ret(b, at_return)
        got = arm64_bounds(tmp_path, b)
        if expected == "checked":
            assert got.findings == [] and got.user.purpose_checked == {
                "ptrace regset write": 1}
        elif expected == "finding":
            (f,) = got.findings
            assert f.explanation.startswith("the tracee's return after the regset write ")
            assert (f.before, f.after) == (2, 4)
        else:
            assert got.findings == [] and got.user.changed_on_purpose == {
                "ptrace regset write": 1}


def test_a_foreign_save_into_a_guest_fpstate_is_confirmed_at_the_vm_entry(
        tmp_path: Path) -> None:
    # The vCPU thread T leaves the guest (LG1), sleeps in the guest's halt:
    # the context switch saves LG1 into the guest's buffer BG. U runs with
    # L2. T comes back and KVM_RUN ends: fpu_swap_kvm_fpstate() saves the
    # registers, U's L2, into BG (c9aef3b85f42's bug) and loads T's own
    # state L1 from BT; T's return to user space is intact. The next
    # KVM_RUN loads BG: the guest enters with L2. The foreign save harmed
    # the vCPU, so the vCPU's next entry confirms it, not T's next return;
    # and it names the FPU path it ran inside.
    b = TraceBuilder(features=7 | int(fmt.Feature.PROBES) | int(fmt.Feature.ICOUNT))
    tasks(b)
    n = iter(range(100, 10_000, 100))

    def ev(kind: int, **f: int) -> None:
        b.event(kind, icount=next(n), **f)

    ev(VM_ENTRY, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    ev(VM_EXIT, task=T, addr=VMCB, regs_hash=LG1, flags=F_TASK | F_REGS)
    save(b, BG, regs=LG1).icount = next(n)  # 2: the switch away saves the guest
    restore(b, BU, before=LG1, loads=L2, task=U).icount = next(n)  # 3
    save(b, BU, regs=L2, task=U).icount = next(n)  # 4: U switched out
    start = next(n)
    ev(PROBE, task=T, index=fmt.Probe.FPU_PATH, pc=SWAP_FN, flags=F_TASK)
    b.events[-1].icount = start
    save(b, BG, regs=L2).icount = next(n)  # 6: the foreign save
    restore(b, BT, before=L2, loads=L1).icount = next(n)  # 7
    ev(fmt.Kind.PROBE_RETURN, task=T, index=fmt.Probe.FPU_PATH, pc=SWAP_FN, aux=start,
       flags=F_TASK)
    b.events[-1].icount = next(n)
    ev(USER_RETURN, task=T, pc=0x401000, addr=ENTRY_SYSCALL, regs_hash=L1,
       flags=F_TASK | F_REGS | 3 | F_NO_ENTRY)  # 9: intact
    ev(USER_ENTRY, task=T, pc=ENTRY_SYSCALL, regs_hash=L1, flags=F_TASK | F_REGS)
    restore(b, BG, before=L1, loads=L2).icount = next(n)  # 11
    ev(VM_ENTRY, task=T, addr=VMCB, regs_hash=L2, flags=F_TASK | F_REGS)  # 12
    code, rep = report(tmp_path, b)
    assert code == 3
    assert [(f["kind"], f["event"]["seq"]) for f in rep["findings"]] == [
        ("foreign_save", 6), ("corrupted_state", 12)], rep["unconfirmed"]
    foreign = rep["findings"][0]
    assert foreign["confirmed_by"]["seq"] == 12
    assert foreign["events"]["made_live"]["task"] == "20 u"
    assert foreign["event"]["within"] == "fpu_swap_kvm_fpstate"


def test_a_hard_interrupts_kernel_fpu_section_after_a_right_restore_is_named(
        tmp_path: Path) -> None:
    # 59f5ede3bc0f's bug: copy_fpstate_to_sigframe() restores T's own state
    # L1 (fpregs_restore_userregs(), the registers read right after hold
    # L1), then a hard interrupt inside that fpregs_lock() region runs a
    # kernel FPU section: kernel_fpu_begin_mask() saves L1 and SIMD code
    # writes L2, and the frame's XSAVE takes L2. The restore was right; the
    # finding must name the section after it, not the restore.
    b = TraceBuilder()
    tasks(b)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    save(b, BT, regs=L1)
    probe(b, P_SIGFRAME_SAVE)
    restore(b, BT, before=L3, loads=L1)
    probe(b, P_KFPU_BEGIN, pc=KFPU_BEGIN_FN, arg0=2, caller=SEED_FN + 0x10f)
    save(b, BT, regs=L1)
    probe(b, P_KFPU_END, pc=KFPU_END_FN, flags=F_KSIMD, simd_pc=SEED_FN + 9,
          caller=SEED_FN + 0x238)
    save(b, SIGFRAME, regs=L2)                    # the frame gets the kernel's L2
    code, rep = report(tmp_path, b)
    assert code == 3, rep
    (f,) = rep["findings"]
    why = f["description"]
    assert why.startswith(f"the signal frame at {SIGFRAME:#x} got FP registers"), why
    assert "missed restore: its registers were saved to " in why
    assert "when kernel_fpu_begin_mask() called from seed_missed_restore+0xf" in why
    assert "kernel SIMD code at seed_clobber_xmm+0x9 [fputrace_seed] then changed them" in why
    assert f["events"]["section_begin"]["caller"] == "seed_missed_restore+0xf [fputrace_seed]"
    assert "restore" not in f["events"], f["events"]


def test_kernel_simd_with_nothing_to_save_is_named(tmp_path: Path) -> None:
    # The same where nothing between the entry and the frame's save saved
    # T's registers (kernel_fpu_begin_mask() found TIF_NEED_FPU_LOAD set,
    # as an earlier section of the interrupt left it): the SIMD code and
    # its section are still what changed the registers the frame took.
    b = TraceBuilder()
    tasks(b)
    ret(b, L1, flags=F_NO_ENTRY)
    entry(b, L1)
    probe(b, P_SIGFRAME_SAVE)
    probe(b, P_KFPU_BEGIN, pc=KFPU_BEGIN_FN, arg0=2, caller=SEED_FN + 0x10f)
    probe(b, P_KFPU_END, pc=KFPU_END_FN, flags=F_KSIMD, simd_pc=SEED_FN + 9,
          caller=SEED_FN + 0x238)
    save(b, SIGFRAME, regs=L2)
    code, rep = report(tmp_path, b)
    assert code == 3, rep
    why = rep["findings"][0]["description"]
    assert "missed restore: kernel SIMD code at seed_clobber_xmm+0x9 [fputrace_seed] changed " \
           "the registers, in the kernel FPU section that kernel_fpu_begin_mask() called " \
           "from seed_missed_restore+0xf [fputrace_seed]" in why, why


def test_an_arm64_frames_stale_sve_record_names_the_saves(tmp_path: Path) -> None:
    # 61da7c8e2a60's bug: T's SVE state was saved as SVE once (a SIGTRAP's
    # delivery, sve_save_state); later it enters with a system call, which
    # saves V0-V31 only (fpsimd_save_state), and preserve_sve_context()
    # copies the old SVE buffer into the frame anyway: its Z low halves (L2)
    # are not the FP/SIMD record's V0-V31 (L1). The finding names the
    # delivery, the FP/SIMD-only save and the SVE save the record came from.
    b = TraceBuilder(arch=2)
    tasks(b)
    ret(b, None)
    b.event(fmt.Kind.SVE_SAVE, task=T, pc=0xFFFF800080010000, addr=BT, flags=F_TASK)  # 1
    ret(b, None)
    b.event(USER_ENTRY, task=T, pc=ENTRY_SYSCALL, regs_hash=L1, value=ESR_SVC,
            regs_after_hash=0x5151, index=64, flags=SVE_ON)
    probe(b, P_SIGFRAME_SAVE)
    b.event(fmt.Kind.FPSIMD_SAVE, task=T, pc=0xFFFF800080020000, addr=BT, flags=F_TASK)  # 5
    b.event(USER_RETURN, task=T, pc=0x402000, addr=ENTRY_SYSCALL, regs_hash=L1,
            regs_after_hash=0x5151, index=64, flags=SVE_ON | 3)
    b.event(fmt.Kind.SIGFRAME, task=T, pc=0x402000, addr=SIGFRAME, mem_hash=L1,
            mem_bytes=528, mem_legacy_hash=L2, mem_ext_hash=0x5151, mem_features=64,
            flags=F_TASK | F_MEM | fmt.Flag.SVE_VALID)
    got = arm64_bounds(tmp_path, b)
    (f,) = got.findings
    assert "do not hold the V0-V31 of the frame's FP/SIMD record" in f.explanation
    assert "last saved at 0xffff800080020000 (seq 5), FP/SIMD only; the record holds the " \
           "task's SVE buffer as its last SVE save left it, at 0xffff800080010000 (seq 1)" \
           in f.explanation, f.explanation
    assert [role for role, _ in f.trail] == ["sve_save", "purpose", "save"]


def test_an_arm64_return_that_drops_live_sve_state_is_found(tmp_path: Path) -> None:
    # fbc7e61195e2's bug: T's SVE state (S1 beyond V0-V31) is live with SVE
    # enabled for user mode, but only because kvm_arch_vcpu_put_fp() set
    # CPACR_EL1.ZEN to 0b11 while TIF_SVE was clear. An interrupt preempts
    # T: the switch saves V0-V31 only, and T's return has SVE disabled
    # again, its state beyond V0-V31 gone. The finding names the save and
    # the write that enabled SVE. The same return after a system call (the
    # ABI discards the state), or with that state all zero, is no finding.
    def story(esr: int, entry_sve: int) -> TraceBuilder:
        b = TraceBuilder(arch=2)
        tasks(b)
        ret(b, None)
        b.event(fmt.Kind.CPTR_WRITE, task=T, pc=0xFFFF800080030000, value=0x330000,
                aux=0x310000, index=0xE08AC082, flags=F_TASK)  # 1: ZEN 0b01 -> 0b11
        b.event(USER_ENTRY, task=T, pc=0x401000, regs_hash=L1, value=esr,
                regs_after_hash=entry_sve, index=64, flags=SVE_ON)  # 2
        b.event(fmt.Kind.FPSIMD_SAVE, task=T, pc=0xFFFF800080020000, addr=BT,
                flags=F_TASK)  # 3
        b.event(fmt.Kind.FPSIMD_LOAD, task=T, pc=0xFFFF800080021000, addr=BT,
                flags=F_TASK)  # 4
        b.event(USER_RETURN, task=T, pc=0x401000, addr=0x401000, regs_hash=L1,
                flags=F_TASK | F_REGS | 3)  # 5: SVE disabled, not read
        return b

    got = arm64_bounds(tmp_path, story(ESR_IRQ, 0x5151))
    (f,) = got.findings
    assert (f.kind, f.context, f.before, f.after) == ("corrupted_state", "task", 2, 5)
    assert f.explanation.startswith("the task returned with SVE disabled for user mode after "
                                    "an exception (ESR 0x0) that keeps its SVE state"), \
        f.explanation
    assert "last saved at 0xffff800080020000 (seq 3), FP/SIMD only; SVE was last enabled " \
           "for user mode at 0xffff800080030000 (seq 1)" in f.explanation
    assert (got.sve.checked, got.sve.violations) == (1, 1)
    assert got.sve.purpose_checked == {"SVE kept enabled after an exception": 1}
    got = arm64_bounds(tmp_path, story(ESR_SVC, 0x5151))
    assert got.findings == [] and got.sve.violations == 0
    got = arm64_bounds(tmp_path, story(ESR_IRQ, sve_zero_hash(64)))
    assert got.findings == [] and (got.sve.checked, got.sve.violations) == (1, 0)
