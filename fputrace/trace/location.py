"""Where the source tree and the meson build directory are: the trace
layer loads its compiled helper from there, and everything above finds the
other built parts the same way."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["SOURCE_ROOT", "build_dir"]


def build_dir() -> Path:
    """The meson build directory: $FPUTRACE_BUILD or build/ in the source tree."""
    env = os.environ.get("FPUTRACE_BUILD")
    return Path(env) if env else SOURCE_ROOT / "build"
