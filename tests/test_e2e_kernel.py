"""End to end on real Debian kernels: fputrace record with the project's
workloads, checked against what the workloads themselves say they did.

The kernels are downloaded once into ~/.cache/fputrace (make test does it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from contenthash import word_hash
from e2e import events_of, fputrace, kernel_available, workload_line, workload_lines

from analyzers.counts import task_identity, task_label
from fputrace.kernel import debian
from fputrace.trace import format as fmt
from fputrace.trace.reader import describe_incomplete, read_trace
from fputrace.trace.run import load_run, sidecar

N_RUNS = 200


@pytest.fixture(scope="module", params=["6.1", "5.10"])
def pingpong(request: pytest.FixtureRequest, qemu_plugin: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    series = request.param
    kernel_available(series)
    out = tmp_path_factory.mktemp(f"pp{series}") / "run.ftr"
    p = fputrace("record", "--kernel", series, "--workload", f"kvm-pingpong:{N_RUNS}",
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    return series, out


def test_vm_entries_match_the_workloads_kvm_run_count(pingpong: tuple[str, Path]) -> None:
    # Every KVM_RUN that returns to user space enters the guest at least once;
    # KVM re-enters without returning for exits it handles itself (nested page
    # faults on the first touch of guest pages, interrupts while the guest
    # runs): a handful for 200 round trips. Margin: N <= entries <= N + N/10 + 10.
    _, out = pingpong
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    n = int(own["kvm_run"])
    assert n == N_RUNS and own["io_exits"] == str(N_RUNS) and own["fpu_mismatches"] == "0"
    trace = read_trace(out)
    kinds = trace.events["kind"]
    entries = int(np.count_nonzero(kinds == fmt.Kind.VM_ENTRY))
    exits = int(np.count_nonzero(kinds == fmt.Kind.VM_EXIT))
    assert n <= entries <= n + n // 10 + 10
    assert exits == entries


def test_vm_exits_carry_the_exit_code_and_the_guests_rip(pingpong: tuple[str, Path]) -> None:
    # The workload's guest leaves by one OUT per round trip, at byte 24 of its
    # code (loaded at 0x1000, see workloads/kvm-pingpong.c): each is an
    # SVM_EXIT_IOIO (0x7b, AMD APM vol. 2, appendix C) at RIP 0x1018, and there
    # are as many as the workload counted io_exits. Any other exit (interrupts,
    # nested page faults) is not an I/O exit.
    _, out = pingpong
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    ev = read_trace(out).events
    exits = ev[ev["kind"] == fmt.Kind.VM_EXIT]
    io = exits[exits["value"] == 0x7b]
    assert len(io) == int(own["io_exits"])
    assert set(io["aux"].tolist()) == {0x1018}


def test_instructions_of_the_fpstate_swap(pingpong: tuple[str, Path]) -> None:
    # Each KVM_RUN ioctl swaps the host's and the guest's fpstate twice:
    # kvm_arch_vcpu_ioctl_run() -> kvm_load_guest_fpu() and, before it
    # returns, kvm_put_guest_fpu(), each fpu_swap_kvm_fpstate() (v5.16 on; in
    # 5.10 the swap is inside kvm.ko, which is not probed). The workload
    # counts its own KVM_RUN calls. Every exit of kvm-pingpong is an I/O exit
    # handled by the VMM: each window from an exit to the next entry returns
    # to user mode and holds the two swaps.
    series, out = pingpong
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    n = int(own["kvm_run"])
    trace = read_trace(out)
    ev = trace.events
    assert trace.header.features & fmt.Feature.ICOUNT
    # Per vCPU, the counts grow along the trace (a user entry carries its own,
    # older count: it is written when first needed).
    for cpu in np.unique(ev["vcpu"]).tolist():
        mine = ev[(ev["vcpu"] == cpu) & (ev["kind"] != fmt.Kind.USER_ENTRY)]
        assert np.all(np.diff(mine["icount"].astype(np.int64)) >= 0)
    rep = json.loads(fputrace("report", "--json", str(out)).stdout)["instructions"]
    paths = {p["function"]: p for p in rep["fpu_paths"]}
    via_user = rep["per_vm_exit"]["via_user_mode"]
    assert n - 2 <= via_user["count"] <= n
    assert 500 < via_user["instructions"] < 200_000, via_user
    if series == "5.10":
        assert "fpu_swap_kvm_fpstate" not in paths
        return
    swap = paths["fpu_swap_kvm_fpstate"]
    assert swap["calls"] == 2 * n, swap
    assert 20 < swap["mean"] < 2000 and swap["max"] < 20_000, swap
    # Two swaps in every window through the VMM (the instructions of both,
    # for all but a window cut by the trace's end).
    assert via_user["fpu_path_instructions"] >= 2 * swap["mean"] * 0.9, (via_user, swap)
    assert "switch_fpu_return" in paths


def test_perfetto_export_of_a_real_run(pingpong: tuple[str, Path], tmp_path: Path) -> None:
    # Every VM entry has its exit on the same CPU: one vCPU slice each, all
    # on the one vCPU lane, ending where the next begins at the earliest.
    # Every save, restore and XSETBV is an instant; the ownership slices of
    # each CPU follow each other without overlap.
    _, out = pingpong
    p = fputrace("export", str(out), "--format", "perfetto", "-o", str(tmp_path / "p.json"))
    assert p.returncode == 0, p.stderr
    evs = json.loads((tmp_path / "p.json").read_text())["traceEvents"]
    kinds = read_trace(out).events["kind"]
    vm = [e for e in evs if e.get("cat") == "vm"]
    assert len(vm) == int(np.count_nonzero(kinds == fmt.Kind.VM_ENTRY)) >= N_RUNS
    assert len({e["tid"] for e in vm}) == 1
    assert all(a["ts"] + a["dur"] <= b["ts"] for a, b in pairwise(vm))
    marked = fmt.SAVE_KINDS | fmt.RESTORE_KINDS | {fmt.Kind.XSETBV}
    assert len([e for e in evs if e.get("cat") == "event"]) == \
        int(np.isin(kinds, [int(k) for k in marked]).sum())
    for cpu in {e["tid"] for e in evs if e.get("cat") == "ownership"}:
        lane = [e for e in evs if e.get("cat") == "ownership" and e["tid"] == cpu]
        assert all(a["ts"] + a["dur"] <= b["ts"] for a, b in pairwise(lane))


def test_viewer_disassembles_the_recorded_instructions(pingpong: tuple[str, Path]) -> None:
    # capstone on the booted image's bytes at each save's pc must decode an
    # XSAVE: xsaveopt as the kernel ran it, or the xsave the image holds
    # before the boot-time alternatives patched the site (then said so).
    from analyzers.run import analyze_run
    from fputrace.trace.run import load_run
    from fputrace.view.details import Details
    from fputrace.view.model import build_model

    _, out = pingpong
    details = Details(build_model(analyze_run(load_run(out))))
    ev = details.a.run.trace.events
    saves = np.flatnonzero(ev["kind"] == fmt.Kind.XSAVEOPT)[:20]
    assert len(saves)
    for i in saves.tolist():
        text = details.disassemble(int(ev["pc"][i]), int(ev["kind"][i]))
        assert text.startswith(("xsaveopt64 ptr [", "xsave64 ptr [")), text
        assert text.startswith("xsaveopt") or "the CPU executed xsaveopt" in text, text
    # VM entries run KVM's VMRUN, in kvm-amd.ko: module code is read from
    # the module the recording loaded.
    entries = np.flatnonzero(ev["kind"] == fmt.Kind.VM_ENTRY)[:5]
    assert len(entries)
    for i in entries.tolist():
        text = details.disassemble(int(ev["pc"][i]), int(ev["kind"][i]))
        assert text.startswith("vmrun") and "[from kvm_amd.ko" in text, text


def test_fpu_traffic_is_attributed_to_the_vcpu_task(pingpong: tuple[str, Path]) -> None:
    # Reading the kernels: each KVM_RUN swaps the FPU twice.
    #  6.1  kvm_load_guest_fpu -> fpu_swap_kvm_fpstate(guest, true): save the
    #       user registers (XSAVEOPT, unless TIF_NEED_FPU_LOAD), load the guest's
    #       (XRSTOR); kvm_put_guest_fpu -> fpu_swap_kvm_fpstate(guest, false):
    #       save the guest's, restore the user's.
    #  5.10 kvm_load_guest_fpu: kvm_save_current_fpu(user_fpu) + XRSTOR of
    #       guest_fpu; kvm_put_guest_fpu: save guest_fpu + XRSTOR of user_fpu.
    # So >= 2 saves and >= 2 restores per KVM_RUN on the vCPU thread, minus
    # the saves skipped when a preemption left TIF_NEED_FPU_LOAD set.
    series, out = pingpong
    trace = read_trace(out)
    mine = events_of(trace, "kvm-pingpong")
    kinds = mine["kind"]
    saves = int(np.isin(kinds, [int(k) for k in fmt.SAVE_KINDS]).sum())
    restores = int(np.isin(kinds, [int(k) for k in fmt.RESTORE_KINDS]).sum())
    low = 2 * N_RUNS - N_RUNS // 10
    assert low <= saves <= 3 * N_RUNS + 50, (series, saves)
    assert low <= restores <= 3 * N_RUNS + 50, (series, restores)
    # All VM entries come from the vCPU thread.
    assert int(np.count_nonzero(kinds == fmt.Kind.VM_ENTRY)) == int(
        np.count_nonzero(trace.events["kind"] == fmt.Kind.VM_ENTRY))


def test_footer_counts_equal_records_read(pingpong: tuple[str, Path]) -> None:
    _, out = pingpong
    trace = read_trace(out)
    assert trace.complete, trace.problems
    assert trace.footer is not None and trace.footer.events_total == len(trace.events)
    values, counts = np.unique(trace.events["kind"], return_counts=True)
    assert trace.footer.events_by_kind == {int(k): int(c) for k, c in zip(values, counts,
                                                                           strict=True)}
    assert trace.footer.tasks_total == len(trace.tasks)


def test_report_json(pingpong: tuple[str, Path]) -> None:
    _, out = pingpong
    p = fputrace("report", "--json", str(out))
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    trace = read_trace(out)
    assert rep["events_total"] == len(trace.events)
    assert rep["events_by_kind"]["vm_entry"] == int(
        np.count_nonzero(trace.events["kind"] == fmt.Kind.VM_ENTRY))
    assert {"xsaveopt", "xrstor", "xsetbv", "vm_entry", "vm_exit"} <= set(rep["events_by_kind"])
    # KVM's VMRUN sits in kvm-amd.ko: module code is symbolized.
    functions = {g["label"]: g for g in rep["per_function"]}
    assert functions["__svm_vcpu_run [kvm_amd]"]["by_kind"]["vm_entry"] == \
        rep["events_by_kind"]["vm_entry"]
    assert rep["recording"]["status"] == "ok"


STOCK_WORKLOADS = "all"


def report_head(trace: Path, chars: int = 6000) -> str:
    """The text report's beginning (findings first), for a failing assertion."""
    p = fputrace("report", "--max-findings", "0", str(trace))
    return f"exit {p.returncode}\n{p.stdout[:chars]}\n{p.stderr[-1000:]}"


