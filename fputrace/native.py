"""The compiled helpers (analyzers/native/fpanalysis.c, built by meson as
build/libfpanalysis.so): found and declared here once, for the trace reader
and the analyzers. The reader has a Python fallback for its checksum; the
analyzers need the library (`make setup` builds it)."""

from __future__ import annotations

import ctypes
from functools import cache

from fputrace.paths import build_dir

_p = ctypes.c_void_p
_n = ctypes.c_size_t
_u64 = ctypes.c_uint64


@cache
def library() -> ctypes.CDLL | None:
    path = build_dir() / "libfpanalysis.so"
    if not path.exists():
        return None
    lib = ctypes.CDLL(str(path))
    lib.fpa_crc32c.restype = ctypes.c_uint32
    lib.fpa_crc32c.argtypes = [ctypes.c_char_p, _n]
    lib.fpa_copy_blocks.restype = _n
    lib.fpa_copy_blocks.argtypes = [_p, _n, _p, _p, _p, _n, _p, _p]
    lib.fpa_classify.restype = ctypes.c_int
    lib.fpa_classify.argtypes = [_p, _n, _p, _n, _u64, _u64, _u64, _p, _p, _p, _p, _p,
                                 _p, _p, _n, _p, _p, _p, _p, _p, _p, _n, _p, _p,
                                 _p, _p, _n, _p]
    lib.fpa_fpu_buffer_offset.restype = ctypes.c_uint64
    lib.fpa_fpu_buffer_offset.argtypes = [_p, _n]
    lib.fpa_boundaries.restype = ctypes.c_int
    lib.fpa_boundaries.argtypes = [_p, _n, _p, _p, _n, _u64, _p]
    return lib
