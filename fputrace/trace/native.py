"""The compiled helpers, libfpanalysis (analyzers/native/fpanalysis.c, built
by meson into the build directory), for the trace reader and the analyzers.

The library is called through cffi with its own header, fpanalysis.h: its
functions, argument structs and enumerations are declared there once and
read from there, not restated here. The reader has a Python fallback for its
checksum; the analyzers need the library (`make setup` builds it).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import cffi

SOURCE_ROOT = Path(__file__).resolve().parents[2]
HEADER = SOURCE_ROOT / "analyzers" / "native" / "fpanalysis.h"


def build_dir() -> Path:
    """The meson build directory: $FPUTRACE_BUILD or build/ in the source tree."""
    env = os.environ.get("FPUTRACE_BUILD")
    return Path(env) if env else SOURCE_ROOT / "build"


def declarations(header: Path = HEADER) -> str:
    """The header as cffi takes it: without its preprocessor lines."""
    lines = header.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


@cache
def ffi() -> cffi.FFI:
    f = cffi.FFI()
    f.cdef(declarations())
    return f


@cache
def library() -> Any | None:
    """The loaded library (its functions and enumerators as attributes), or
    None when it is not built."""
    path = build_dir() / "libfpanalysis.so"
    if not path.exists():
        return None
    return ffi().dlopen(str(path))


def pointer(ctype: str, array: Any) -> Any:
    """A C pointer of type ctype to a numpy array's data."""
    return ffi().cast(ctype, array.ctypes.data)