@pytest.mark.parametrize("series", ["6.1", "5.10", "6.12"])
def test_stock_kernels_have_no_findings(qemu_plugin: Path, tmp_path: Path, series: str) -> None:
    # Every workload (all): among them a CPU hog sharing the CPU with a vCPU
    # thread (preempted inside KVM_RUN), and fork/exec chains (a parent that writes XMM and
    # execs before its child runs; a fresh image that execs again at once).
    # Each workload checks its own registers; the kernel did nothing wrong,
    # so the report must find nothing, and every boundary must be accounted.
    kernel_available(series)
    out = tmp_path / "all.ftr"
    p = fputrace("record", "--kernel", series, "--workload", STOCK_WORKLOADS, "-o", str(out))
    assert p.returncode == 0, p.stderr
    console = sidecar(out, "console.log")
    trace = read_trace(out)
    sw = workload_line(console, "fpu-switch")
    sig = workload_line(console, "signal")
    kfpu = workload_line(console, "kernel-fpu")
    hog = workload_line(console, "kvm-hog")
    fe = workload_line(console, "fork-exec")
    pp = workload_line(console, "kvm-pingpong")
    c32 = workload_line(console, "compat32")
    pt = workload_line(console, "ptrace-fp")
    kx = workload_line(console, "kvm-xsave")
    assert pt["mismatches"] == pt["failed"] == "0"
    assert sw["mismatches"] == sig["mismatches"] == kfpu["mismatches"] == "0"
    assert c32["mismatches"] == "0" and c32["syscalls"] == c32["rounds"]
    assert hog["fpu_mismatches"] == hog["hog_mismatches"] == pp["fpu_mismatches"] == "0"
    # The hog checked its registers (each round held across the vCPU
    # thread's KVM_RUNs on the same CPU), or its check checked nothing.
    assert int(hog["hog_rounds"]) >= 2
    assert fe["child_mismatches"] == fe["syscall_mismatches"] == fe["exec_not_init"] == "0"
    assert sig["handled"] == sig["signals"] == sig["edited"] and kfpu["ok"] == kfpu["hashes"]
    assert sig["handler_not_init"] == sig["edit_mismatches"] == "0"
    # fpu-switch: each of its switches saves the outgoing task's registers.
    switches = int(sw["switches"])
    saves = np.isin(events_of(trace, "fpu-switch")["kind"], [int(k) for k in fmt.SAVE_KINDS])
    assert switches <= int(saves.sum()) <= 2 * switches + 50
    # signal: every delivery writes the registers to the signal frame (XSAVE in
    # copy_fpstate_to_sigframe) and sigreturn reads them back (XRSTOR).
    sig_ev = events_of(trace, "signal")
    assert int(np.count_nonzero(sig_ev["kind"] == fmt.Kind.XSAVE)) >= int(sig["signals"])
    assert int(np.count_nonzero(sig_ev["kind"] == fmt.Kind.XRSTOR)) >= int(sig["signals"])
    # kernel-fpu: kernel_fpu_begin() saves the caller's registers first.
    assert int(np.isin(events_of(trace, "kernel-fpu")["kind"],
                       [int(k) for k in fmt.SAVE_KINDS]).sum()) >= int(kfpu["hashes"])
    assert int(np.count_nonzero(trace.events["flags"] & fmt.Flag.KERNEL_SIMD)) >= int(
        kfpu["hashes"])
    # Each kernel_fpu_begin_mask() names its caller, from the return address
    # at its entry: the hashing code of sha256-ssse3.ko, which kernel-fpu
    # loads for its AF_ALG hashes.
    kf = events_of(trace, "kernel-fpu")
    begin = (kf["kind"] == fmt.Kind.PROBE) & (kf["index"] == fmt.Probe.KFPU_BEGIN)
    syms = load_run(out).symbols
    callers = [syms.describe(int(c)) for c in kf[fmt.PROBE_CALLER][begin].tolist()]
    assert sum(c.endswith("[sha256_ssse3]") for c in callers) >= int(kfpu["hashes"]), \
        callers[:10]

    rep_p = fputrace("report", "--json", str(out))
    assert rep_p.returncode == 0, report_head(out)
    rep = json.loads(rep_p.stdout)
    assert rep["findings"] == [] and rep["unconfirmed"] == []
    # Real context switches (the __switch_to probes): each of fpu-switch's
    # hand-offs is one, from one of its tasks to the other. In each,
    # switch_fpu_prepare() saves the outgoing task's live AVX state, and the
    # incoming one, whose registers the other overwrote (fpregs_state_valid()
    # is false), has its state restored at its return to user mode.
    ptrs = {int(t["task"]) for t in trace.tasks
            if bytes(t["comm"]).split(b"\0")[0] == b"fpu-switch"}
    ev = trace.events
    probes = ev[(ev["kind"] == fmt.Kind.PROBE) & (ev["index"] == fmt.Probe.CONTEXT_SWITCH)]
    pairs = sum(int(a) in ptrs and int(b) in ptrs for a, b in zip(
        probes["value"].tolist(), probes["addr"].tolist(), strict=True))
    # A hand-off may also be preceded by a preemption: the write() that wakes
    # the other task can preempt the writer before it blocks in read(), and a
    # tick can preempt either (one 6.12 run had 446 switches for 400 hand-offs).
    # More than one extra switch per hand-off would be probes counted twice.
    assert switches <= pairs <= 2 * switches, (switches, pairs)
    cs = rep["context_switches"]
    assert cs["switches"] == len(probes)
    assert cs["saves"] >= switches and cs["restores"] >= switches, cs
    checks = rep["boundary_checks"]
    assert checks["violations"] == 0
    # Every task that returned to user mode had its returns checked.
    returned = {task_label(trace.tasks, int(i)) for i in
                task_identity(trace.events, trace.tasks)[
                    trace.events["kind"] == fmt.Kind.USER_RETURN]}
    checked = {row["task"] for row in checks["per_task"] if row["checked"] > 0}
    assert {t.split(" ", 1)[1] for t in returned} >= {"kvm-pingpong", "fpu-switch", "signal",
                                                      "kernel-fpu", "fork-exec"}
    workload_tasks = {t for t in returned if t.split(" ", 1)[1] in
                      ("kvm-pingpong", "fpu-switch", "signal", "kernel-fpu")}
    assert workload_tasks <= checked, workload_tasks - checked
    # Every other task too (by pid: a task's rows carry its latest name),
    # but for the few whose returns could not be checked, each with its
    # reason counted.
    unchecked = sum(checks["by_kind"]["user_return"]["unchecked"].values())
    returned_pids = {t.split(" ", 1)[0] for t in returned}
    checked_pids = {t.split(" ", 1)[0] for t in checked}
    assert len(returned_pids - checked_pids) <= unchecked, (returned_pids - checked_pids,
                                                           unchecked)
    # Signal delivery and sigreturn are changes on purpose, each checked
    # against its purpose: the handler's init state, the frame as the
    # handler left it; one of each per signal, and none left unchecked.
    user = checks["by_kind"]["user_return"]
    assert user["purpose_checked"]["signal handler's init state"] >= int(sig["signals"])
    assert user["purpose_checked"]["sigreturn's frame"] >= int(sig["signals"]) + int(sig["edited"])
    assert user["purpose_checked"]["exec's init state"] >= 2 * int(fe["rounds"])
    assert user["purpose_checked"]["ptrace regset write"] >= int(pt["rounds"])
    assert user["changed_on_purpose"] == {}
    # The vCPUs: one check per VM entry after the first of each vCPU, so at
    # least one per KVM_RUN the workloads made, less one per vCPU (kvm-xsave
    # runs once before its rounds; on 5.10 its rounds are not checked).
    vm = checks["by_kind"]["vm_entry"]
    kvm_runs = int(pp["kvm_run"]) + int(hog["kvm_run"]) + \
        (int(kx["rounds"]) if series != "5.10" else 0)
    assert vm["checked"] >= kvm_runs - 2, vm
    # kvm-xsave: each round's entry holds the image its KVM_SET_XSAVE wrote,
    # as its guest saw (fpu_copy_uabi_to_guest_fpstate(), from 5.16); 5.10
    # copies inside kvm.ko, and says so.
    assert kx["mismatches"] == kx["fpu_mismatches"] == kx["failed"] == "0"
    if series == "5.10":
        assert vm["unchecked"]["changed while KVM_RUN had returned to user space, on a "
                               "kernel whose KVM_SET_XSAVE copies are not observable"] >= \
            int(kx["rounds"]), vm
    else:
        assert vm["purpose_checked"]["KVM_SET_XSAVE's image"] == int(kx["rounds"]), vm
    assert vm["changed_on_purpose"] == {}, vm


