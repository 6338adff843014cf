"""The analyzers' compiled passes (analyzers/engine/: classify.c, tables.c,
hashes.c, boundaries.c, declared in fpanalysis.h), loaded with the trace
layer's NativeLibrary and called with the header's own structs and
constants: the per-event passes for large traces.

The rules are implemented there once; tests/oracle.py restates them as the
oracle the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt
from fputrace.trace.errors import FputraceError
from fputrace.trace.native import NativeLibrary

ENGINE = NativeLibrary("fpanalysis", Path(__file__).resolve().parent / "engine" / "fpanalysis.h")
ffi, library, pointer = ENGINE.ffi, ENGINE.library, ENGINE.pointer

GUEST_CAP = 1 << 16
FINDINGS_CAP = 1 << 16


def _lib() -> Any:
    lib = library()
    if lib is None:
        raise FputraceError("the analysis library is not built (build/libfpanalysis.so): "
                            "run 'make setup'")
    return lib


def layout() -> Any:
    """The library's enumerations (fpanalysis.h), e.g. the tables' layout."""
    return _lib()


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
    owner: npt.NDArray[np.uint64]
    owner_ctx: npt.NDArray[np.int8]
    guest: dict[int, int]
    # findings, in the order they were decided: (event, last_sync, resumed, buffer, cls)
    findings: list[tuple[int, int, int, int, int]]
    findings_total: int
    tables: Aggregates | None


def classify(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], init_lo: int, init_hi: int,
             tables: bool = False) -> Classified:
    """Classify every event; with tables, also fill every table of the report
    in the same pass."""
    cap = 1 << 12
    while True:
        result, needed = _classify(ev, tasks, init_lo, init_hi, tables, cap)
        if result is not None:
            return result
        cap = needed


def _classify(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], init_lo: int, init_hi: int,
              tables: bool, cap: int) -> tuple[Classified | None, int]:
    lib = _lib()
    ev = np.ascontiguousarray(ev)
    n_tasks = len(tasks)
    tasks = np.ascontiguousarray(tasks) if n_tasks else np.zeros(1, dtype=fmt.TASK_DTYPE)
    n = len(ev)
    cls = np.empty(n, dtype=np.uint8)
    why = np.empty(n, dtype=np.uint8)
    ctx = np.empty(n, dtype=np.int8)
    ident = np.empty(n, dtype=np.int64)
    guest_of = np.empty(n, dtype=np.uint64)
    owner = np.empty(n, dtype=np.uint64)
    owner_ctx = np.empty(n, dtype=np.int8)
    g_buf = np.empty(GUEST_CAP, dtype=np.uint64)
    g_vmcb = np.empty(GUEST_CAP, dtype=np.uint64)
    f_event = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_last = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_resumed = np.empty(FINDINGS_CAP, dtype=np.int64)
    f_buffer = np.empty(FINDINGS_CAP, dtype=np.uint64)
    f_cls = np.empty(FINDINGS_CAP, dtype=np.uint8)
    small = np.empty(lib.FPA_S_SIZE, dtype=np.uint64)
    n_out = np.zeros(lib.FPA_N_KEYED, dtype=np.int64)
    widths = (lib.FPA_ROW, lib.FPA_ROW, lib.FPA_VCPU_ROW, 4, 4, 1)
    keys = [np.empty(cap if tables else 0, dtype=np.uint64) for _ in widths]
    rows = [np.empty((cap if tables else 0, w), dtype=np.uint64) for w in widths]
    ptrs = ffi().new("uint64_t *[]", [pointer("uint64_t *", x) for pair in
                                      zip(keys, rows, strict=True) for x in pair])
    a = ffi().new("struct fpa_classify_args *")
    a.ev = pointer("struct ftr_event *", ev)
    a.n = n
    a.tasks = pointer("struct ftr_task *", tasks)
    a.n_tasks = n_tasks
    a.init_lo, a.init_hi = init_lo, init_hi
    a.cls, a.why, a.ctx = pointer("uint8_t *", cls), pointer("uint8_t *", why), \
        pointer("int8_t *", ctx)
    a.ident, a.guest_of = pointer("int64_t *", ident), pointer("uint64_t *", guest_of)
    a.owner, a.owner_ctx = pointer("uint64_t *", owner), pointer("int8_t *", owner_ctx)
    a.guest_buf, a.guest_vmcb = pointer("uint64_t *", g_buf), pointer("uint64_t *", g_vmcb)
    a.guest_cap = GUEST_CAP
    a.f_event, a.f_last = pointer("int64_t *", f_event), pointer("int64_t *", f_last)
    a.f_resumed, a.f_buffer = pointer("int64_t *", f_resumed), pointer("uint64_t *", f_buffer)
    a.f_cls, a.f_cap = pointer("uint8_t *", f_cls), FINDINGS_CAP
    a.agg_small = pointer("uint64_t *", small) if tables else ffi().NULL
    a.agg_ptrs, a.agg_cap, a.agg_n_out = ptrs, cap, pointer("int64_t *", n_out)
    rc = lib.fpa_classify(a)
    if rc < 0:
        raise MemoryError("fpanalysis: out of memory")
    if rc == 1:
        return None, int(n_out.max())
    k = a.f_len
    findings = list(zip(f_event[:k].tolist(), f_last[:k].tolist(), f_resumed[:k].tolist(),
                        f_buffer[:k].tolist(), f_cls[:k].tolist(), strict=True))
    guest = {int(b): int(v) for b, v in zip(g_buf[:a.n_guest].tolist(),
                                            g_vmcb[:a.n_guest].tolist(), strict=True)}
    agg = _aggregates(lib, small, [(k[:m], r[:m]) for k, r, m in
                                   zip(keys, rows, n_out.tolist(), strict=True)]) \
        if tables else None
    return Classified(cls, why, ctx, ident, guest_of, owner, owner_ctx, guest, findings,
                      int(a.f_total), agg), 0


def _aggregates(lib: Any, small: npt.NDArray[np.uint64],
                keyed: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]]
                ) -> Aggregates:
    """The tables, cut out of the fixed-size array by the header's layout."""
    def part(start: str, end: str) -> npt.NDArray[np.uint64]:
        return small[getattr(lib, start):getattr(lib, end)]
    nkind, ncls = lib.FPA_NKIND, lib.FPA_NCLS
    return Aggregates(
        part("FPA_S_KIND", "FPA_S_KIND64"), part("FPA_S_KIND64", "FPA_S_KIND_BYTES"),
        part("FPA_S_KIND_BYTES", "FPA_S_CPU_KIND"),
        part("FPA_S_CPU_KIND", "FPA_S_LEVEL_KIND").reshape(lib.FPA_NCPU, nkind),
        part("FPA_S_LEVEL_KIND", "FPA_S_CLS").reshape(2, nkind),
        part("FPA_S_CLS", "FPA_S_CLS_BYTES"), part("FPA_S_CLS_BYTES", "FPA_S_WHY"),
        part("FPA_S_WHY", "FPA_S_LEVEL_CLS"),
        part("FPA_S_LEVEL_CLS", "FPA_S_LEVEL_CLS_BYTES").reshape(2, ncls),
        part("FPA_S_LEVEL_CLS_BYTES", "FPA_S_OPS").reshape(2, ncls),
        part("FPA_S_OPS", "FPA_S_SIZE"), *keyed)


