"""Trace format v1: the constants and record layouts of docs/trace-format.md.

The writer is plugin/fputrace.c; every number here mirrors a definition there.
"""

from __future__ import annotations

import enum

import numpy as np

MAGIC = b"FPUTRACE"
BLOCK_MAGIC = 0x4B425446  # "FTBK"
FORMAT_VERSION = 1
# The newest format version this reader understands. A trace whose minimum
# reader version is above this is refused by number.
READER_VERSION = 1

# magic, version, min_reader_version, header_size, features, arch,
# event_size, task_size, reserved, plugin_api, reserved
HEADER_FIXED = "<8sHHIQHHHHII"
HEADER_FIXED_SIZE = 40

BLOCK_HEADER = "<IHHIIII"
BLOCK_HEADER_SIZE = 24


class Feature(enum.IntFlag):
    MEM_HASH = 1 << 0
    REGS_HASH = 1 << 1
    TASKS = 1 << 2


class Arch(enum.IntEnum):
    X86_64 = 1
    AARCH64 = 2


class BlockType(enum.IntEnum):
    EVENTS = 1
    TASKS = 2
    FOOTER = 3


class Kind(enum.IntEnum):
    """Event kinds. Numbers are part of the format; 32..63 belong to arm64."""

    XSAVE = 1
    XSAVEOPT = 2
    XSAVEC = 3
    XSAVES = 4
    XRSTOR = 5
    XRSTORS = 6
    FXSAVE = 7
    FXRSTOR = 8
    XSETBV = 9
    WRMSR_XFD = 10
    WRMSR_XFD_ERR = 11
    WRMSR = 12
    VM_ENTRY = 13
    VM_EXIT = 14
    # arm64, defined now so that it fits version 1 (not yet written).
    FP_TRAP = 32
    CPACR_WRITE = 33
    CPTR_WRITE = 34
    ZCR_WRITE = 35
    FPSIMD_SAVE = 36
    FPSIMD_LOAD = 37
    SVE_SAVE = 38
    SVE_LOAD = 39


KIND_MAX = 64

SAVE_KINDS = frozenset({Kind.XSAVE, Kind.XSAVEOPT, Kind.XSAVEC, Kind.XSAVES, Kind.FXSAVE,
                        Kind.FPSIMD_SAVE, Kind.SVE_SAVE})
RESTORE_KINDS = frozenset({Kind.XRSTOR, Kind.XRSTORS, Kind.FXRSTOR, Kind.FPSIMD_LOAD,
                           Kind.SVE_LOAD})


def kind_name(kind: int) -> str:
    """Lowercase name of a kind, as used in text and JSON output."""
    try:
        return Kind(kind).name.lower()
    except ValueError:
        return f"kind{kind}"


class Flag(enum.IntFlag):
    PL_MASK = 0x003  # CPL on x86, EL on arm64
    L2 = 0x004  # executed inside the nested guest
    FORM64 = 0x008  # REX.W form (xsave64 ...)
    TASK_VALID = 0x010
    MEM_VALID = 0x020  # memory accesses of the instruction were observed
    REGS_VALID = 0x040
    KERNEL_SIMD = 0x080  # kernel code used FP/SIMD registers since the previous event
    REGS_AFTER_VALID = 0x100  # regs_after_hash was read


EVENT_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("pc", "<u8"),
        ("task", "<u8"),
        ("addr", "<u8"),
        ("value", "<u8"),
        ("xcr0", "<u8"),
        ("mem_hash", "<u8"),
        ("mem_legacy_hash", "<u8"),
        ("mem_ext_hash", "<u8"),
        ("regs_hash", "<u8"),
        ("regs_after_hash", "<u8"),
        ("xstate_bv", "<u8"),
        ("aux", "<u8"),
        ("index", "<u4"),
        ("mem_bytes", "<u4"),
        ("mem_features", "<u4"),
        ("flags", "<u4"),
        ("vcpu", "<u2"),
        ("kind", "u1"),
        ("reserved8", "u1"),
        ("reserved32", "<u4"),
    ]
)
assert EVENT_DTYPE.itemsize == 128

TASK_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("task", "<u8"),
        ("pid", "<u4"),
        ("tgid", "<u4"),
        ("comm", "S16"),
        ("vcpu", "<u2"),
        ("flags", "<u2"),
        ("reserved", "<u4"),
    ]
)
assert TASK_DTYPE.itemsize == 48

FOOTER_DTYPE = np.dtype(
    [
        ("events_total", "<u8"),
        ("tasks_total", "<u8"),
        ("blocks_total", "<u8"),
        ("write_errors", "<u8"),
        ("events_by_kind", "<u8", (KIND_MAX,)),
    ]
)
assert FOOTER_DTYPE.itemsize == 544
