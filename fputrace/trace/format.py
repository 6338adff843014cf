"""Trace format v5: the constants and record layouts of docs/trace-format.md.

The bytes are defined once, in plugin/ftr-format.h (shared by the plugin and
the compiled analysis pass); every number here mirrors a definition there,
and tests/test_format_abi.py checks that they agree.
"""

from __future__ import annotations

import enum
import struct

import numpy as np

MAGIC = b"FPUTRACE"
BLOCK_MAGIC = 0x4B425446  # "FTBK"
FORMAT_VERSION = 5
# Version 4 appended the event's instruction count and the nested guest's
# task: no earlier reader decodes its 144-byte events. Version 5 appended
# the run's end and the header's arch and features to the footer, which no
# earlier reader takes for a block.
MIN_READER_VERSION = 5
# The newest format version this reader understands. A trace whose minimum
# reader version is above this is refused by number.
READER_VERSION = 5
# The first version with header and block-header checksums.
CHECKSUMS_SINCE = 3
# The first version whose events carry icount (EVENT_DTYPE); older ones are
# read with EVENT_DTYPE_V3 and get icount 0, without Feature.ICOUNT.
ICOUNT_SINCE = 4
# The first version whose footer says how the run ended (FOOTER_DTYPE); an
# older footer (FOOTER_DTYPE_V4) does not, and its run is not known finished.
END_SINCE = 5


class Feature(enum.IntFlag):
    MEM_HASH = 1 << 0
    REGS_HASH = 1 << 1
    TASKS = 1 << 2
    BOUNDARIES = 1 << 3  # user entry/return events
    PROBES = 1 << 4  # kernel function probe events
    ICOUNT = 1 << 5  # events carry the vCPU's instruction count (version 4)
    # user boundaries carry the arch's state beyond the register hash (arm64:
    # the SVE registers above V0-V31, flag SVE_VALID)
    BOUNDARY_STATE = 1 << 6


class Arch(enum.IntEnum):
    X86_64 = 1
    AARCH64 = 2


class End(enum.IntEnum):
    """How the run ended (the footer's end, version 5). Only DONE is a
    finished run; the recorder says which it was (ftr-format.h, FTR_ENDS)."""

    EXITED = 0  # QEMU exited with no word from the recorder: failed, crashed, or ended itself
    DONE = 1  # the workloads finished and the guest powered off
    GUEST_STOPPED = 2  # the guest shut down, reset or panicked before the end
    TIMEOUT = 3  # the recorder stopped QEMU at its time limit
    INTERRUPTED = 4  # the recorder was interrupted (SIGINT, SIGTERM)


END_DESCRIPTIONS = {
    End.EXITED: "QEMU exited before the recorder stopped it (it failed or crashed, or its "
                "machine ended itself)",
    End.DONE: "the workloads finished",
    End.GUEST_STOPPED: "the guest stopped (shut down, reset or panicked) before its "
                       "workloads finished",
    End.TIMEOUT: "the recorder stopped QEMU at its time limit (--timeout)",
    End.INTERRUPTED: "the recorder was interrupted (SIGINT or SIGTERM) and stopped QEMU",
}


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
    USER_ENTRY = 15
    USER_RETURN = 16
    PROBE = 17
    PROBE_RETURN = 18  # a timed probe's function returned (version 4)
    # arm64.
    FP_TRAP = 32
    CPACR_WRITE = 33
    CPTR_WRITE = 34
    ZCR_WRITE = 35
    FPSIMD_SAVE = 36
    FPSIMD_LOAD = 37
    SVE_SAVE = 38
    SVE_LOAD = 39
    SMCR_WRITE = 40
    SVCR_WRITE = 41  # MSR SVCR, SMSTART, SMSTOP
    # ZA and ZT0 (SME): their own state, outside the FP/SIMD content model
    # (not in SAVE_KINDS/RESTORE_KINDS).
    SME_SAVE = 42
    SME_LOAD = 43
    # A signal frame's FP/SIMD and SVE records as delivery wrote them, read
    # at the handler's start (in user mode: PAN keeps EL1 from reading them).
    SIGFRAME = 44


