"""Child processes that do not outlive the fputrace process that started
them (QEMU, a kernel build's make): killed outright (SIGKILL, the OOM
killer, a harness's timeout), fputrace gets no chance to stop them itself."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h

__all__ = ["die_with_parent"]


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the child gets sig when this process dies."""
    parent = os.getpid()

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # died before the prctl took
            os._exit(1)
    return preexec