def test_6_12_kernel_with_compressed_modules(qemu_plugin: Path, tmp_path: Path) -> None:
    # trixie's 6.12 ships .ko.xz modules under usr/lib/modules.
    kernel_available("6.12")
    out = tmp_path / "r.ftr"
    p = fputrace("record", "--kernel", "6.12", "--workload", "kvm-pingpong:50", "-o", str(out))
    assert p.returncode == 0, p.stderr
    own = workload_line(sidecar(out, "console.log"), "kvm-pingpong")
    entries = int(np.count_nonzero(read_trace(out).events["kind"] == fmt.Kind.VM_ENTRY))
    assert 50 <= entries <= 50 + 5 + 10 and own["kvm_run"] == "50"


def test_own_kernel_build_by_path(qemu_plugin: Path, tmp_path: Path) -> None:
    # --kernel PATH --modules DIR, as for a developer's own build (here the
    # Debian 6.1 image, copied, so that it is not recognised as Debian's).
    kernel_available("6.1")
    info = debian.cached_kernel("6.1", "amd64")
    assert info is not None
    image = tmp_path / "bzImage"
    image.write_bytes(info.vmlinuz.read_bytes())
    out = tmp_path / "own.ftr"
    p = fputrace("record", "--kernel", str(image), "--modules", str(info.modules_dir),
                 "--workload", "kvm-pingpong:20", "-o", str(out))
    assert p.returncode == 0, p.stderr
    trace = read_trace(out)
    # The identity comes from the image's own version string.
    assert trace.header.kernel.startswith(info.release + " (bzImage sha256:")
    assert int(np.count_nonzero(trace.events["kind"] == fmt.Kind.VM_ENTRY)) >= 20


