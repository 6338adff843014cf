"""Compiled helpers, loaded with cffi from the meson build directory.

A NativeLibrary is one shared object and the one header that declares it:
its functions, argument structs and enumerations are read from the header,
not restated in Python. The trace layer's own is READER (ftr-read.c: block
checksums and copies), which has a Python fallback; the analyzers load
their engine the same way (analyzers/native.py).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import cffi

from fputrace.trace.location import build_dir

__all__ = ["READER", "NativeLibrary"]


class NativeLibrary:
    def __init__(self, name: str, header: Path) -> None:
        self.name = name  # build/lib{name}.so
        self.header = header

    def declarations(self) -> str:
        """The header as cffi takes it: without its preprocessor lines."""
        lines = self.header.read_text().splitlines()
        return "\n".join(line for line in lines if not line.lstrip().startswith("#"))

    @cached_property
    def _ffi(self) -> cffi.FFI:
        f = cffi.FFI()
        f.cdef(self.declarations())
        return f

    def ffi(self) -> cffi.FFI:
        return self._ffi

    @cached_property
    def _library(self) -> Any | None:
        path = build_dir() / f"lib{self.name}.so"
        if not path.exists():
            return None
        return self._ffi.dlopen(str(path))

    def library(self) -> Any | None:
        """The loaded library (its functions and enumerators as attributes),
        or None when it is not built."""
        return self._library

    def pointer(self, ctype: str, array: Any) -> Any:
        """A C pointer of type ctype to a numpy array's data."""
        return self._ffi.cast(ctype, array.ctypes.data)


READER = NativeLibrary("ftrread", Path(__file__).resolve().parent / "ftr-read.h")
