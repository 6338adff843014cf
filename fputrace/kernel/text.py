"""The kernel's own instruction bytes, from the image it booted, so that a
view can disassemble the instruction of an event.

x86: a bzImage carries vmlinux (ELF) compressed behind its setup code; the
setup header gives the payload's place (payload_offset at 0x248, length at
0x24c, from the protected-mode code after setup_sects + 1 sectors). Its
PT_LOAD segments map addresses to file offsets. arm64: vmlinuz is the Image
(gzip-compressed or not), loaded at _text. kallsyms need not list _text: the
Image's first branch (at offset 4 after the EFI "MZ" header, else at 0)
jumps to primary_entry (stext before 5.8), which kallsyms does list, so
_text is that symbol less the branch's target. Recordings boot with nokaslr, so the
addresses the trace holds are the image's own.

Module code is not in the image: it is read from the module's own .ko, by
the function's symbol in the module's symbol table (a relocatable object:
a symbol's value is its offset in its section). Relocations are not
applied, so the bytes are those of the file: an instruction decodes as it
ran, but a call's or a RIP-relative operand's target is not the one the
loaded module used.
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from fputrace.errors import FputraceError

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class KernelText:
    data: bytes
    ranges: list[tuple[int, int, int]]  # (address, size, offset in data)

    def read(self, pc: int, n: int) -> bytes | None:
        for addr, size, off in self.ranges:
            if addr <= pc < addr + size:
                k = pc - addr
                return self.data[off + k:off + min(k + n, size)]
        return None


def _decompress(payload: bytes) -> bytes:
    if payload.startswith(XZ_MAGIC):
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        return d.decompress(payload)        # the kernel appends its size: ignored
    if payload.startswith(GZIP_MAGIC):
        return zlib.decompressobj(31).decompress(payload)
    if payload.startswith(ZSTD_MAGIC):
        try:
            p = subprocess.run(["zstd", "-dcq"], input=payload, capture_output=True,
                               check=False)
        except OSError as e:
            raise FputraceError(f"zstd not available to unpack the kernel: {e}") from None
        if not p.stdout:
            raise FputraceError("zstd could not unpack the kernel image")
        return p.stdout
    raise FputraceError("the kernel image's payload is compressed in a way fputrace does "
                        "not read (not xz, gzip or zstd)")


def _x86_text(image: bytes) -> KernelText:
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise FputraceError("not a bzImage")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    vmlinux = _decompress(image[start:start + length])
    try:
        elf = ELFFile(io.BytesIO(vmlinux))
        ranges = [(seg["p_vaddr"], seg["p_filesz"], seg["p_offset"])
                  for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
    except ELFError as e:
        raise FputraceError(f"the unpacked kernel is not an ELF file: {e}") from None
    return KernelText(vmlinux, ranges)


A64_B_MASK, A64_B = 0xFC000000, 0x14000000


def _arm64_text(image: bytes, symbols: dict[str, int]) -> KernelText:
    raw = gzip.decompress(image) if image.startswith(GZIP_MAGIC) else image
    start = symbols.get("_text")
    if start is None:
        at = 4 if raw[:2] == b"MZ" else 0
        (insn,) = struct.unpack_from("<I", raw, at)
        entry = symbols.get("primary_entry", symbols.get("stext"))
        if insn & A64_B_MASK != A64_B or entry is None:
            raise FputraceError("cannot place the arm64 Image: no _text symbol and no "
                                "branch to primary_entry at its start")
        offset = insn & 0x3FFFFFF
        offset -= (offset & 0x2000000) << 1          # imm26, signed
        start = entry - (at + 4 * offset)
    return KernelText(raw, [(start, len(raw), 0)])


def load_kernel_text(vmlinuz: Path, arch: str, symbols: dict[str, int]) -> KernelText:
    """arch: the trace's ("x86_64" or "aarch64"); symbols: the run's, by
    name (arm64 places its Image by them)."""
    try:
        image = vmlinuz.read_bytes()
    except OSError as e:
        raise FputraceError(f"cannot read the kernel image {vmlinuz}: {e.strerror}") from None
    if arch == "aarch64":
        return _arm64_text(image, symbols)
    return _x86_text(image)


def module_code(ko: bytes, function: str, offset: int, length: int) -> bytes:
    """`length` bytes (fewer at the section's end) at function+offset in a
    module's ELF image, or b"" where the module has no such function."""
    try:
        elf = ELFFile(io.BytesIO(ko))
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return b""
        for sym in symtab.iter_symbols():  # type: ignore[attr-defined]
            if sym.name != function or sym["st_info"]["type"] != "STT_FUNC" or \
                    not isinstance(sym["st_shndx"], int):
                continue
            data = elf.get_section(sym["st_shndx"]).data()
            start = int(sym["st_value"]) + offset
            return bytes(data[start:start + length])
    except ELFError:
        return b""
    return b""