# A recording that does not finish before the test stops it (TCG runs a few
# thousand round trips a second), yet whose estimate for the free-space check
# before it starts (events_per_count) stays a few GiB: 10 million asked for
# 41 GiB, which a machine whose disk had filled up refused.
LONG_WORKLOAD = "kvm-pingpong:1000000"


def test_timeout_keeps_a_labelled_partial_trace(qemu_plugin: Path, tmp_path: Path) -> None:
    kernel_available("6.1")
    out = tmp_path / "t.ftr"
    p = fputrace("record", "--kernel", "6.1", "--workload", LONG_WORKLOAD,
                 "--timeout", "8", "-o", str(out))
    assert p.returncode == 1
    assert "timeout" in p.stderr and "partial trace kept" in p.stderr
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["status"] == "timeout" and meta["partial"] is True
    # QEMU was asked to quit: the plugin still wrote its footer, which says
    # that the run did not finish, so that no command takes it for whole.
    trace = read_trace(out)
    assert trace.footer is not None and trace.footer.end == fmt.End.TIMEOUT
    assert trace.intact and not trace.complete
    r = fputrace("report", str(out))
    assert r.returncode == 4 and "the run did not finish" in r.stderr
    assert r.stdout.splitlines()[0] != "no lost or corrupted FPU state"
    r = fputrace("report", "--allow-partial", str(out))
    assert r.returncode == 0 and "this is not a clean run" in r.stdout.splitlines()[0]


def test_qemu_that_cannot_start_says_why(qemu_plugin: Path, tmp_path: Path) -> None:
    # QEMU fails at once (no memory that large): its own reason is shown, and
    # the empty trace it leaves says EXITED, never a clean run.
    kernel_available("6.1")
    out = tmp_path / "m.ftr"
    p = fputrace("record", "--kernel", "6.1", "--memory", str(1 << 26), "-o", str(out))
    assert p.returncode == 1
    assert "qemu-crashed" in p.stderr and "Cannot allocate memory" in p.stderr
    trace = read_trace(out)
    assert trace.footer is not None and trace.footer.end == fmt.End.EXITED
    assert not trace.complete and len(trace.events) == 0
    r = fputrace("report", str(out))
    assert r.returncode == 4 and "QEMU exited before the recorder stopped it" in r.stderr


def _long_record(out: Path, size: int) -> subprocess.Popen[str]:
    """A record that runs until stopped, once `size` bytes of its trace are
    on disk."""
    kernel_available("6.1")
    proc = subprocess.Popen([sys.executable, "-m", "fputrace", "record", "--kernel", "6.1",
                             "--workload", LONG_WORKLOAD, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < size):
        time.sleep(0.2)
    return proc


def test_qemu_killed_mid_run(qemu_plugin: Path, tmp_path: Path) -> None:
    out = (tmp_path / "k.ftr").resolve()
    # Once several blocks are on disk, SIGKILL QEMU.
    proc = _long_record(out, 300_000)
    pids = subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True, text=True).stdout
    assert pids.split(), "QEMU not found"
    for pid in pids.split():
        os.kill(int(pid), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "qemu-crashed" in err and "partial trace kept" in err
    trace = read_trace(out)
    assert trace.footer is None and len(trace.events) > 1000
    assert describe_incomplete(trace).count("no footer") == 1
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["partial"] is True and meta["status"] == "qemu-crashed"
    r = fputrace("report", str(out))
    # Exit 4: the report covers only what was read.
    assert r.returncode == 4 and "incomplete trace" in r.stderr and "Traceback" not in r.stderr


def test_a_recorder_killed_outright_takes_its_qemu_with_it(qemu_plugin: Path,
                                                          tmp_path: Path) -> None:
    # SIGKILL to the recorder (a test harness's timeout, the OOM killer)
    # gives it no chance to stop QEMU, which runs in a session of its own:
    # QEMU must not run on, writing a trace nobody will read.
    out = (tmp_path / "k.ftr").resolve()
    proc = _long_record(out, 100_000)
    assert subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True).returncode == 0
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and \
            subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True).returncode == 0:
        time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True).returncode == 1


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_machine_cleanly(qemu_plugin: Path, tmp_path: Path,
                                            signum: signal.Signals, status: int) -> None:
    # A record stopped by SIGTERM (a CI job's timeout, kill) or SIGINT (^C)
    # asks its QEMU to quit, so that the plugin writes its last blocks and a
    # footer that says INTERRUPTED; the sidecars are written, nothing is left
    # behind, and the partial trace is named with what it holds.
    out = (tmp_path / "s.ftr").resolve()
    proc = _long_record(out, 100_000)
    assert subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True).returncode == 0
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    assert f"interrupted: {signum.name}" in err and "partial trace kept" in err
    assert "Traceback" not in err
    assert subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True).returncode == 1
    trace = read_trace(out)
    assert trace.intact and trace.footer is not None
    assert trace.footer.end == fmt.End.INTERRUPTED
    assert f"({len(trace.events)} events, " in err
    assert sidecar(out, "kallsyms.gz").exists() and not sidecar(out, "modsyms.tmp").exists()
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["partial"] is True
    assert meta["signal"] == signum.name
    r = fputrace("report", str(out))
    assert r.returncode == 4 and "interrupted" in r.stderr


