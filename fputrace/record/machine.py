"""Run one QEMU machine to completion, driven through QMP.

QEMU is started with a QMP socket, in a session of its own (a terminal's
SIGINT is ours to handle, not QEMU's), and with -no-shutdown: when the
guest powers off or resets, QEMU stops it and waits. Whatever ends the
run (that SHUTDOWN event, the time limit, SIGINT or SIGTERM to us), we
write how it ended into the plugin's end file (MachineSpec.end_file) and
then ask QEMU to quit, so that the plugin flushes its trace and records
that end in its footer. A QEMU that exits on its own leaves the file
unwritten: the footer says EXITED.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from fputrace.errors import FputraceError
from fputrace.record.children import die_with_parent
from fputrace.trace.format import End

QEMU_BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}

# What a deterministic machine adds to QEMU's command line. Everything the
# guest could draw from the host is pinned:
#   -icount shift=0,sleep=off  virtual time counts instructions (one ns each)
#                              instead of following the host clock, so timer
#                              interrupts land on the same instruction every
#                              run; sleep=off lets an idle guest skip ahead
#                              instead of waiting in real time. icount also
#                              makes TCG run the vCPUs in turn on one thread
#                              (no MTTCG), in a fixed order.
#   -rtc clock=vm,base=...     the RTC reads that fixed date plus virtual time.
#   -seed N                    qemu_guest_getrandom() draws from a seeded PRNG:
#                              RDRAND/RDSEED (x86), RNDR/RNDRRS (arm64) and the
#                              virt board's kaslr-seed and rng-seed in the DTB.
# The guest's files are already fixed: the initramfs is written with fixed
# mtimes in a fixed order (fputrace.record.initramfs).
DETERMINISTIC_ICOUNT = "shift=0,sleep=off"
DETERMINISTIC_RTC_BASE = "2024-01-01T00:00:00"
DETERMINISTIC_SEED = 1


def deterministic_refusal(smp: int) -> str | None:
    """Why a machine of `smp` vCPUs cannot record deterministically, or None.

    With -icount, TCG runs all vCPUs in turn on one thread, and translated
    code is shared between them. QEMU 10.0 then binds a plugin's per-vCPU
    inline operations (qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu,
    the conditional callbacks) to the vCPU that translated the block
    (accel/tcg/plugin-gen.c, gen_cpu_index(): a constant unless CF_PARALLEL),
    so another vCPU running that block updates the wrong vCPU's state: seen
    here as a crash of QEMU in generated code with --smp 2."""
    if smp == 1:
        return None
    return (f"--smp {smp}: QEMU runs a deterministic machine's vCPUs on one thread, where "
            "the plugin's per-vCPU state is not kept apart")


def resolve_deterministic(asked: bool | None, smp: int) -> bool:
    """Whether to run deterministically: `asked` True or False is the
    user's word (True refused where it cannot be kept), None means
    wherever the machine allows it."""
    refusal = deterministic_refusal(smp)
    if asked and refusal is not None:
        raise FputraceError(f"{refusal}: leave out --deterministic, or use --smp 1")
    return asked is not False and refusal is None


def deterministic_args() -> list[str]:
    return ["-icount", DETERMINISTIC_ICOUNT, "-rtc", f"clock=vm,base={DETERMINISTIC_RTC_BASE}",
            "-seed", str(DETERMINISTIC_SEED)]


@dataclass
class MachineSpec:
    arch: str
    kernel: Path
    initrd: Path | None
    append: str
    smp: int = 1
    memory_mb: int = 1024
    plugin: str | None = None  # the -plugin argument: path,key=value,...
    serial_files: list[Path] = field(default_factory=list)  # ttyS0 (console), ttyS1, ...
    extra_args: list[str] = field(default_factory=list)
    deterministic: bool = False  # deterministic_args(): the same run every time
    # The plugin's end= file: how the run ended (fputrace.trace.format.End),
    # written before QEMU is asked to quit.
    end_file: Path | None = None
    # At the guest's shutdown: whether it had finished its work (DONE) or
    # stopped before (GUEST_STOPPED).
    finished: Callable[[], bool] | None = None


@dataclass
class MachineResult:
    status: str  # "shutdown", "reset", "timeout", "interrupted", "crashed"
    detail: str
    wall_s: float
    returncode: int | None
    stderr: str
    signal: str = ""  # "interrupted": the signal that stopped us (SIGINT, SIGTERM)


def qemu_binary(arch: str) -> str:
    name = QEMU_BINARIES[arch]
    path = shutil.which(name)
    if path is None:
        raise FputraceError(f"{name} not found: run 'make setup' (installs QEMU >= 9.0 with "
                            "TCG plugin support)")
    return path


def qemu_version(arch: str = "x86_64") -> str:
    out = subprocess.run([qemu_binary(arch), "--version"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.split("version", 1)[-1].strip().split()[0] if "version" in first else "unknown"


def command_line(spec: MachineSpec, qmp_socket: Path) -> list[str]:
    cmd = [qemu_binary(spec.arch), "-accel", "tcg", "-m", str(spec.memory_mb),
           "-smp", str(spec.smp), "-display", "none", "-no-reboot", "-no-shutdown",
           "-nodefaults",
           "-monitor", "none", "-qmp", f"unix:{qmp_socket},server=on,wait=off",
           "-kernel", str(spec.kernel), "-append", spec.append]
    if spec.arch == "x86_64":
        cmd += ["-cpu", "max"]
    else:
        # EL2 for the host kernel (KVM), GICv3 for its vGIC; pauth-impdef
        # spares TCG the costly architected pointer-authentication hash.
        cmd += ["-M", "virt,virtualization=on,gic-version=3", "-cpu", "max,pauth-impdef=on"]
    if spec.initrd is not None:
        cmd += ["-initrd", str(spec.initrd)]
    for i, f in enumerate(spec.serial_files):
        cmd += ["-chardev", f"file,id=serial{i},path={f}", "-serial", f"chardev:serial{i}"]
    if spec.plugin:
        cmd += ["-plugin", spec.plugin]
    if spec.deterministic:
        cmd += deterministic_args()
    return cmd + spec.extra_args


async def _connect(client: QMPClient, sock: Path, proc: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if proc.returncode is not None:
            return
        if sock.exists():
            # ConnectError: QEMU closed the socket during the greeting, as one
            # that exits at once does (a kernel it cannot load); the loop then
            # sees it gone.
            with contextlib.suppress(OSError, ConnectionError, ConnectError):
                await client.connect(str(sock))
                return
        await asyncio.sleep(0.05)


def _write_end(spec: MachineSpec, end: End) -> None:
    """Tell the plugin how the run ended, before QEMU is asked to quit."""
    if spec.end_file is not None:
        spec.end_file.write_text(end.name + "\n")


def _stderr_reason(stderr: str) -> str:
    """QEMU's own last words, for a QEMU that failed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "nothing on its stderr"


