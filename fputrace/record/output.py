"""Where a recording goes: checked before anything boots, so a bad -o costs
a second, not a whole recording."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.record.workloads import WorkloadRun
from fputrace.trace import format as fmt
from fputrace.trace.run import sidecar

# Events a boot with the KVM modules loaded records before any workload
# (about 9,000 on Debian 6.1), and what the sidecars take (kallsyms.gz,
# console log): rounded up.
BOOT_EVENTS = 20_000
SIDECAR_BYTES = 8 << 20
# A command given with --run: unknown, so a generous allowance.
FOREIGN_RUN_EVENTS = 500_000


def estimated_trace_bytes(runs: list[WorkloadRun], foreign_runs: int) -> int:
    """An upper estimate of the trace and its sidecars."""
    events = BOOT_EVENTS + foreign_runs * FOREIGN_RUN_EVENTS
    events += sum(r.count * r.workload.events_per_count for r in runs)
    return events * fmt.EVENT_DTYPE.itemsize + SIDECAR_BYTES


def check_output(out: Path, need_bytes: int) -> None:
    """The trace (and its sidecars beside it) can be written at out, with
    room for need_bytes; else one FputraceError saying what to do."""
    if out.is_dir():
        raise FputraceError(f"-o {out}: is a directory: give a file name such as "
                            f"{out / 'run.ftr'}")
    parent = out.parent
    if not parent.is_dir():
        # Not made here: a failed recording would leave it behind.
        raise FputraceError(f"-o {out}: the directory {parent} does not exist: create it "
                            "first, or choose another output path")
    # Write a real file beside it: permissions, read-only mounts and
    # pseudo-filesystems (/proc, /sys) all show up here.
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".fputrace-check-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        why = "no space left" if e.errno == errno.ENOSPC else e.strerror
        raise FputraceError(f"-o {out}: cannot write in {parent}: {why}: choose another "
                            "output path") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise FputraceError(f"-o {out}: the existing file is not writable: remove it or "
                            "choose another output path")
    free = shutil.disk_usage(parent).free
    if free < need_bytes:
        raise FputraceError(f"-o {out}: {free >> 20} MiB free in {parent}, the recording "
                            f"needs about {need_bytes >> 20} MiB: free some space or choose "
                            "another output path")


class OutputLock:
    """run.lock beside a trace, locked while a recording writes it: a second
    record to the same -o refuses at once, where it would interleave its
    blocks with the first one's in the file. The lock is the kernel's
    (flock), so a recorder that dies leaves none held."""

    def __init__(self, out: Path) -> None:
        self.path = sidecar(out, "lock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise FputraceError(f"-o {out}: cannot create {self.path}: {e.strerror}: "
                                    "choose another output path") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FputraceError(f"-o {out}: another fputrace record (pid {holder}) is "
                                    "writing it: wait for it to end, or choose another "
                                    "output path") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file that its holder removed on leaving: again
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
