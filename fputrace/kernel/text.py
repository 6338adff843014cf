"""The kernel's own instruction bytes, from the image it booted, so that a
view can disassemble the instruction of an event.

x86: a bzImage carries vmlinux (ELF) compressed behind its setup code; the
setup header gives the payload's place (payload_offset at 0x248, length at
0x24c, from the protected-mode code after setup_sects + 1 sectors). Its
PT_LOAD segments map addresses to file offsets. arm64: vmlinuz is the Image,
gzip-compressed, loaded at _text. Recordings boot with nokaslr, so the
addresses the trace holds are the image's own. Module code is not in the
image: it is not disassembled.
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


def _arm64_text(image: bytes, text_start: int) -> KernelText:
    raw = gzip.decompress(image) if image.startswith(GZIP_MAGIC) else image
    return KernelText(raw, [(text_start, len(raw), 0)])


def load_kernel_text(vmlinuz: Path, arch: str, text_start: int | None) -> KernelText:
    """arch: the trace's ("x86_64" or "aarch64"); text_start: _text from the
    run's symbols (arm64)."""
    try:
        image = vmlinuz.read_bytes()
    except OSError as e:
        raise FputraceError(f"cannot read the kernel image {vmlinuz}: {e.strerror}") from None
    if arch == "aarch64":
        if text_start is None:
            raise FputraceError("no _text symbol to place the arm64 Image")
        return _arm64_text(image, text_start)
    return _x86_text(image)