async def _run(spec: MachineSpec, timeout_s: float,
               tick: Callable[[float], None] | None) -> MachineResult:
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not signalled.done():
            signalled.set_result(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, int(signum))
    try:
        return await _drive(spec, timeout_s, tick, signalled)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _drive(spec: MachineSpec, timeout_s: float, tick: Callable[[float], None] | None,
                 signalled: asyncio.Future[int]) -> MachineResult:
    with tempfile.TemporaryDirectory(prefix="fputrace-qmp-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        errlog = Path(tmp) / "stderr"
        start = time.monotonic()
        with open(errlog, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *command_line(spec, sock), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                # In a session of its own, a Ctrl-C reaches the recorder,
                # which stops QEMU cleanly; killed outright, QEMU goes too.
                preexec_fn=die_with_parent())
        client = QMPClient("fputrace")
        status, detail, signame = "crashed", "", ""
        stop: End | None = None
        try:
            await _connect(client, sock, proc)
            connected = client.runstate.name == "RUNNING"

            async def wait_shutdown() -> dict[str, Any] | None:
                if not connected:
                    return None
                async for event in client.events:
                    if event["event"] == "SHUTDOWN":
                        data = event.get("data", {})
                        return {str(k): v for k, v in data.items()} if isinstance(data, dict) \
                            else {}
                return None

            waiter = asyncio.ensure_future(wait_shutdown())
            exited = asyncio.ensure_future(proc.wait())
            while True:
                elapsed = time.monotonic() - start
                if tick:
                    tick(elapsed)
                pending: set[asyncio.Future[Any]] = {waiter, exited, signalled}
                done, _ = await asyncio.wait(pending, timeout=0.5,
                                             return_when=asyncio.FIRST_COMPLETED)
                if waiter in done and (shutdown := waiter.result()) is not None:
                    # -no-shutdown: the guest has stopped and QEMU waits for us.
                    reason = str(shutdown.get("reason", ""))
                    status = "reset" if reason in ("guest-reset", "guest-panic") else "shutdown"
                    detail = reason
                    finished = status == "shutdown" and (spec.finished is None or
                                                         spec.finished())
                    stop = End.DONE if finished else End.GUEST_STOPPED
                    break
                if exited in done or waiter in done:
                    break
                if signalled in done:
                    signame = signal.Signals(signalled.result()).name
                    status, detail = "interrupted", f"{signame} to the recorder"
                    stop = End.INTERRUPTED
                    break
                if elapsed > timeout_s:
                    status, detail = "timeout", f"no guest shutdown after {timeout_s:.0f} s"
                    stop = End.TIMEOUT
                    break
            if stop is not None and proc.returncode is None:
                _write_end(spec, stop)
                with contextlib.suppress(Exception):
                    await client.execute("quit")
            try:
                await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                status, detail = "crashed", "QEMU did not exit when asked to quit"
            waiter.cancel()
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = errlog.read_text(errors="replace")
        if status == "crashed" and not detail:
            detail = (f"QEMU exited with status {proc.returncode} before the guest shut down; "
                      f"QEMU said: {_stderr_reason(stderr)}")
        return MachineResult(status, detail, time.monotonic() - start, proc.returncode, stderr,
                             signame)


def run_machine(spec: MachineSpec, timeout_s: float,
                tick: Callable[[float], None] | None = None) -> MachineResult:
    """Boot the machine and wait until it has stopped. Never raises for guest
    trouble; SIGINT and SIGTERM stop it cleanly (status "interrupted")."""
    return asyncio.run(_run(spec, timeout_s, tick))
