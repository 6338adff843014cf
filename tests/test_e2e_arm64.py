"""End to end on Debian's arm64 6.1 kernel, KVM in VHE and in nVHE mode:
`fputrace record --arch arm64` with the arm64 kvm-pingpong workload, checked
against what the workload itself says it did and against the save/load/trap
pattern that the kernel's KVM code implies for each KVM_RUN.

The kernel and an arm64 busybox are downloaded once into ~/.cache/fputrace.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from contenthash import a64_sve_hash
from e2e import events_of, fputrace, kernel_available, workload_line

from analyzers import native
from fputrace.paths import build_dir
from fputrace.trace import format as fmt
from fputrace.trace.reader import Trace, read_trace
from fputrace.trace.run import load_run, sidecar
from fputrace.trace.symbols import Symbols

K = fmt.Kind
F = fmt.Flag
N_RUNS = 100
EC_FP = 0x07            # FP/SIMD access trapped (ESR_ELx.EC)
EC_DABT_LOWER = 0x24    # data abort from a lower EL: the workload's MMIO store


@pytest.fixture(scope="module", params=["vhe", "nvhe"])
def arm64_pingpong(request: pytest.FixtureRequest, qemu_plugin: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    require(shutil.which("qemu-system-aarch64") is not None,
            "qemu-system-aarch64 not installed (make setup)")
    require((build_dir() / "workloads" / "aarch64" / "kvm-pingpong").exists(),
            "arm64 workloads not built: gcc-aarch64-linux-gnu missing (make setup)")
    return request.param, _record_kvm(request.param, f"kvm-pingpong:{N_RUNS}",
                                      tmp_path_factory)


def _record_kvm(mode: str, workload: str, factory: pytest.TempPathFactory) -> Path:
    """A recording of a KVM workload on Debian 6.1 arm64 in VHE or nVHE mode."""
    kernel_available("6.1", "arm64")
    out = factory.mktemp(f"arm64-{workload.split(':')[0]}-{mode}") / "run.ftr"
    p = fputrace("record", "--arch", "arm64", "--kvm-mode", mode, "--kernel", "6.1",
                 "--workload", workload, "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out


def ec(e: np.void) -> int:
    return (int(e["value"]) >> 26) & 0x3F


def test_kvm_mode_is_the_one_asked_for(arm64_pingpong: tuple[str, Path]) -> None:
    mode, out = arm64_pingpong
    console = sidecar(out, "console.log").read_text(errors="replace")
    banner = "VHE mode initialized successfully" if mode == "vhe" else \
        "Hyp mode initialized successfully"
    assert banner in console
    ev = read_trace(out).events
    host_el = {int(f) & int(F.PL_MASK) for f in ev["flags"][ev["kind"] == K.USER_ENTRY]}
    # The host kernel takes its user entries at EL2 with VHE, at EL1 without.
    assert host_el == ({2} if mode == "vhe" else {1})


def test_vm_exits_match_the_workloads_own_counts(arm64_pingpong: tuple[str, Path]) -> None:
    # The workload counts its KVM_RUN calls and the MMIO exits they returned
    # with. Each MMIO exit is a data abort from the guest taken to EL2 (ESR EC
    # 0x24), so those exits equal the count exactly. The guest's first FP
    # instruction of each run traps (EC 0x07) unless it already owns the
    # registers; KVM handles that exit at EL2 and re-enters: so the FP-trap
    # exits are at least one per run, and every exit has its entry.
    _, out = arm64_pingpong
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    assert own["kvm_run"] == own["mmio_exits"] == str(N_RUNS)
    assert own["fpu_mismatches"] == "0"
    ev = read_trace(out).events
    exits = ev[ev["kind"] == K.VM_EXIT]
    entries = ev[ev["kind"] == K.VM_ENTRY]
    ecs = np.array([ec(e) for e in exits])
    assert int(np.sum(ecs == EC_DABT_LOWER)) == N_RUNS
    fp_exits = int(np.sum(ecs == EC_FP))
    assert N_RUNS <= fp_exits <= N_RUNS + N_RUNS // 10 + 5
    assert len(entries) == len(exits)
    # Every FP-trap exit comes from an entry made with the guest's FP trapped.
    trapped_exits = exits[(exits["flags"] & F.GUEST_FP_TRAPPED) != 0]
    assert {ec(e) for e in trapped_exits} <= {EC_FP, 0x20, 0x00}  # FP, first fetch, IRQ


def _symbols(out: Path) -> Symbols:
    with gzip.open(sidecar(out, "kallsyms.gz"), "rt", errors="replace") as f:
        return Symbols.parse(f.read())


def _runs(trace: Trace) -> list[np.ndarray]:
    """The kvm-pingpong task's events, cut into KVM_RUN calls: from a user
    entry to the next user return, keeping the calls that entered the guest."""
    mine = events_of(trace, "kvm-pingpong")
    out: list[np.ndarray] = []
    start = None
    for i, k in enumerate(mine["kind"]):
        if k == K.USER_ENTRY:
            start = i
        elif k == K.USER_RETURN and start is not None:
            window = mine[start:i + 1]
            if np.any(window["kind"] == K.VM_ENTRY):
                out.append(window)
            start = None
    return out


def _without_preemption_on_return(w: np.ndarray) -> tuple[np.ndarray, int]:
    """A KVM_RUN window less what a preemption on the way back to user space
    adds. After do_notify_resume() loaded the host task's registers
    (fpsimd_restore_current_state()), exit_to_user_mode_loop() may still
    schedule: fpsimd_thread_switch() saves them again into the same buffer,
    and if another task took the CPU's registers meanwhile they are loaded
    again. Those saves and loads move the very state the host load brought:
    same buffer, same content. Returns the window without them, and their
    number."""
    kinds = w["kind"]
    is_fp = (kinds == K.FPSIMD_SAVE) | (kinds == K.FPSIMD_LOAD)
    saves = np.flatnonzero(kinds == K.FPSIMD_SAVE)
    if len(saves) == 0:
        return w, 0
    host = int(w["addr"][saves[0]])
    host_loads = np.flatnonzero((kinds == K.FPSIMD_LOAD) & (w["addr"] == host))
    if len(host_loads) == 0:
        return w, 0
    first = int(host_loads[0])
    again = is_fp & (w["addr"] == host) & (w["mem_hash"] == w["mem_hash"][first])
    again[:first + 1] = False
    return w[~again], int(again.sum())


def test_each_kvm_run_shows_the_lazy_switch_of_its_mode(arm64_pingpong: tuple[str, Path]
                                                        ) -> None:
    """The pattern per KVM_RUN, derived from Debian 6.1's arch/arm64/kvm:

    1. kvm_arch_vcpu_load_fp() saves the host task's registers and flushes
       the CPU (fpsimd_save_and_flush_cpu_state() -> fpsimd_save_state, in
       the kernel: EL2 with VHE, EL1 with nVHE);
    2. __activate_traps() sees !guest_owns_fp_regs(): the entry is made with
       FP trapped (CPTR_EL2), and the guest's first FP instruction traps;
    3. kvm_hyp_handle_fpsimd() enables FP and loads the guest's registers at
       EL2: __fpsimd_restore_state, kernel code with VHE; with nVHE its copy
       in the hypervisor's own mapping, whose buffer address the trace gives
       as the kernel's (ADDR_HYP); then re-enters, FP not trapped;
    4. after the MMIO exit, kvm_arch_vcpu_put_fp() saves the guest's
       registers into the same buffer (fpsimd_save_state), and the return to
       user space loads the host task's from where step 1 saved them.
    """
    mode, out = arm64_pingpong
    trace = read_trace(out)
    symbols = _symbols(out)
    runs = _runs(trace)
    assert len(runs) >= N_RUNS - 1         # the first may have begun before the vCPU
    host_el = 2 if mode == "vhe" else 1
    checked = preempted = 0
    for window in runs[1:]:
        w, again = _without_preemption_on_return(window)
        preempted += again > 0
        kinds = w["kind"]
        saves = w[kinds == K.FPSIMD_SAVE]
        loads = w[kinds == K.FPSIMD_LOAD]
        entries = w[kinds == K.VM_ENTRY]
        traps = w[(kinds == K.FP_TRAP) & ((w["flags"] & F.L2) != 0)]
        assert len(saves) == 2 and len(loads) == 2, [fmt.kind_name(int(k)) for k in kinds]
        host_save, guest_save = saves
        guest_load, host_load = loads
        # 1. and 4.: the host's buffer, saved and loaded by the kernel.
        for e in (host_save, guest_save, host_load):
            assert symbols.function(int(e["pc"])).split(" ")[0] in (
                "fpsimd_save_state", "fpsimd_load_state")
            assert int(e["flags"]) & int(F.PL_MASK) == host_el
        assert int(host_save["addr"]) == int(host_load["addr"])
        assert int(host_load["regs_after_hash"]) == int(host_save["mem_hash"])
        # 2.: the first entry trapped, and the guest trapped exactly once.
        assert int(entries[0]["flags"]) & F.GUEST_FP_TRAPPED
        assert len(traps) >= 1 and all(ec(t) == EC_FP for t in traps)
        # 3.: the guest's load at EL2, then an entry that gives it the registers.
        assert int(guest_load["flags"]) & int(F.PL_MASK) == 2
        if mode == "vhe":
            assert symbols.function(int(guest_load["pc"])).startswith("__fpsimd_restore_state")
            assert not int(guest_load["flags"]) & F.ADDR_HYP
        else:
            assert int(guest_load["pc"]) >> 48 == 0       # a hypervisor address
            assert int(guest_load["flags"]) & F.ADDR_HYP
        assert not int(entries[-1]["flags"]) & F.GUEST_FP_TRAPPED
        # 4.: the guest's registers go back where they came from.
        assert int(guest_save["addr"]) == int(guest_load["addr"]) != int(host_save["addr"])
        checked += 1
    assert checked >= N_RUNS - 2 and preempted <= 5


def test_viewer_disassembles_the_save_and_load_sequences(arm64_pingpong: tuple[str, Path]
                                                         ) -> None:
    # The plugin recognised the sequences by their instructions; capstone
    # on the booted Image's bytes at each event's pc must read the same:
    # stp q0, q1 (fpsimd_save) and ldp q0, q1 (fpsimd_restore).
    from analyzers.run import analyze_run
    from fputrace.view.details import Details
    from fputrace.view.model import build_model

    _, out = arm64_pingpong
    details = Details(build_model(analyze_run(load_run(out))))
    ev = details.a.run.trace.events
    checked = 0
    for kind, want in ((K.FPSIMD_SAVE, "stp q0, q1, [x"), (K.FPSIMD_LOAD, "ldp q0, q1, [x")):
        for i in np.flatnonzero((ev["kind"] == kind)
                                & ((ev["flags"] & F.ADDR_HYP) == 0))[:10].tolist():
            assert details.disassemble(int(ev["pc"][i]), int(kind)).startswith(want)
            checked += 1
    assert checked >= 10


def test_kvm_fp_hooks_bracket_every_kvm_run(arm64_pingpong: tuple[str, Path]) -> None:
    """kvm_arch_vcpu_load() and _put() (arch/arm64/kvm/arm.c) call
    kvm_arch_vcpu_load_fp() and kvm_arch_vcpu_put_fp() at every vcpu_load()
    and vcpu_put(): each vCPU ioctl, and each preemption inside KVM_RUN. So
    every KVM_RUN window of the vCPU thread has a load before its first VM
    entry and a put after its last exit, and loads and puts pair up. The
    set-up's KVM_SET_ONE_REG (the entry pc) and KVM_ARM_VCPU_INIT's reset
    show as their probes."""
    _, out = arm64_pingpong
    trace = read_trace(out)
    mine = events_of(trace, "kvm-pingpong")
    probe = mine[mine["kind"] == K.PROBE]
    loads = int(np.count_nonzero(probe["index"] == fmt.Probe.KVM_LOAD_FP))
    puts = int(np.count_nonzero(probe["index"] == fmt.Probe.KVM_PUT_FP))
    assert loads == puts >= N_RUNS
    assert np.count_nonzero(probe["index"] == fmt.Probe.KVM_UABI_SET) >= 1
    assert np.count_nonzero(probe["index"] == fmt.Probe.KVM_VCPU_RESET) >= 1
    # A user entry is written when something needs it (the save that
    # follows kvm_arch_vcpu_load_fp()'s probe, here), so the load probe can
    # precede it: look from the previous return to user space instead.
    load_seqs = probe["seq"][probe["index"] == fmt.Probe.KVM_LOAD_FP]
    put_seqs = probe["seq"][probe["index"] == fmt.Probe.KVM_PUT_FP]
    returns = mine["seq"][mine["kind"] == K.USER_RETURN]
    for w in _runs(trace)[1:]:
        first_entry = w["seq"][w["kind"] == K.VM_ENTRY][0]
        last_exit = w["seq"][w["kind"] == K.VM_EXIT][-1]
        back = w["seq"][-1]                          # the window's return to user space
        since = returns[returns < first_entry].max()
        assert np.any((load_seqs > since) & (load_seqs < first_entry))
        assert np.any((put_seqs > last_exit) & (put_seqs < back))


def test_no_findings_and_every_entry_checked(arm64_pingpong: tuple[str, Path]) -> None:
    _, out = arm64_pingpong
    p = fputrace("report", "--json", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    data = json.loads(p.stdout)
    assert data["findings_total"] == 0 and data["findings"] == []
    assert data["boundary_checks"]["violations"] == 0
    vm = data["boundary_checks"]["by_kind"]["vm_entry"]
    # The entries that give the guest its registers: one per KVM_RUN.
    assert vm["checked"] >= N_RUNS - 1
    # Trap costs: one KVM_RUN per workload call, each with its guest FP trap.
    traps = data["arm64_traps"]
    assert traps["kvm_runs"] == N_RUNS
    assert 1.0 <= traps["guest_traps_per_kvm_run"] <= 1.1


def test_instructions_of_the_kvm_fp_hooks(arm64_pingpong: tuple[str, Path]) -> None:
    """Each timed FP hook's calls are its returns (a PROBE_RETURN naming
    the function): kvm_arch_vcpu_load_fp() and _put_fp() return once for
    every probe of their entry, at least once per KVM_RUN (the workload's
    own count, as in test_kvm_fp_hooks_bracket_every_kvm_run), and each is
    a short function. The guest's FP trap, one per KVM_RUN
    (arm64_traps), is a VM exit window of its own, measured once for each."""
    _, out = arm64_pingpong
    trace = read_trace(out)
    ev = trace.events
    probe = ev[ev["kind"] == K.PROBE]
    p = fputrace("report", "--json", str(out))
    data = json.loads(p.stdout)
    paths = {x["function"]: x for x in data["instructions"]["fpu_paths"]}
    for name, pid in (("kvm_arch_vcpu_load_fp", fmt.Probe.KVM_LOAD_FP),
                      ("kvm_arch_vcpu_put_fp", fmt.Probe.KVM_PUT_FP)):
        entries = int(np.count_nonzero(probe["index"] == pid))
        assert paths[name]["calls"] == entries >= N_RUNS, (name, paths[name], entries)
        assert 10 <= paths[name]["mean"] <= 2000, paths[name]
    traps = data["arm64_traps"]
    fp_trap = data["instructions"]["per_vm_exit"]["guest_fp_trap"]
    guest_traps = round(traps["guest_traps_per_kvm_run"] * traps["kvm_runs"])
    assert N_RUNS - 1 <= fp_trap["count"] <= guest_traps, (fp_trap, traps)
    assert fp_trap["instructions"] > 0


# 6.12 is Debian's with 52-bit virtual addresses: its linear map, where
# task_structs live, starts at 0xfff0000000000000 instead of 0xffff000000000000.
# 5.10 discards the SVE state at every system call and reloads it whole
# after each SVE trap (do_sve_acc()).
@pytest.fixture(scope="module", params=["5.10", "6.1", "6.12"])
def arm64_workloads(request: pytest.FixtureRequest, qemu_plugin: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(shutil.which("qemu-system-aarch64") is not None,
            "qemu-system-aarch64 not installed (make setup)")
    series = request.param
    kernel_available(series, "arm64")
    out = tmp_path_factory.mktemp(f"arm64-workloads-{series}") / "run.ftr"
    p = fputrace("record", "--arch", "arm64", "--kernel", series, "--workload",
                 "fpu-switch:100,signal:50,kernel-fpu:20,ptrace-fp:10", "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out


def test_arm64_workloads_check_their_own_registers(arm64_workloads: Path) -> None:
    # Each workload checks its registers across every system call, signal,
    # preemption or kernel hash it causes: the kernel kept them all.
    console = sidecar(arm64_workloads, "console.log")
    switch = workload_line(console, "fpu-switch")
    assert switch["mismatches"] == switch["sve_mismatches"] == "0"
    signal = workload_line(console, "signal")
    assert signal["handled"] == signal["sve_signals"] == signal["edited"] == "50"
    assert signal["mismatches"] == signal["sve_mismatches"] == signal["edit_mismatches"] == "0"
    kfpu = workload_line(console, "kernel-fpu")
    assert kfpu["ok"] == "20" and kfpu["mismatches"] == "0"
    pt = workload_line(console, "ptrace-fp")
    assert (pt["rounds"], pt["fpsimd"], pt["mismatches"], pt["failed"]) == ("10", "10", "0", "0")
    # -cpu max has the SHA-2 instructions: the kernel's fastest sha256 is
    # sha2-ce's NEON code.
    assert kfpu["driver"] == "sha256-ce"


def test_arm64_workloads_move_the_state_they_say(arm64_workloads: Path) -> None:
    trace = read_trace(arm64_workloads)
    console = sidecar(arm64_workloads, "console.log")
    # signal: each SIGTRAP is taken with the SVE state live (a BRK is no
    # system call), so delivery saves it whole (fpsimd_signal_preserve_
    # current_state() -> sve_save_state()) and its sigreturn loads it back.
    sig = events_of(trace, "signal")
    assert (sig["kind"] == K.SVE_SAVE).sum() >= 50
    assert (sig["kind"] == K.SVE_LOAD).sum() >= 50
    # fpu-switch: every preemption during the SVE spins switches a task
    # with live SVE state away, which saves it whole. Each task counts its
    # preemptions between two getrusage() calls; one preemption at the exit
    # of the first call is counted although the call discarded the SVE
    # state (fp_user_discard() at syscall entry): at most one per task.
    preempted = int(workload_line(console, "fpu-switch")["sve_preempted"])
    switch = events_of(trace, "fpu-switch")
    assert (switch["kind"] == K.SVE_SAVE).sum() >= preempted - 2
    # kernel-fpu: each hash runs inside kernel_neon_begin()/end(), which the
    # probes see, with the task's own state saved first.
    kfpu = events_of(trace, "kernel-fpu")
    begin = (kfpu["kind"] == K.PROBE) & (kfpu["index"] == fmt.Probe.KFPU_BEGIN)
    assert begin.sum() >= 20
    # Each names its caller, from X30 at kernel_neon_begin()'s entry: the
    # hashing is sha2-ce's (the driver the workload reported), so most of
    # them are called from that module's code.
    syms = load_run(arm64_workloads).symbols
    callers = [syms.describe(int(c)) for c in kfpu[fmt.PROBE_CALLER][begin].tolist()]
    assert sum(c.endswith("[sha2_ce]") for c in callers) >= 20, callers[:10]


def test_arm64_workloads_have_no_findings(arm64_workloads: Path) -> None:
    p = fputrace("report", "--json", str(arm64_workloads))
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["findings_total"] == 0 and data["findings"] == []
    user = data["boundary_checks"]["by_kind"]["user_return"]
    assert user["checked"] > 0 and user["violations"] == 0
    # signal's 150 deliveries (50 after kill(), 50 after a kill() whose
    # handler rewrites V0-V31 in its frame, 50 after a BRK with SVE live):
    # each frame, read at the handler's start, holds the registers the task
    # entered with, the handler starts with them, and the return after
    # sigreturn holds the frame as the handler left it (the workload saw
    # its edit come back). The shell's own signals add a few more.
    purpose = user["purpose_checked"]
    for what in ("signal frame", "signal handler's registers", "sigreturn's frame"):
        assert purpose[what] >= 150, (what, purpose)
    # ptrace-fp's 10 PTRACE_SETREGSET NT_PRFPREG writes: each tracee return
    # holds the image the plugin read at the tracer's SVC. Nothing is left
    # "changed on purpose".
    assert purpose["ptrace regset write"] == 10, purpose
    assert user["changed_on_purpose"] == {}, user["changed_on_purpose"]
    # The BRK round's frames carry the SVE state, and sigreturn loads it.
    sve = data["boundary_checks"]["by_kind"]["sve_user_return"]
    for what in ("signal frame's SVE record", "signal handler's SVE state",
                 "sigreturn's SVE record"):
        assert sve["purpose_checked"][what] >= 50, (what, sve)
    assert data["unconfirmed_total"] == 0


def sve_pattern_hash(seed: int, vl: int) -> int:
    """The hash (docs/trace-format.md, "arm64") of the SVE state beyond
    V0-V31 that fpu-switch holds through its spins: Z0-Z31 and P0-P15
    loaded from sve_pattern(seed) (workloads/aarch64/fpcheck.h), FFR zero
    as the SVE access trap that enabled SVE left it."""
    z_and_p = bytes((seed * 29 + i * 3 + i // 251) & 0xFF for i in range(34 * vl))
    return a64_sve_hash(z_and_p, vl)  # FFR: beyond the image, zero


def test_arm64_sve_state_is_checked_across_preemptions(arm64_workloads: Path) -> None:
    # fpu-switch's two tasks spin with their whole SVE state live, each from
    # its own pattern (seeds 3 and 4), and are preempted by timer ticks: an
    # exception that keeps that state, so each return must bring it back.
    # The plugin's SVE hash at those boundaries is that of the pattern, as
    # computed here from the workload's own code, so the check compares what
    # the tasks hold; at least one check per preemption, none violated.
    console = sidecar(arm64_workloads, "console.log")
    preempted = int(workload_line(console, "fpu-switch")["sve_preempted"])
    vl = int(workload_line(console, "signal")["sve_vl"])
    switch = events_of(read_trace(arm64_workloads), "fpu-switch")
    held = switch[(switch["flags"] & fmt.Flag.SVE_VALID) != 0]
    assert set(held["index"].tolist()) == {vl}
    patterns = {sve_pattern_hash(3, vl), sve_pattern_hash(4, vl)}
    hashes = set(held["regs_after_hash"].tolist())
    # (and, at an SVE access trap's return, that state all zero)
    assert patterns <= hashes <= patterns | {native.a64_sve_zero_hash(vl)}, \
        [hex(h) for h in hashes]
    p = fputrace("report", "--json", str(arm64_workloads))
    checks = json.loads(p.stdout)["boundary_checks"]
    sve = checks["by_kind"]["sve_user_return"]
    assert sve["checked"] >= preempted and sve["violations"] == 0, sve
    assert "P0-P15 and FFR at the returns from exceptions" in checks["registers"]["compared"]


N_VL_CHANGES = 20


@pytest.mark.parametrize("series", ["5.10", "6.1", "6.12"])
def test_vl_change_findings_are_the_workloads_own_mismatches(
        series: str, qemu_plugin: Path, tmp_path: Path) -> None:
    """prctl(PR_SVE_SET_VL) must keep V0-V31 (Documentation/arch/arm64/
    sve.rst). The workload checks that itself, after saving its SVE state
    through a SIGTRAP first, so that the task's SVE buffer holds an older
    state. The report's corrupted_state findings must be exactly its
    mismatches, each at the prctl() call.

    5.10 and 6.1 discard SVE at syscall entry by clearing TIF_SVE
    (sve_user_discard(), fp_user_discard()), so vec_set_vector_length()
    converts nothing: no mismatches. 6.12.y discards lazily
    (fpsimd_syscall_enter() keeps TIF_SVE and sets to_save to FP_STATE_FPSIMD,
    so fpsimd_save_user_state() stores V0-V31 only), and then
    vec_set_vector_length() sees TIF_SVE and runs sve_to_fpsimd(), which
    copies the stale SVE buffer over that save: each change returns with
    the registers of the SIGTRAP's save. Mainline fixed it in 49ce484187f7
    ("arm64/fpsimd: ptrace/prctl: Ensure VL changes do not resurrect stale
    data", v6.16); a 6.12.y build with the fix backported has no mismatches.
    The test holds on every build: whatever the workload saw, the report
    finds, and nothing else."""
    kernel_available(series, "arm64")
    out = tmp_path / "run.ftr"
    p = fputrace("record", "--arch", "arm64", "--kernel", series, "--workload",
                 f"vl-change:{N_VL_CHANGES}", "-o", str(out))
    console = sidecar(out, "console.log")
    own = workload_line(console, "vl-change")
    assert own["changes"] == str(N_VL_CHANGES) and own["sve_mismatches"] == "0"
    mismatches = int(own["mismatches"])
    # The workload fails (exit 1) exactly when it saw its registers change.
    assert (p.returncode == 0) == (mismatches == 0), p.stderr
    r = fputrace("report", "--json", str(out))
    data = json.loads(r.stdout)
    assert r.returncode == (3 if mismatches else 0), r.stderr
    assert data["findings_total"] == mismatches
    for f in data["findings"]:
        assert f["kind"] == "corrupted_state" and f["task"].endswith(" vl-change")
        # The cause is the load after the conversion, in the prctl() call.
        assert f["events"]["cause"]["site"].startswith("fpsimd_load_state")
        assert "an older state of this context" in f["description"]


def test_510_says_it_cannot_run_nvhe(qemu_plugin: Path, tmp_path: Path) -> None:
    # 5.10's arch/arm64/kvm/arm.c has no kvm-arm.mode parameter (no
    # early_param at all; v5.11 added it): on a CPU with VHE, its KVM runs in
    # VHE mode whatever the command line says.
    kernel_available("5.10", "arm64")
    out = tmp_path / "run.ftr"
    p = fputrace("record", "--arch", "arm64", "--kvm-mode", "nvhe", "--kernel", "5.10",
                 "--workload", "kvm-pingpong:5", "-o", str(out))
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("kvm-mode-unsupported:") and "use --kvm-mode vhe" in last


N_SVE_RUNS = 50


@pytest.fixture(scope="module", params=["vhe", "nvhe"])
def arm64_sve_guest(request: pytest.FixtureRequest, qemu_plugin: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, _record_kvm(request.param, f"kvm-sve:{N_SVE_RUNS}",
                                      tmp_path_factory)


def test_sve_guest_state_round_trips_every_kvm_run(arm64_sve_guest: tuple[str, Path]) -> None:
    """An SVE vCPU on Debian 6.1, per KVM_RUN:

    1. kvm_arch_vcpu_load_fp(): the host task's registers saved
       (fpsimd_save_state; the vCPU thread's own state is FPSIMD: its last
       system call discarded the rest);
    2. the guest's first FP instruction traps; kvm_hyp_handle_fpsimd() sees
       vcpu_has_sve() and __hyp_sve_restore_guest() loads the whole SVE state
       at EL2 (__sve_restore_state), then the guest's ZCR_EL1;
    3. kvm_arch_vcpu_ctxsync_fp() bound the guest's sve_state with TIF_SVE,
       so kvm_arch_vcpu_put_fp() -> fpsimd_save_and_flush_cpu_state() saves
       it whole (sve_save_state) into the buffer step 2 loaded from;
    4. the return to user space loads the host task's FPSIMD state.
    So the guest's SVE state goes out of the registers and back once per
    run, and each load must bring back exactly what the save before wrote.
    The guest checks it too: z2's last lane counts the runs."""
    mode, out = arm64_sve_guest
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    assert own["kvm_run"] == own["mmio_exits"] == str(N_SVE_RUNS)
    assert own["fpu_mismatches"] == own["guest_sve_mismatches"] == "0"
    run = load_run(out)
    runs = _runs(run.trace)
    assert len(runs) >= N_SVE_RUNS - 1
    host_el = 2 if mode == "vhe" else 1
    previous_save = None
    preempted = 0
    for window in runs[1:]:
        w, again = _without_preemption_on_return(window)
        preempted += again > 0
        kinds = w["kind"]
        sve_loads, sve_saves = w[kinds == K.SVE_LOAD], w[kinds == K.SVE_SAVE]
        host_saves, host_loads = w[kinds == K.FPSIMD_SAVE], w[kinds == K.FPSIMD_LOAD]
        assert len(sve_loads) == len(sve_saves) == len(host_saves) == len(host_loads) == 1, \
            [fmt.kind_name(int(k)) for k in kinds]
        load, save = sve_loads[0], sve_saves[0]
        assert int(load["flags"]) & int(F.PL_MASK) == 2
        assert int(save["flags"]) & int(F.PL_MASK) == host_el
        # The nVHE hypervisor's copy runs in its own mapping, and is named
        # through it; its buffer is given as the kernel's address.
        site = run.symbols.describe(int(load["pc"]))
        assert site.startswith("__sve_restore_state+")
        assert site.endswith(" [nvhe]") == (mode == "nvhe")
        assert bool(int(load["flags"]) & F.ADDR_HYP) == (mode == "nvhe")
        assert int(load["addr"]) == int(save["addr"]) != int(host_saves[0]["addr"])
        assert int(host_saves[0]["addr"]) == int(host_loads[0]["addr"])
        if previous_save is not None:
            assert int(load["mem_hash"]) == int(previous_save["mem_hash"])
        previous_save = save
    assert preempted <= 5
    p = fputrace("report", "--json", str(out))
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["findings_total"] == 0 and data["unconfirmed_total"] == 0
    assert data["boundary_checks"]["by_kind"]["vm_entry"]["checked"] >= N_SVE_RUNS - 1
