"""Where fputrace keeps its cache and finds its built parts (the build
directory is fputrace.trace.location's: the trace layer loads its compiled
helper from it)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fputrace.trace.location import SOURCE_ROOT, build_dir

PROJECT_ROOT = SOURCE_ROOT

__all__ = ["PROJECT_ROOT", "build_dir", "cache_dir", "cache_lock"]


def cache_dir() -> Path:
    """~/.cache/fputrace, or $FPUTRACE_CACHE."""
    env = os.environ.get("FPUTRACE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "fputrace"
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the cache entry `name` alone while it is filled: another fputrace
    (a second recording, a bisect, tests side by side) may be filling the same
    one. flock(2): a process that dies holds nothing. Not reentrant: a holder
    never takes the same name again."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
