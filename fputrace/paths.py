"""Where fputrace keeps its cache and finds its built parts."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """~/.cache/fputrace, or $FPUTRACE_CACHE."""
    env = os.environ.get("FPUTRACE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "fputrace"
    base.mkdir(parents=True, exist_ok=True)
    return base


def build_dir() -> Path:
    """The meson build directory: $FPUTRACE_BUILD or build/ in the source tree."""
    env = os.environ.get("FPUTRACE_BUILD")
    return Path(env) if env else PROJECT_ROOT / "build"