KIND_MAX = 64

SAVE_KINDS = frozenset({Kind.XSAVE, Kind.XSAVEOPT, Kind.XSAVEC, Kind.XSAVES, Kind.FXSAVE,
                        Kind.FPSIMD_SAVE, Kind.SVE_SAVE})
RESTORE_KINDS = frozenset({Kind.XRSTOR, Kind.XRSTORS, Kind.FXRSTOR, Kind.FPSIMD_LOAD,
                           Kind.SVE_LOAD})
# Every kind that moves state between registers and a buffer, ZA's too.
BUFFER_KINDS = SAVE_KINDS | RESTORE_KINDS | {Kind.SME_SAVE, Kind.SME_LOAD}


def _kind_table(kinds: frozenset[Kind]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[[int(k) for k in kinds]] = True
    return table


# Lookup tables by kind number: SAVE_TABLE[events["kind"]] marks the saves.
SAVE_TABLE = _kind_table(SAVE_KINDS)
RESTORE_TABLE = _kind_table(RESTORE_KINDS)


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
    QUIET = 0x200  # user return: nothing could change the registers since the entry
    NO_ENTRY = 0x400  # user return: no entry from user mode seen before it on its vCPU
    PRIOR_VALID = 0x800  # save: aux is the buffer's content hash before the save
    ADDR_UNVERIFIED = 0x1000  # no memory access fell in the area at addr: hashes invalid
    ADDR_SIZE_MASK = 0x6000  # how addr was formed: AddrSize << ADDR_SIZE_SHIFT
    ADDR_HYP = 0x8000  # arm64: an nVHE hypervisor address, given as the kernel's address
    # arm64 VM entry/exit: the guest ran with FP/SIMD access trapped to EL2.
    GUEST_FP_TRAPPED = 0x10000
    SVE_VALID = 0x20000


ADDR_SIZE_SHIFT = 13


class AddrSize(enum.IntEnum):
    """How a save/restore's effective address was formed (flags ADDR_SIZE_MASK)."""

    A64 = 0  # 64-bit mode
    A32 = 1  # 32-bit addressing: protected or compatibility mode, or a 0x67 prefix
    A16 = 2  # 16-bit addressing: real or virtual-8086 mode, 16-bit segments


class Probe(enum.IntEnum):
    """What a probed kernel function does to FPU state (a PROBE event's index)."""

    FORK_COPY = 1
    EXEC_RESET = 2
    TASK_EXIT = 3
    SIGFRAME_SAVE = 4
    SIGRETURN = 5
    REGSET_SET = 6
    KVM_FPSTATE_ALLOC = 7
    KVM_FPSTATE_FREE = 8
    KVM_UABI_SET = 9
    KVM_UABI_GET = 10
    KFPU_BEGIN = 11
    KFPU_END = 12
    KVM_VCPU_RESET = 13
    KVM_EMULATE_SSE = 14
    FPSTATE_FREE = 15
    RESTORE_FAULT = 16
    KVM_LOAD_FP = 17  # arm64: kvm_arch_vcpu_load_fp()
    KVM_PUT_FP = 18  # arm64: kvm_arch_vcpu_put_fp()
    CONTEXT_SWITCH = 19
    FPU_PATH = 20  # a timed FPU path function, named by its pc


PROBE_MAX = 32

# Kernel text lies in the top 2 GiB; an event's simd_pc is the low half.
KERNEL_TEXT_HIGH = 0xFFFFFFFF00000000


_EVENT_FIELDS_V3 = [
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
    ("simd_pc", "<u4"),
]
# Versions 1 to 3: the event without its instruction count.
EVENT_DTYPE_V3 = np.dtype(_EVENT_FIELDS_V3)
assert EVENT_DTYPE_V3.itemsize == 128
EVENT_DTYPE = np.dtype([*_EVENT_FIELDS_V3, ("icount", "<u8"), ("guest_task", "<u8")])
assert EVENT_DTYPE.itemsize == 144


def event_dtype(version: int) -> np.dtype:
    """The event record of a format version."""
    return EVENT_DTYPE if version >= ICOUNT_SINCE else EVENT_DTYPE_V3

# A probe event's field holding the function's return address at its first
# instruction: who called it (ftr-format.h, FTR_EVENT_FIELDS).
PROBE_CALLER = "xstate_bv"

class TaskFlag(enum.IntFlag):
    L2 = 0x1  # a task of the nested guest's kernel (version 4)


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

_FOOTER_FIELDS_V4 = [
    ("events_total", "<u8"),
    ("tasks_total", "<u8"),
    ("blocks_total", "<u8"),
    ("write_errors", "<u8"),
    ("events_by_kind", "<u8", (KIND_MAX,)),
]
# Versions 1 to 4: the footer without the run's end.
FOOTER_DTYPE_V4 = np.dtype(_FOOTER_FIELDS_V4)
assert FOOTER_DTYPE_V4.itemsize == 544
FOOTER_DTYPE = np.dtype([*_FOOTER_FIELDS_V4, ("end", "<u4"), ("arch", "<u2"),
                         ("reserved", "<u2"), ("features", "<u8")])
assert FOOTER_DTYPE.itemsize == 560


def footer_dtype(version: int) -> np.dtype:
    """The footer record of a format version."""
    return FOOTER_DTYPE if version >= END_SINCE else FOOTER_DTYPE_V4

BLOCK_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u4"),
        ("type", "<u2"),
        ("vcpu", "<u2"),
        ("count", "<u4"),
        ("payload_size", "<u4"),
        ("crc32", "<u4"),
        ("header_crc32", "<u4"),
    ]
)

