"""The content hash as docs/trace-format.md ("Content hashes") defines it in
words, written again here as the tests' own oracle: the plugin and the
compiled pass use plugin/ftr-hash.h, and tests compare the two."""

from __future__ import annotations

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def word_hash(w: int, value: int, mask: int) -> int:
    """Word w's share: mask is the byte mask of the bytes that count."""
    if not mask:
        return 0
    keep = sum(0xFF << (8 * b) for b in range(8) if mask >> b & 1)
    return mix64(mix64(w << 8 | mask) ^ (value & keep))


def xsave_is_content(offset: int) -> bool:
    """The docs' list: FCW and FSW (0-3), MXCSR (24-27), the 10 bytes of each
    ST register (32 + 16 i), XMM0-15 (160-415), everything from 576 on."""
    return (offset < 4 or 24 <= offset < 28 or (32 <= offset < 160 and (offset - 32) % 16 < 10)
            or 160 <= offset < 416 or offset >= 576)


def xsave_hash(image: bytes, start: int = 0) -> int:
    """The hash of an XSAVE-layout image whose byte 0 is at offset start
    (8-aligned), every byte present."""
    h = 0
    for i in range(0, len(image), 8):
        off = start + i
        mask = sum(1 << b for b in range(8) if xsave_is_content(off + b))
        h += word_hash(off // 8, int.from_bytes(image[i:i + 8], "little"), mask)
    return h & M64


# The AVX upper halves (YMM_Hi128, standard offsets 576..831) in their init
# state: all zero.
AVX_INIT_HASH = xsave_hash(bytes(832 - 576), 576)


def a64_sve_hash(image: bytes, vl: int) -> int:
    """The hash of arm64's SVE state beyond V0-V31 (docs/trace-format.md,
    "arm64") at vector length vl bytes, from an image laid out as the
    workloads store it: Z0-Z31 (vl bytes each), then P0-P15 and FFR (vl / 8
    bytes each); a short image counts as zeros beyond its end."""
    image = image.ljust(34 * vl + vl // 8, b"\0")
    h = sum(word_hash(128 + 32 * n + k,
                      int.from_bytes(image[n * vl + 8 * k:n * vl + 8 * k + 8], "little"), 0xFF)
            for n in range(32) for k in range(2, vl // 8))
    p = vl // 8
    for n in range(17):  # P0-P15, then FFR
        reg = image[32 * vl + n * p:32 * vl + (n + 1) * p]
        h += sum(word_hash(1152 + 4 * n + k, int.from_bytes(reg[8 * k:8 * k + 8], "little"),
                           0xFF) for k in range((p + 7) // 8))
    return h & M64