def test_ownership_on_real_kvm_runs(pingpong: tuple[str, Path]) -> None:
    # What the kernels' code implies (see test_fpu_traffic_is_attributed_...):
    # per KVM_RUN the vCPU thread saves its user state, loads the guest's,
    # saves the guest's and loads its user state back: 2 saves and 2 restores
    # per KVM_RUN. VM entries are KVM_RUNs plus a few in-kernel re-entries,
    # and an occasional preemption adds a save/restore pair: per VM entry
    # both lie in [2 * N/entries - 0.1, 2.2].
    series, out = pingpong
    p = fputrace("report", "--json", str(out))
    assert p.returncode == 0, p.stderr  # 3 would mean lost state
    rep = json.loads(p.stdout)
    assert rep["findings"] == [] and rep["classes"]["lost_state"] == 0
    per_entry = rep["per_operation"]["vm_entry"]
    entries = per_entry["count"]
    low = 2 * N_RUNS / entries - 0.1
    assert low <= per_entry["saves"] <= 2.2, (series, per_entry)
    assert low <= per_entry["restores"] <= 2.2, (series, per_entry)
    # The guest changes xmm0 on every round trip: every save of its state is
    # necessary. The workload reloads the same user registers before every
    # KVM_RUN: its user-state saves (all but the first) write what the buffer
    # already holds. The first save into the guest's fpstate may find there
    # the init state KVM put in it (read by the plugin before that save).
    (vcpu,) = rep["per_vcpu"]
    assert vcpu["by_class"].get("redundant_save", 0) <= 3, vcpu
    assert vcpu["by_class"]["necessary"] >= 2 * N_RUNS - 5, vcpu
    task = next(t for t in rep["per_task"] if t["label"].endswith(" kvm-pingpong"))
    assert task["by_class"]["redundant_save"] >= N_RUNS - 5, task