FILE_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u2"),
        ("min_reader_version", "<u2"),
        ("header_size", "<u4"),
        ("features", "<u8"),
        ("arch", "<u2"),
        ("event_size", "<u2"),
        ("task_size", "<u2"),
        ("reserved", "<u2"),
        ("plugin_api", "<u4"),
        ("header_crc32", "<u4"),
    ]
)


def field_type(dtype: np.dtype, name: str) -> np.dtype:
    fields = dtype.fields
    assert fields is not None
    return fields[name][0]


def field_offset(dtype: np.dtype, name: str) -> int:
    fields = dtype.fields
    assert fields is not None
    return int(fields[name][1])


def _struct_of(dtype: np.dtype) -> struct.Struct:
    """The struct module's layout of a record dtype (no padding: the records
    are packed as the header's _Static_asserts say), for decoding single
    records where a numpy view is overkill."""
    codes = {"u8": "Q", "u4": "I", "u2": "H", "u1": "B"}
    out = "<"
    for name in dtype.names or ():
        t = field_type(dtype, name)
        base, count = (t.base, int(np.prod(t.shape))) if t.shape else (t, 1)
        code = f"{base.itemsize}s" if base.kind == "S" else codes[f"{base.kind}{base.itemsize}"]
        out += code if count == 1 else f"{count}{code}"
    layout = struct.Struct(out)
    assert layout.size == dtype.itemsize
    return layout


EVENT_STRUCT = _struct_of(EVENT_DTYPE)
EVENT_STRUCT_V3 = _struct_of(EVENT_DTYPE_V3)
TASK_STRUCT = _struct_of(TASK_DTYPE)
FOOTER_STRUCT = _struct_of(FOOTER_DTYPE)
FOOTER_STRUCT_V4 = _struct_of(FOOTER_DTYPE_V4)
BLOCK_HEADER_STRUCT = _struct_of(BLOCK_HEADER_DTYPE)
FILE_HEADER_STRUCT = _struct_of(FILE_HEADER_DTYPE)
HEADER_FIXED_SIZE = FILE_HEADER_DTYPE.itemsize
HEADER_CRC_OFFSET = field_offset(FILE_HEADER_DTYPE, "header_crc32")
BLOCK_HEADER_SIZE = BLOCK_HEADER_DTYPE.itemsize
# The block header's own checksum covers the bytes before it.
BLOCK_HEADER_CRC_COVERS = field_offset(BLOCK_HEADER_DTYPE, "header_crc32")