@dataclass
class BoundaryPass:
    """The linear part of the boundary checks (fpa_boundaries)."""

    rel: npt.NDArray[np.int64]  # events to look at one by one, in order
    # for returns: the key's previous return; for the rest: its latest return
    # so far; -1 for none
    rel_prev_return: npt.NDArray[np.int64]
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
    lib = _lib()
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
        out = ffi().new("struct fpa_bounds_out *", {
            "rel": pointer("int64_t *", rel), "rel_prev_return": pointer("int64_t *", prev),
            "rel_cap": rel_cap, "quiet_per_key": pointer("int64_t *", quiet),
            "vcpu_keys": pointer("uint64_t *", vk), "vcpu_equal": pointer("uint64_t *", veq),
            "vcpu_cap": vcpu_cap, "diff_entry": pointer("int64_t *", de),
            "diff_exit": pointer("int64_t *", dx), "diff_cap": diff_cap})
        rc = lib.fpa_boundaries(pointer("struct ftr_event *", ev), len(ev),
                                pointer("int64_t *", ident), pointer("int64_t *", key_of_ident),
                                n_keys, mask, out)
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
                        int(lib.fpa_fpu_buffer_offset(pointer("struct ftr_event *", ev), len(ev))))


def user_init_hash(arch: int) -> int:
    """The register hash of the user state the kernel's init state gives a
    task (fpa_user_init_hash())."""
    return int(_lib().fpa_user_init_hash(arch))


def a64_sve_zero_hash(vl: int) -> int:
    """arm64's SVE state beyond V0-V31 all zero at vector length vl bytes
    (fpa_a64_sve_zero_hash())."""
    return int(_lib().fpa_a64_sve_zero_hash(vl))


def x86_init_shares() -> tuple[int, int, int]:
    """x86's init state in its x87, MXCSR and SSE shares (fpa_x86_init_share())."""
    lib = _lib()
    return (int(lib.fpa_x86_init_share(lib.FPA_X86_X87)),
            int(lib.fpa_x86_init_share(lib.FPA_X86_MXCSR)),
            int(lib.fpa_x86_init_share(lib.FPA_X86_SSE)))
