"""The tests' trace builder: fputrace.trace.writer (the one writer of the
format in Python, which bench/scale and bench/view use too), with the
CRC-32C written out again here, as an oracle of the reader's, and short
names for the tests' scenarios.
"""

from __future__ import annotations

from collections.abc import Sequence

from fputrace.trace import format as fmt
from fputrace.trace import writer
from fputrace.trace.writer import KALLSYMS, META, Crc, Ev, Task, V, write_sidecars


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), written out here independently of the reader's."""
    c = 0xFFFFFFFF
    for byte in data:
        c = CRC32C_TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# Short names for the tests' scenarios.
K, F, P = fmt.Kind, fmt.Flag, fmt.Probe
XSAVE, XSAVEOPT, XSAVEC, XSAVES = K.XSAVE, K.XSAVEOPT, K.XSAVEC, K.XSAVES
XRSTOR, XRSTORS, FXSAVE, FXRSTOR = K.XRSTOR, K.XRSTORS, K.FXSAVE, K.FXRSTOR
XSETBV, WRMSR_XFD, WRMSR_XFD_ERR, WRMSR = K.XSETBV, K.WRMSR_XFD, K.WRMSR_XFD_ERR, K.WRMSR
VM_ENTRY, VM_EXIT, USER_ENTRY, USER_RETURN, PROBE = (K.VM_ENTRY, K.VM_EXIT, K.USER_ENTRY,
                                                     K.USER_RETURN, K.PROBE)
F_L2, F_FORM64, F_TASK, F_MEM, F_REGS = F.L2, F.FORM64, F.TASK_VALID, F.MEM_VALID, F.REGS_VALID
F_KSIMD, F_AFTER, F_QUIET, F_NO_ENTRY = F.KERNEL_SIMD, F.REGS_AFTER_VALID, F.QUIET, F.NO_ENTRY
F_PRIOR, F_ADDR_UNVERIFIED = F.PRIOR_VALID, F.ADDR_UNVERIFIED
P_FORK_COPY, P_EXEC_RESET, P_TASK_EXIT = P.FORK_COPY, P.EXEC_RESET, P.TASK_EXIT
P_SIGFRAME_SAVE, P_SIGRETURN, P_REGSET_SET = P.SIGFRAME_SAVE, P.SIGRETURN, P.REGSET_SET
P_KVM_FPSTATE_ALLOC, P_KVM_FPSTATE_FREE = P.KVM_FPSTATE_ALLOC, P.KVM_FPSTATE_FREE
P_KVM_UABI_SET, P_KVM_UABI_GET = P.KVM_UABI_SET, P.KVM_UABI_GET
P_KFPU_BEGIN, P_KFPU_END, P_KVM_VCPU_RESET = P.KFPU_BEGIN, P.KFPU_END, P.KVM_VCPU_RESET
P_KVM_EMULATE_SSE, P_FPSTATE_FREE, P_RESTORE_FAULT = (P.KVM_EMULATE_SSE, P.FPSTATE_FREE,
                                                      P.RESTORE_FAULT)


__all__ = ["KALLSYMS", "META", "Ev", "Task", "write_sidecars"]


# The writer's functions, checksummed with this file's CRC-32C.
def block_bytes(btype: int, vcpu: int, count: int, payload: bytes, version: int = V,
                crc: Crc = crc32c) -> bytes:
    return writer.block_bytes(btype, vcpu, count, payload, version, crc)


def footer_block(events_total: int, tasks_total: int, blocks_total: int,
                 events_by_kind: Sequence[int], version: int = V, crc: Crc = crc32c,
                 end: int = fmt.End.DONE, arch: int = 1, features: int = 7) -> bytes:
    return writer.footer_block(events_total, tasks_total, blocks_total, events_by_kind,
                               version, crc, end, arch, features)


def block(btype: int, vcpu: int, records: list[bytes], version: int = V) -> bytes:
    return writer.block(btype, vcpu, records, version, crc32c)


def header(version: int = V, min_reader: int | None = None, arch: int = 1, features: int = 7,
           qemu: str = "10.0.2", kernel: str = "synthetic", args: str = "out=test.ftr",
           magic: bytes = b"FPUTRACE", crc: Crc = crc32c) -> bytes:
    return writer.header(version, min_reader, arch, features, qemu, kernel, args, magic, crc)


class TraceBuilder(writer.TraceBuilder):
    def __init__(self, **header_args: object) -> None:
        super().__init__(crc32c, **header_args)
