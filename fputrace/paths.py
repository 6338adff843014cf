"""Where fputrace keeps its cache and finds its built parts (the build
directory is fputrace.trace.location's: the trace layer loads its compiled
helper from it)."""

from __future__ import annotations

import os
from pathlib import Path

from fputrace.trace.location import SOURCE_ROOT, build_dir

PROJECT_ROOT = SOURCE_ROOT

__all__ = ["PROJECT_ROOT", "build_dir", "cache_dir"]


def cache_dir() -> Path:
    """~/.cache/fputrace, or $FPUTRACE_CACHE."""
    env = os.environ.get("FPUTRACE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "fputrace"
    base.mkdir(parents=True, exist_ok=True)
    return base