def test_two_cpus(qemu_plugin: Path, tmp_path: Path) -> None:
    # Two vCPU threads (MTTCG) write their blocks concurrently: the trace must
    # still be whole, in one sequence order with no number used twice, with
    # events on both CPUs and nothing judged lost. Two CPUs record with the
    # host clock (fputrace.record.machine.deterministic_refusal), and say so.
    kernel_available("6.1")
    out = tmp_path / "smp.ftr"
    p = fputrace("record", "--kernel", "6.1", "--smp", "2", "--workload",
                 "kvm-pingpong:100,fpu-switch:100", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "--smp 2: " in p.stderr and "not reproducible" in p.stderr
    assert json.loads(sidecar(out, "meta.json").read_text())["deterministic"] is False
    trace = read_trace(out)
    assert trace.complete, trace.problems
    seq = trace.events["seq"].astype(np.int64)
    assert bool(np.all(np.diff(seq) > 0))
    assert set(np.unique(trace.events["vcpu"]).tolist()) == {0, 1}
    assert workload_line(sidecar(out, "console.log"), "fpu-switch")["mismatches"] == "0"
    rep = fputrace("report", "--json", str(out))
    assert rep.returncode == 0 and json.loads(rep.stdout)["findings"] == []


def test_compiled_pass_and_oracle_agree_on_a_real_trace(pingpong: tuple[str, Path]) -> None:
    # The compiled pass (analyzers/engine) against the oracle (tests/oracle.py)
    # on a real kernel's trace: same classes, findings and report tables.
    from oracle import classify, compute_costs, count_events

    from analyzers.costs import costs_from_aggregates
    from analyzers.counts import counts_from_aggregates
    from analyzers.ownership import analyze
    from fputrace.trace.run import load_run

    _, out = pingpong
    r = load_run(out)
    ev, tasks = r.trace.events, r.trace.tasks
    init = r.symbols.values.get("init_fpstate")
    fast = analyze(ev, init, tasks, tables=True)
    want = classify(ev, init, tasks)
    assert fast.cls.tolist() == want.cls
    assert fast.context_kind.tolist() == want.ctx
    assert fast.guest_of.tolist() == want.guest_of
    assert fast.guest_buffers == want.guest and len(fast.guest_buffers) == 1
    assert fast.owner.tolist() == want.owner
    assert fast.owner_kind.tolist() == want.owner_ctx
    assert fast.task_ident is not None
    assert fast.task_ident.tolist() == task_identity(ev, tasks).tolist()
    agg = fast.tables
    assert agg is not None
    assert counts_from_aggregates(agg, len(ev), tasks, r.symbols) == count_events(
        ev, tasks, r.symbols)
    assert costs_from_aggregates(agg, fast, tasks, r.symbols) == compute_costs(
        ev, tasks, fast, r.symbols)


@pytest.mark.parametrize("series", ["6.1", "5.10"])
def test_seeded_bugs_are_found(qemu_plugin: Path, tmp_path: Path, series: str) -> None:
    # The fputrace-seed module, built against the kernel's own headers, does
    # (a) XMM writes without kernel_fpu_begin(), (b) a corrupted saved buffer
    # inside a kernel_fpu section, (c) correct SIMD inside a section, (d) a
    # section in which seed_missed_restore() clears TIF_NEED_FPU_LOAD before
    # seed_clobber_xmm() runs (workloads/seed/fputrace_seed.c); the workload
    # says what it saw in its own registers.
    kernel_available(series)
    out = tmp_path / "seed.ftr"
    n = 4
    p = fputrace("record", "--kernel", series, "--workload", f"fpu-seed:{n}", "-o", str(out))
    assert p.returncode == 0, p.stderr
    own = workload_line(sidecar(out, "console.log"), "fpu-seed")
    assert own == {"correct": str(n), "correct_changed": "0", "clobber": str(n),
                   "clobber_changed": str(n), "corrupt": str(n), "corrupt_changed": str(n),
                   "missed": str(n), "missed_changed": str(n), "failed": "0"}
    rep_p = fputrace("report", "--json", "--max-findings", "0", str(out))
    assert rep_p.returncode == 3, report_head(out)
    rep = json.loads(rep_p.stdout)
    findings = rep["findings"]
    misuse = [f for f in findings if f["kind"] == "kernel_fpu_misuse"]
    corrupted = [f for f in findings if f["kind"] == "corrupted_state"]
    # (a): each call is a misuse at seed_clobber_xmm, and a corrupted return
    # explained by it; (b): each call a corrupted return explained by the
    # buffer changed in memory while the module's section was open; (d):
    # each call a missed restore that names the save, the section the
    # module began, and the module's SIMD code; (c): nothing.
    assert len(misuse) == n and all("seed_clobber_xmm" in f["description"] and
                                    "[fputrace_seed]" in f["description"] for f in misuse)
    by_clobber = [f for f in corrupted if "outside kernel_fpu_begin()" in f["description"]]
    assert all(f["events"]["simd"]["site"].startswith("seed_clobber_xmm+") for f in by_clobber)
    by_buffer = [f for f in corrupted if "changed in memory" in f["description"] and
                 f["events"]["section_begin"]["caller"].endswith(" [fputrace_seed]")]
    by_missed = [f for f in corrupted if f["description"].startswith("missed restore") and
                 f["events"]["section_begin"]["caller"].startswith("seed_missed_restore+") and
                 f["events"]["simd"]["site"].startswith("seed_clobber_xmm+") and
                 f["description"].endswith("no restore of this context's state followed "
                                           "before the return")]
    assert (len(by_clobber), len(by_buffer), len(by_missed), len(corrupted)) == \
        (n, n, n, 3 * n), report_head(out)
    # The save that took the task's state, inside the section, to its buffer.
    for f in by_missed:
        e = f["events"]
        assert e["section_begin"]["seq"] < e["save"]["seq"] < e["section_end"]["seq"]
        assert e["save"]["site"].split("+")[0] in ("save_fpregs_to_fpstate",
                                                   "copy_fpregs_to_fpstate")
    assert len(findings) == 4 * n, report_head(out)
    assert all(f["task"].endswith(" fpu-seed") for f in findings)
    # The viewer shows the module's SIMD instruction, read from the seed
    # module's .ko: seed_clobber_xmm()'s last one is its pcmpeqd.
    from analyzers.run import analyze_run
    from fputrace.trace.run import load_run
    from fputrace.view.details import Details
    from fputrace.view.model import build_model

    details = Details(build_model(analyze_run(load_run(out))))
    i = next(j for j, f in details.findings.items() if f.kind == "kernel_fpu_misuse")
    pane = details.event(i).plain
    assert "simd   seed_clobber_xmm+0x" in pane and "pcmpeqd xmm1, xmm1" in pane and \
        "[from fputrace_seed.ko" in pane, pane


@pytest.mark.parametrize("series", ["6.1", "5.10"])
def test_a_signal_frame_given_the_kernels_registers_is_found(qemu_plugin: Path,
                                                             tmp_path: Path,
                                                             series: str) -> None:
    # The seed module's SIGFRAME ioctl leaves the kernel's values in the
    # registers without TIF_NEED_FPU_LOAD, then sends the caller SIGUSR1:
    # copy_fpstate_to_sigframe() saves those values into the frame as the
    # task's, and sigreturn loads them. The workload sees its registers
    # changed after each sigreturn (its own truth). The returns to the
    # handler and after sigreturn are purposeful changes; the frame's save is
    # where the report must find it, naming the module's section as cause.
    kernel_available(series)
    out = tmp_path / "sigframe.ftr"
    n = 4
    p = fputrace("record", "--kernel", series, "--workload", f"sigframe-seed:{n}",
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    own = workload_line(sidecar(out, "console.log"), "fpu-seed")
    assert own == {"sigframe": str(n), "sigframe_changed": str(n), "signals": str(n),
                   "failed": "0"}
    rep_p = fputrace("report", "--json", "--max-findings", "0", str(out))
    assert rep_p.returncode == 3, report_head(out)
    findings = json.loads(rep_p.stdout)["findings"]
    assert len(findings) == n, report_head(out)
    for f in findings:
        assert f["kind"] == "corrupted_state" and f["task"].endswith(" fpu-seed")
        assert f["description"].startswith("the signal frame at 0x7ff")
        e = f["events"]
        assert e["frame_save"]["site"].startswith("copy_fpstate_to_sigframe+")
        assert e["section_begin"]["caller"].startswith("seed_missed_restore+")
        assert e["simd"]["site"].startswith("seed_clobber_xmm+")
        assert e["entry"]["seq"] < e["save"]["seq"] < e["frame_save"]["seq"]
    # The same signals on the same kernel, without the bug: every frame is
    # checked against its purpose and holds the task's registers.
    stock = tmp_path / "signal.ftr"
    p = fputrace("record", "--kernel", series, "--workload", "signal:20", "-o", str(stock))
    assert p.returncode == 0, p.stderr
    rep_p = fputrace("report", "--json", str(stock))
    assert rep_p.returncode == 0, report_head(stock)
    user = json.loads(rep_p.stdout)["boundary_checks"]["by_kind"]["user_return"]
    assert user["purpose_checked"]["signal frame"] >= 20 and user["violations"] == 0


@pytest.mark.parametrize("series", ["6.1", "5.10"])
def test_a_purposeful_change_that_misses_its_purpose_is_found(qemu_plugin: Path,
                                                               tmp_path: Path,
                                                               series: str) -> None:
    # The seed module's HANDLER, EXEC, SIGRETURN and REGSET ioctls arm a
    # kretprobe on fpu__clear_user_states() (the handler's init state), on
    # the exec reset (fpu_flush_thread(), 5.10's fpu__clear_all()), on
    # fpu__restore_sig() or on the ptrace regset writes that damages XMM0
    # in the task's buffer, which the return then loads. Each handler and
    # each exec'd program checks at its first instruction that it starts
    # from the init state, the sigreturn workload that its registers after
    # sigreturn are those it had, and the tracee that it resumes with what
    # its tracer wrote (their own truth). The report must find each one at
    # that return, naming the purposeful change (and the module's code
    # where it damages the buffer inside a kernel FPU section); the stock signal,
    # fork-exec and ptrace-fp workloads in the same run are clean, their
    # handler, sigreturn, exec and tracee returns checked against their
    # purpose. From 5.16 on, the KVM_XSAVE ioctl damages the guest's fpstate
    # after KVM_SET_XSAVE's copy (fpu_copy_uabi_to_guest_fpstate()): the
    # guest sees XMM0 other than was set, and the report finds it at the VM
    # entry, while stock kvm-xsave's entries hold their images.
    kernel_available(series)
    out = tmp_path / "seed.ftr"
    n = 3
    kvm = series != "5.10"
    p = fputrace("record", "--kernel", series, "--workload",
                 f"handler-seed:{n},exec-seed:{n},sigreturn-seed:{n},regset-seed:{n},"
                 "signal:10,fork-exec:3,ptrace-fp:4" +
                 (f",kvm-xsave-seed:{n},kvm-xsave:4" if kvm else ""), "-o", str(out))
    assert p.returncode == 0, p.stderr
    console = sidecar(out, "console.log")
    assert workload_lines(console, "fpu-seed") == [
        {"handler": str(n), "handler_not_init": str(n), "signals": str(n), "failed": "0"},
        {"exec": str(n), "exec_not_init": str(n), "failed": "0"},
        {"sigreturn": str(n), "sigreturn_changed": str(n), "signals": str(n), "failed": "0"}
    ], console
    sig, fe = workload_line(console, "signal"), workload_line(console, "fork-exec")
    assert sig["handler_not_init"] == fe["exec_not_init"] == "0"
    # ptrace-fp prints its line twice: the seeded run first.
    assert [(t["rounds"], t["mismatches"], t["failed"]) for t in
            workload_lines(console, "ptrace-fp")] == [
        (str(n), str(n), "0"), ("4", "0", "0")], console
    rep_p = fputrace("report", "--json", "--max-findings", "0", str(out))
    assert rep_p.returncode == 3, report_head(out)
    rep = json.loads(rep_p.stdout)
    findings = rep["findings"]
    handler = [f for f in findings if f["description"].startswith(
        "the signal handler's start (handle_signal()) after copy_fpstate_to_sigframe()")]
    execs = [f for f in findings if f["description"].startswith(
        "the first return after exec after fpu_flush_thread()" if series != "5.10" else
        "the first return after exec after fpu__clear_all()")]
    sigreturns = [f for f in findings if f["description"].startswith(
        "the return after sigreturn (fpu__restore_sig() called from restore_sigcontext+")]
    regsets = [f for f in findings if f["description"].startswith(
        "the tracee's return after the regset write ")]
    xsaves = [f for f in findings if f["description"].startswith(
        "the guest's FP registers at this VM entry do not hold the image that KVM_SET_XSAVE "
        "wrote (fpu_copy_uabi_to_guest_fpstate() called from kvm_arch_vcpu_ioctl+")]
    n_kvm = n if kvm else 0
    assert (len(handler), len(execs), len(sigreturns), len(regsets), len(xsaves),
            len(findings)) == (n, n, n, n, n_kvm, 4 * n + n_kvm), report_head(out)
    if kvm:
        assert [(t["rounds"], t["mismatches"], t["failed"]) for t in
                workload_lines(console, "kvm-xsave")] == [(str(n), str(n), "0"), ("4", "0", "0")]
        assert all(f["task"].endswith(" kvm-xsave") and "vm_entry" in f["events"]
                   for f in xsaves)
        vm = rep["boundary_checks"]["by_kind"]["vm_entry"]
        assert vm["purpose_checked"]["KVM_SET_XSAVE's image"] == n + 4
        assert vm["violations"] == n and vm["changed_on_purpose"] == {}, vm
    # The writes alternate: PTRACE_SETFPREGS, then PTRACE_SETREGSET.
    assert [f["events"]["purpose"]["site"].split("+")[0] for f in regsets] == \
        [("xfpregs_set", "xstateregs_set")[i % 2] for i in range(n)]
    assert all(f["task"].endswith(" ptrace-fp") for f in regsets)
    for f, culprit in [(f, "seed_handler_ret+") for f in handler] + \
            [(f, "seed_exec_ret+") for f in execs] + \
            [(f, "seed_sigreturn_ret+") for f in sigreturns]:
        e = f["events"]
        assert f["kind"] == "corrupted_state"
        assert e["purpose"]["seq"] < e["section_begin"]["seq"] < e["restore"]["seq"] < \
            e["return"]["seq"]
        assert e["section_begin"]["caller"].startswith(culprit), e
    assert all("does not hold the init state" in f["description"] for f in handler + execs)
    assert all("as the handler left it" in f["description"] and
               e["frame_restore"]["seq"] < e["section_begin"]["seq"]
               for f in sigreturns for e in [f["events"]])
    assert all(f["task"].endswith(" fpu-seed") for f in handler + sigreturns)
    user = rep["boundary_checks"]["by_kind"]["user_return"]
    # Every handler start and exec of the stock workloads was checked too:
    # signal's 10 and the seed's n handlers; fork-exec's 2 execs a round.
    assert user["purpose_checked"]["signal handler's init state"] >= 10 + n
    assert user["purpose_checked"]["exec's init state"] >= 2 * 3 + n
    assert user["purpose_checked"]["sigreturn's frame"] >= 10 + 2 * n
    assert user["purpose_checked"]["ptrace regset write"] == 4 + n
    assert user["changed_on_purpose"] == {} and user["violations"] == 4 * n


def test_foreign_workload_with_added_files(qemu_plugin: Path, tmp_path: Path) -> None:
    # A user's static reproducer and a script, run by name from /added; their
    # exit status and last output line go into run.meta.json; the recorded
    # trace has the program's boundaries, checked.
    kernel_available("6.1")
    src = tmp_path / "repro.c"
    src.write_text('#include <stdio.h>\nint main(int c, char **v) { volatile double x = 1;'
                   ' for (int i = 0; i < 100000; i++) x *= 1.000001;'
                   ' printf("repro: %s %.3f\\n", c > 1 ? v[1] : "-", x); return 3; }\n')
    repro = tmp_path / "repro"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(repro), str(src)], check=True)
    script = tmp_path / "steps.sh"
    script.write_text("#!/bin/sh\nrepro first >/dev/null\necho steps: $# args\n")
    script.chmod(0o755)
    out = tmp_path / "own.ftr"
    p = fputrace("record", "--kernel", "6.1", "--add", str(repro), "--add", str(script),
                 "--run", "repro 42", "--run", "./steps.sh a b", "-o", str(out))
    assert p.returncode == 1, p.stderr  # repro exits 3 on purpose
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["status"] == "workload-failed" and not meta["partial"]
    assert meta["runs"] == [
        {"command": "repro 42", "exit_status": 3, "last_line": "repro: 42 1.105"},
        {"command": "./steps.sh a b", "exit_status": 0, "last_line": "steps: 2 args"}]
    assert meta["workloads"] == []
    r = fputrace("report", "--json", str(out))
    rep = json.loads(r.stdout)
    assert rep["findings"] == []
    # The command's own verdict (exit 3) stands beside the report's, which
    # is then not clean.
    assert r.returncode == 3 and rep["own_check_failures"] == ["--run 'repro 42' exited 3"]
    assert any(row["task"].endswith(" repro") and row["checked"] > 0
               for row in rep["boundary_checks"]["per_task"])


