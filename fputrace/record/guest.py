"""An L2 Linux guest inside the recorded L1 host (record --guest-kernel).

The L2 guest runs under a real VMM in L1: this machine's own
qemu-system-* with `-accel kvm`, so the L1 kernel's KVM (the code being
recorded) runs a real Linux kernel with its own tasks, context switches
and FPU state handling. No VMM is put in the initramfs: QEMU shares this
machine's root file system into L1 read-only over 9p (`-virtfs`, a
virtio-9p device), and L1 runs the VMM in a chroot of it, with its own
/dev (for /dev/kvm), /proc and /sys bound in. The VMM is then the very
binary and libraries this machine runs, without a copy; it needs only the
9p and virtio-pci modules in L1, which Debian's kernels have.

The guest boots a Debian kernel (fetched as for --kernel) with an
initramfs of the same kind as L1's, running the guest workloads, which
check their own registers. Its console goes to a file in L1's memory
(GUEST_CONSOLE), and once the VMM has exited each of its lines is printed
on L1's console prefixed with GUEST_MARK, so that the recorder reads the
guest's own workload results from it. The file never blocks; a pipe to a
relay shell in L1 makes the guest's UART wait whenever the relay does.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fputrace.kernel.layout import KernelTarget, kernel_cmdline
from fputrace.record.workloads import WorkloadRun

MARK = "FPUTRACE"
GUEST_MARK = f"{MARK}-L2 "
# The 9p share's tag and where L1 mounts it.
SHARE_TAG = "fputrace-root"
HOST_ROOT = "/host"
# The L1 modules the share needs (their dependencies come with them).
SHARE_MODULES = {"x86_64": ["virtio_pci", "9pnet_virtio", "9p"],
                 "aarch64": ["virtio_pci", "9pnet_virtio", "9p"]}
# The VMM in L1, by architecture, and its machine. L1 must be of this
# machine's architecture, whose binaries the share holds (an arm64 L1 on an
# x86-64 machine would need an arm64 root file system: fputrace.cmds.record
# refuses it).
#
# The x86 guest goes without KVM's paravirtual EOI (-kvm-pv-eoi), because of
# how QEMU 10.0's TCG injects an interrupt at VMRUN: helper_vmrun() delivers
# an EVENTINJ interrupt at once but leaves cs->exception_index set to its
# vector. If the vCPU then leaves its execution loop before any exception or
# #VMEXIT has overwritten that (an icount deadline, a kick), the CPU loop
# delivers the same vector again, as an exception, whatever L2's IF: the
# handler interrupts itself. With PV EOI, L2's timer handler acknowledges
# without a VM exit and reaches timekeeper_lock with the vector still
# pending, and the second delivery spins on the lock the first one holds.
# Without it, the EOI write is a VM exit before any lock, which ends the
# window: a late second delivery can no longer happen there.
VMM = {"x86_64": ["qemu-system-x86_64", "-cpu", "host,-kvm-pv-eoi"],
       "aarch64": ["qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", "host"]}
GUEST_MEMORY_MB = 256
# The guest's console raises no interrupt: its /init prints through
# /dev/kmsg (fputrace.record.recorder._init_script(polled=True)), and the kernel's
# console writes poll the UART with its interrupts masked
# (serial8250_console_write()). That closes the window the EOI fix above
# leaves: handle_edge_irq() takes the serial interrupt's descriptor lock
# before the EOI, and a second delivery of the vector there spun on it (a
# guest recording deadlocked that way in the e2e tests). devkmsg=on: every
# line, without the rate limit a user's writes to /dev/kmsg have; time=0:
# the lines as written, for the recorder to parse.
POLLED_CONSOLE = "printk.devkmsg=on printk.time=0"
# Where L1 keeps the guest's console: on L1's /dev (a devtmpfs, in memory),
# which the VMM's chroot binds at the same path (the share is read-only).
GUEST_CONSOLE = "/dev/fputrace-l2-console"
# L1 needs room for the guest's memory and the VMM besides its own.
HOST_MEMORY_MB = 1536


@dataclass(frozen=True)
class GuestPlan:
    target: KernelTarget  # the L2 kernel
    initramfs: Path  # on this machine, seen by L1 at the same path under HOST_ROOT
    host_arch: str
    # L1 workloads run in the background while the guest runs (--alongside),
    # stopped with SIGTERM when it ends: a hog preempts the vCPU thread.
    alongside: list[WorkloadRun] = field(default_factory=list)

    def qemu_args(self) -> list[str]:
        """The share, for L1's QEMU command line: this machine's / read-only."""
        return ["-virtfs", f"local,path=/,mount_tag={SHARE_TAG},security_model=none,"
                           f"readonly=on,id={SHARE_TAG}"]

    def script(self) -> list[str]:
        """The L1 shell lines that boot the guest and relay its console."""
        vmm = [*VMM[self.host_arch], "-accel", "kvm", "-m", str(GUEST_MEMORY_MB), "-smp", "1",
               "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
               "-kernel", str(self.target.vmlinuz.resolve()),
               "-initrd", str(self.initramfs.resolve()),
               "-append", f"{kernel_cmdline(self.target.arch)} {POLLED_CONSOLE}",
               "-serial", f"file:{GUEST_CONSOLE}", "-serial", "null"]
        start, finish = [], []
        for i, r in enumerate(self.alongside):
            log = f"/alongside-{i}.log"
            start.append(f"( exec /workloads/{r.workload.binary_name} {r.count} "
                         f"{' '.join(r.workload.args)} >{log} 2>&1 ) & along{i}=$!")
            # Its output after the guest's, in the recorder's usual frame.
            finish += [f"kill -TERM $along{i} 2>/dev/null; wait $along{i}; rc=$?",
                       f"echo {MARK}-WORKLOAD-BEGIN {r.label}", f"cat {log}",
                       f"echo {MARK}-WORKLOAD-END {r.label} $rc"]
        return [
            f"mkdir -p {HOST_ROOT}",
            f"mount -t 9p -o trans=virtio,version=9p2000.L,ro {SHARE_TAG} {HOST_ROOT} "
            f"|| echo FPUTRACE-GUEST-FAILED cannot mount the 9p share",
            f"for d in dev proc sys; do mount --bind /$d {HOST_ROOT}/$d; done",
            *start,
            "echo FPUTRACE-GUEST-BEGIN",
            # The VMM's own messages go to L1's console as they come.
            f"chroot {HOST_ROOT} {' '.join(shlex.quote(a) for a in vmm)} </dev/null 2>&1",
            f"while IFS= read -r line; do echo \"{GUEST_MARK}$line\"; done <{GUEST_CONSOLE}",
            "echo FPUTRACE-GUEST-END",
            *finish,
        ]


def guest_console(text: str) -> str:
    """The guest's own console lines out of L1's."""
    return "\n".join(line.split(GUEST_MARK, 1)[1] for line in text.splitlines()
                     if GUEST_MARK in line)
