"""ctypes bindings of analyzers/native/fpanalysis.c (built by meson as
build/libfpanalysis.so): the per-event passes for large traces.

The rules are implemented there once; tests/oracle.py restates them as the
oracle the tests compare against.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fputrace.errors import FputraceError
from fputrace.native import library
from fputrace.trace import format as fmt

GUEST_CAP = 1 << 16
FINDINGS_CAP = 1 << 16

def _ptr(a: npt.NDArray[np.generic]) -> int:
    return int(a.ctypes.data)


# Layout of the tables' fixed-size part (see fpanalysis.c, S_*).
NKIND, NCLS, NCPU = 64, 6, 256
S_KIND = 0
S_KIND64 = S_KIND + NKIND
S_KIND_BYTES = S_KIND64 + NKIND
S_CPU_KIND = S_KIND_BYTES + NKIND
S_LEVEL_KIND = S_CPU_KIND + NCPU * NKIND
S_CLS = S_LEVEL_KIND + 2 * NKIND
S_CLS_BYTES = S_CLS + NCLS
S_WHY = S_CLS_BYTES + NCLS
S_LEVEL_CLS = S_WHY + 8
S_LEVEL_CLS_B = S_LEVEL_CLS + 2 * NCLS
S_OPS = S_LEVEL_CLS_B + 2 * NCLS
S_SIZE = S_OPS + 16
OP_ENTRIES, OP_SWITCHES, OP_TASKBUF, OP_SIGNALS, OP_AROUND_SIG = 0, 1, 2, 5, 6
ROW = NKIND + 2 * NCLS
VCPU_ROW = 2 * NCLS + 3  # classes, class bytes, saves, restores, bytes


@dataclass
class Aggregates:
    """Every table the reports need, filled during classification."""

    kind: npt.NDArray[np.uint64]  # [NKIND]
    kind64: npt.NDArray[np.uint64]
    kind_bytes: npt.NDArray[np.uint64]
    cpu_kind: npt.NDArray[np.uint64]  # [NCPU, NKIND]
    level_kind: npt.NDArray[np.uint64]  # [2, NKIND]
    cls: npt.NDArray[np.uint64]  # [NCLS]
    cls_bytes: npt.NDArray[np.uint64]
    why: npt.NDArray[np.uint64]  # [8]
    level_cls: npt.NDArray[np.uint64]  # [2, NCLS]
    level_cls_bytes: npt.NDArray[np.uint64]
    ops: npt.NDArray[np.uint64]  # [16], OP_*
    pc: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # keys, rows [ROW]
    task: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # ident keys, rows [ROW]
    guest: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # VMCBs, rows [VCPU_ROW]
    features: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # sets, rows [4]
    op_tasks: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # announcements, rows [4]
    vmcb_entries: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # VMCBs, rows [1]


@dataclass
class Classified:
    cls: npt.NDArray[np.uint8]
    why: npt.NDArray[np.uint8]
    ctx: npt.NDArray[np.int8]
    ident: npt.NDArray[np.int64]
    guest_of: npt.NDArray[np.uint64]
    guest: dict[int, int]
    # findings, in the order they were decided: (event, last_sync, resumed, buffer, cls)
    findings: list[tuple[int, int, int, int, int]]
    findings_total: int
    tables: Aggregates | None


def classify(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], init_lo: int, init_hi: int,
             avx_init_hash: int, tables: bool = False) -> Classified:
    """Classify every event; with tables, also fill every table of the report
    in the same pass."""
    cap = 1 << 12
    while True:
        result, needed = _classify(ev, tasks, init_lo, init_hi, avx_init_hash, tables, cap)
        if result is not None:
            return result
        cap = needed


def _classify(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], init_lo: int, init_hi: int,
              avx_init_hash: int, tables: bool, cap: int) -> tuple[Classified | None, int]:
    lib = library()
    if lib is None:
        raise FputraceError("the analysis library is not built (build/libfpanalysis.so): "
                            "run 'make setup'")
    ev = np.ascontiguousarray(ev)
    n_tasks = len(tasks)
    tasks = np.ascontiguousarray(tasks) if n_tasks else np.zeros(1, dtype=fmt.TASK_DTYPE)
    n = len(ev)
    cls = np.empty(n, dtype=np.uint8)
    why = np.empty(n, dtype=np.uint8)
    ctx = np.empty(n, dtype=np.int8)
    ident = np.empty(n, dtype=np.int64)
    guest_of = np.empty(n, dtype=np.uint64)
    g_buf = np.empty(GUEST_CAP, dtype=np.uint64)
    g_vmcb = np.empty(GUEST_CAP, dtype=np.uint64)
    f_event = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_last = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_resumed = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_buffer = np.empty(FINDINGS_CAP, dtype=np.uint64)
    f_cls = np.empty(FINDINGS_CAP, dtype=np.uint8)
    n_guest, f_len, f_total = ctypes.c_size_t(0), ctypes.c_size_t(0), ctypes.c_size_t(0)
    small = np.empty(S_SIZE, dtype=np.uint64)
    n_out = np.zeros(6, dtype=np.int64)
    widths = (ROW, ROW, VCPU_ROW, 4, 4, 1)
    keys = [np.empty(cap if tables else 0, dtype=np.uint64) for _ in widths]
    rows = [np.empty((cap if tables else 0, w), dtype=np.uint64) for w in widths]
    ptrs = (ctypes.c_void_p * 12)(*(_ptr(a) for pair in zip(keys, rows, strict=True)
                                    for a in pair))
    rc = lib.fpa_classify(_ptr(ev), n, _ptr(tasks), n_tasks,
                          init_lo, init_hi, avx_init_hash, _ptr(cls), _ptr(why), _ptr(ctx),
                          _ptr(ident), _ptr(guest_of), _ptr(g_buf), _ptr(g_vmcb), GUEST_CAP,
                          ctypes.byref(n_guest),
                          _ptr(f_event), _ptr(f_last), _ptr(f_resumed), _ptr(f_buffer),
                          _ptr(f_cls), FINDINGS_CAP, ctypes.byref(f_len), ctypes.byref(f_total),
                          _ptr(small) if tables else None, ptrs, cap, _ptr(n_out))
    if rc < 0:
        raise MemoryError("fpanalysis: out of memory")
    if rc == 1:
        return None, int(n_out.max())
    k = f_len.value
    findings = list(zip(f_event[:k].tolist(), f_last[:k].tolist(), f_resumed[:k].tolist(),
                        f_buffer[:k].tolist(), f_cls[:k].tolist(), strict=True))
    guest = {int(b): int(v) for b, v in zip(g_buf[:n_guest.value].tolist(),
                                            g_vmcb[:n_guest.value].tolist(), strict=True)}
    agg = None
    if tables:
        parts = [(k[:m], r[:m]) for k, r, m in zip(keys, rows, n_out.tolist(), strict=True)]
        agg = Aggregates(
            small[S_KIND:S_KIND64], small[S_KIND64:S_KIND_BYTES],
            small[S_KIND_BYTES:S_CPU_KIND], small[S_CPU_KIND:S_LEVEL_KIND].reshape(NCPU, NKIND),
            small[S_LEVEL_KIND:S_CLS].reshape(2, NKIND), small[S_CLS:S_CLS_BYTES],
            small[S_CLS_BYTES:S_WHY], small[S_WHY:S_LEVEL_CLS],
            small[S_LEVEL_CLS:S_LEVEL_CLS_B].reshape(2, NCLS),
            small[S_LEVEL_CLS_B:S_OPS].reshape(2, NCLS), small[S_OPS:S_SIZE], *parts)
    return Classified(cls, why, ctx, ident, guest_of, guest, findings, f_total.value, agg), 0


class _BoundsOut(ctypes.Structure):
    _fields_ = [("rel", ctypes.c_void_p), ("rel_prev_return", ctypes.c_void_p),
                ("rel_cap", ctypes.c_size_t), ("rel_len", ctypes.c_size_t),
                ("quiet_per_key", ctypes.c_void_p),
                ("vcpu_keys", ctypes.c_void_p), ("vcpu_equal", ctypes.c_void_p),
                ("vcpu_cap", ctypes.c_size_t), ("vcpu_len", ctypes.c_size_t),
                ("diff_entry", ctypes.c_void_p), ("diff_exit", ctypes.c_void_p),
                ("diff_cap", ctypes.c_size_t), ("diff_len", ctypes.c_size_t),
                ("first_entries", ctypes.c_uint64), ("unreadable", ctypes.c_uint64),
                ("kfpu_begins", ctypes.c_uint64)]


@dataclass
class BoundaryPass:
    """The linear part of the boundary checks (fpa_boundaries)."""

    rel: npt.NDArray[np.int64]  # events to look at one by one, in order
    rel_prev_return: npt.NDArray[np.int64]  # for returns: the key's previous return, or -1
    quiet_per_key: npt.NDArray[np.int64]  # [n_keys + 1], index 0: unknown task
    vcpus: npt.NDArray[np.uint64]  # VMCB | (task key + 1) << 48
    vcpu_equal: npt.NDArray[np.uint64]  # entries equal to their exit, per vCPU
    diff_entry: npt.NDArray[np.int64]  # entries that differ from their exit ...
    diff_exit: npt.NDArray[np.int64]  # ... and those exits
    first_entries: int
    unreadable: int
    kfpu_begins: int
    fpu_offset: int  # a task's FPU buffer from its task pointer (fpa_fpu_buffer_offset), or 0


def boundary_pass(ev: npt.NDArray[np.void], ident: npt.NDArray[np.int64],
                  key_of_ident: npt.NDArray[np.int64], probes: list[int]) -> BoundaryPass:
    lib = library()
    if lib is None:
        raise FputraceError("the analysis library is not built (build/libfpanalysis.so): "
                            "run 'make setup'")
    ev = np.ascontiguousarray(ev)
    ident = np.ascontiguousarray(ident, dtype=np.int64)
    key_of_ident = np.ascontiguousarray(key_of_ident, dtype=np.int64)
    if not len(key_of_ident):
        key_of_ident = np.zeros(1, dtype=np.int64)
    n_keys = int(key_of_ident.max()) + 1
    mask = 0
    for p in probes:
        mask |= 1 << p
    rel_cap, vcpu_cap, diff_cap = 1 << 16, 64, 1 << 10
    while True:
        rel = np.empty(rel_cap, dtype=np.int64)
        prev = np.empty(rel_cap, dtype=np.int64)
        quiet = np.zeros(n_keys + 1, dtype=np.int64)
        vk = np.empty(vcpu_cap, dtype=np.uint64)
        veq = np.empty(vcpu_cap, dtype=np.uint64)
        de = np.empty(diff_cap, dtype=np.int64)
        dx = np.empty(diff_cap, dtype=np.int64)
        out = _BoundsOut(_ptr(rel), _ptr(prev), rel_cap, 0, _ptr(quiet), _ptr(vk), _ptr(veq),
                         vcpu_cap, 0, _ptr(de), _ptr(dx), diff_cap, 0, 0, 0, 0)
        rc = lib.fpa_boundaries(_ptr(ev), len(ev), _ptr(ident), _ptr(key_of_ident), n_keys,
                                ctypes.c_uint64(mask), ctypes.byref(out))
        if rc < 0:
            raise MemoryError("fpanalysis: out of memory")
        if rc == 0:
            break
        rel_cap = max(rel_cap, 2 * out.rel_len)
        vcpu_cap = max(vcpu_cap, 2 * out.vcpu_len)
        diff_cap = max(diff_cap, 2 * out.diff_len)
    return BoundaryPass(rel[:out.rel_len], prev[:out.rel_len], quiet, vk[:out.vcpu_len],
                        veq[:out.vcpu_len], de[:out.diff_len], dx[:out.diff_len],
                        int(out.first_entries), int(out.unreadable), int(out.kfpu_begins),
                        int(lib.fpa_fpu_buffer_offset(_ptr(ev), len(ev))))