# ---- a 32-bit process (compatibility mode) ----------------------------------
#
# The content hash as docs/trace-format.md defines it (tests/contenthash.py),
# over the bytes a save in 32-bit code stores.

def legacy_hash_32bit(legacy: bytes) -> int:
    """What a save in 32-bit code stores of x87 and SSE, hashed: FCW and FSW,
    MXCSR, the 10 bytes of each ST register, and XMM0-7 only (XMM8-15 exist
    in 64-bit mode only)."""
    masks = {0: 0x0F, 3: 0x0F}                        # FCW+FSW, MXCSR
    for r in range(8):
        masks[4 + 2 * r], masks[5 + 2 * r] = 0xFF, 0x03  # ST0-7: 10 of 16 bytes
    for w in range(160 // 8, 288 // 8):
        masks[w] = 0xFF                               # XMM0-7
    return sum(word_hash(w, int.from_bytes(legacy[8 * w:8 * w + 8], "little"), m)
               for w, m in masks.items()) % (1 << 64)


def test_32bit_process_addresses_and_hashes(qemu_plugin: Path, tmp_path: Path) -> None:
    # compat32 (gcc -m32 -static) runs XSAVE, FXSAVE, XRSTOR and FXRSTOR
    # itself, absolute (disp32) and through a register, and prints the first
    # round: the address of each operation and the legacy area each save
    # stored. The trace must hold the same addresses, formed with 32-bit
    # addressing, every round, and for the printed saves the content hash of
    # the printed bytes; each restore loads what the save before it stored.
    kernel_available("6.1")
    rounds = 20
    out = tmp_path / "compat32.ftr"
    p = fputrace("record", "--kernel", "6.1", "--workload", f"compat32:{rounds}", "-o", str(out))
    assert p.returncode == 0, p.stderr
    console = sidecar(out, "console.log")
    own = workload_line(console, "compat32")
    assert own["mismatches"] == "0" and own["ops"] == str(5 * rounds)
    printed = [dict(kv.split("=", 1) for kv in line.split()[1:])
               for line in console.read_text(errors="replace").splitlines()
               if line.startswith("compat32-op ")]
    assert [o["kind"] for o in printed] == ["xsave", "fxsave", "fxsave", "xrstor", "fxrstor"]

    ev = read_trace(out).events
    kinds = {"xsave": fmt.Kind.XSAVE, "fxsave": fmt.Kind.FXSAVE, "xrstor": fmt.Kind.XRSTOR,
             "fxrstor": fmt.Kind.FXRSTOR}
    user = ev[((ev["flags"] & fmt.Flag.PL_MASK) == 3)
              & np.isin(ev["kind"], [int(k) for k in kinds.values()])]
    assert len(user) == 5 * rounds
    for i, e in enumerate(user):
        op = printed[i % 5]
        what = f"round {i // 5} {op['kind']} {op['form']}"
        flags = int(e["flags"])
        assert int(e["kind"]) == kinds[op["kind"]], what
        assert int(e["addr"]) == int(op["addr"], 16), what
        assert (flags & fmt.Flag.ADDR_SIZE_MASK) >> fmt.ADDR_SIZE_SHIFT == fmt.AddrSize.A32, what
        assert flags & fmt.Flag.MEM_VALID and not flags & fmt.Flag.ADDR_UNVERIFIED, what
        assert int(e["mem_features"]) & 3 == 3, what
    first = user[:5]
    for op, e in zip(printed[:3], first[:3], strict=True):
        expected = legacy_hash_32bit(bytes.fromhex(op["legacy"]))
        assert int(e["mem_legacy_hash"]) == expected, op["kind"] + " " + op["form"]
        assert int(e["mem_hash"]) == expected  # x87 and SSE only were requested
    assert int(first[3]["mem_hash"]) == int(first[0]["mem_hash"])  # xrstor of the xsave
    assert int(first[4]["mem_hash"]) == int(first[2]["mem_hash"])  # fxrstor of fxsave (reg)
    rep = json.loads(fputrace("report", "--json", str(out)).stdout)
    assert rep["findings"] == [], report_head(out)


def test_a_program_in_an_added_directory_runs_by_its_bare_name(qemu_plugin: Path,
                                                               tmp_path: Path) -> None:
    # --add DIR puts DIR's programs on the guest's PATH, as the check before
    # the boot resolves them: `--run 'hello 7'` runs DIR/hello (the guest's
    # shell said "hello: not found" when only /added was on PATH).
    kernel_available("6.1")
    tools = tmp_path / "tools"
    tools.mkdir()
    src = tmp_path / "hello.c"
    src.write_text('#include <stdio.h>\nint main(int c, char **v) '
                   '{ printf("hello: %s\\n", c > 1 ? v[1] : "-"); return 0; }\n')
    subprocess.run(["gcc", "-O2", "-static", "-o", str(tools / "hello"), str(src)], check=True)
    out = tmp_path / "dir.ftr"
    p = fputrace("record", "--kernel", "6.1", "--add", str(tools), "--run", "hello 7",
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["runs"] == [{"command": "hello 7", "exit_status": 0, "last_line": "hello: 7"}]


def test_a_module_loaded_by_a_command_is_named_by_its_symbols(qemu_plugin: Path,
                                                              tmp_path: Path) -> None:
    # A module that a --run command loads (here the project's seed module,
    # loaded by hand rather than by the fpu-seed workload) was missing from
    # run.kallsyms.gz, whose module symbols were taken right after the boot:
    # its code was then named after the nearest earlier function of another
    # module. The symbols are taken again after every command, with where
    # each module lies.
    import shutil

    from fputrace.kernel.seedmod import seed_module_for
    from fputrace.trace.run import load_run

    kernel_available("6.1")
    ko = seed_module_for(debian.fetch_kernel("6.1"), None, tmp_path)
    mods = tmp_path / "mods"
    mods.mkdir()
    shutil.copy(ko, mods / "seed.ko")
    out = tmp_path / "mod.ftr"
    p = fputrace("record", "--kernel", "6.1", "--add", str(mods),
                 "--run", "insmod mods/seed.ko && grep -c fputrace_seed /proc/modules",
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    meta = json.loads(sidecar(out, "meta.json").read_text())
    assert meta["runs"][0]["exit_status"] == 0 and meta["runs"][0]["last_line"] == "1"
    syms = load_run(out).symbols
    addr = syms.values["seed_clobber_xmm"]
    module = syms.module_at(addr)
    assert module is not None and module.name == "fputrace_seed"
    assert syms.describe(addr + 4) == "seed_clobber_xmm+0x4 [fputrace_seed]"
