"""Where a recording goes: checked before anything boots, so a bad -o costs
a second, not a whole recording."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.trace import format as fmt
from fputrace.workloads import WorkloadRun

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
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FputraceError(f"-o {out}: cannot create the directory {parent}: "
                            f"{e.strerror}: choose another output path") from None
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
