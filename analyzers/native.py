"""ctypes bindings of analyzers/native/fpanalysis.c (built by meson as
build/libfpanalysis.so): the per-event passes for large traces.

Everything here has a numpy reference in the analyzers; `available()` says
whether the library was built, and callers fall back to numpy without it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from fputrace.paths import build_dir
from fputrace.trace import format as fmt

GUEST_CAP = 4096
FINDINGS_CAP = 1 << 16

_p = ctypes.c_void_p
_n = ctypes.c_size_t
_u64 = ctypes.c_uint64


@cache
def _library() -> ctypes.CDLL | None:
    path = build_dir() / "libfpanalysis.so"
    if not path.exists():
        return None
    lib = ctypes.CDLL(str(path))
    lib.fpa_classify.restype = ctypes.c_int
    lib.fpa_classify.argtypes = [_p, _n, _p, _n, _u64, _u64, _u64, _p, _p, _p, _p,
                                 _p, _p, _n, _p, _p, _p, _p, _p, _p, _n, _p, _p]
    lib.fpa_group.restype = ctypes.c_int64
    lib.fpa_group.argtypes = [_p, _n, _p, _n, _p, _n, _p, _n, _n, _p, _p, _p, _n]
    return lib


def available() -> bool:
    return _library() is not None


def _ptr(a: npt.NDArray[np.generic]) -> int:
    return int(a.ctypes.data)


@dataclass
class Classified:
    cls: npt.NDArray[np.uint8]
    why: npt.NDArray[np.uint8]
    ctx: npt.NDArray[np.int8]
    ident: npt.NDArray[np.int64]
    guest: dict[int, int]
    # findings, in the order they were decided: (event, last_sync, resumed, buffer, cls)
    findings: list[tuple[int, int, int, int, int]]
    findings_total: int


def classify(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], init_lo: int, init_hi: int,
             avx_init_hash: int) -> Classified:
    lib = _library()
    assert lib is not None
    ev = np.ascontiguousarray(ev)
    n_tasks = len(tasks)
    tasks = np.ascontiguousarray(tasks) if n_tasks else np.zeros(1, dtype=fmt.TASK_DTYPE)
    n = len(ev)
    cls = np.empty(n, dtype=np.uint8)
    why = np.empty(n, dtype=np.uint8)
    ctx = np.empty(n, dtype=np.int8)
    ident = np.empty(n, dtype=np.int64)
    g_buf = np.empty(GUEST_CAP, dtype=np.uint64)
    g_vmcb = np.empty(GUEST_CAP, dtype=np.uint64)
    f_event = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_last = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_resumed = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_buffer = np.empty(FINDINGS_CAP, dtype=np.uint64)
    f_cls = np.empty(FINDINGS_CAP, dtype=np.uint8)
    n_guest, f_len, f_total = _n(0), _n(0), _n(0)
    rc = lib.fpa_classify(_ptr(ev), n, _ptr(tasks), n_tasks,
                          init_lo, init_hi, avx_init_hash, _ptr(cls), _ptr(why), _ptr(ctx),
                          _ptr(ident), _ptr(g_buf), _ptr(g_vmcb), GUEST_CAP, ctypes.byref(n_guest),
                          _ptr(f_event), _ptr(f_last), _ptr(f_resumed), _ptr(f_buffer),
                          _ptr(f_cls), FINDINGS_CAP, ctypes.byref(f_len), ctypes.byref(f_total))
    if rc != 0:
        raise MemoryError("fpanalysis: out of memory")
    k = f_len.value
    findings = list(zip(f_event[:k].tolist(), f_last[:k].tolist(), f_resumed[:k].tolist(),
                        f_buffer[:k].tolist(), f_cls[:k].tolist(), strict=True))
    guest = {int(b): int(v) for b, v in zip(g_buf[:n_guest.value].tolist(),
                                            g_vmcb[:n_guest.value].tolist(), strict=True)}
    return Classified(cls, why, ctx, ident, guest, findings, f_total.value)


def group(keys: npt.NDArray[np.generic], cats: npt.NDArray[np.generic], ncat: int,
          weights: npt.NDArray[np.generic] | None = None,
          mask: npt.NDArray[np.bool_] | None = None
          ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Distinct keys (8-byte), per key and category the count and weight sum.
    Arrays may be strided views into a record array."""
    lib = _library()
    assert lib is not None
    assert keys.dtype.itemsize == 8 and cats.dtype.itemsize == 1
    assert weights is None or weights.dtype.itemsize == 4
    n = len(keys)
    m = np.ascontiguousarray(mask, dtype=np.uint8) if mask is not None else None
    cap = 256
    while True:
        out_keys = np.empty(cap, dtype=np.uint64)
        counts = np.empty((cap, ncat), dtype=np.uint64)
        sums = np.empty((cap, ncat), dtype=np.uint64)
        k = lib.fpa_group(_ptr(keys), keys.strides[0] if n else 8, _ptr(cats),
                          cats.strides[0] if n else 1,
                          _ptr(weights) if weights is not None else None,
                          weights.strides[0] if weights is not None and n else 4,
                          _ptr(m) if m is not None else None, n, ncat, _ptr(out_keys),
                          _ptr(counts), _ptr(sums), cap)
        if k < 0:
            raise MemoryError("fpanalysis: out of memory")
        if k <= cap:
            return out_keys[:k], counts[:k], sums[:k]
        cap = int(k)
