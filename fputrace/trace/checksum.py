"""CRC-32C (Castagnoli) of block payloads, as the plugin writes it.

The compiled helper (build/libftrread.so, ftr_read_crc32c) uses the SSE4.2
crc32 instruction where the CPU has it; without the library a table-driven
Python version gives the same values, slowly (fine for small traces).
"""

from __future__ import annotations

from functools import cache

from fputrace.trace.native import READER

POLY = 0x82F63B78  # reflected Castagnoli polynomial


@cache
def _table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ POLY if c & 1 else c >> 1
        table.append(c)
    return table


def crc32c_python(data: bytes | memoryview) -> int:
    table = _table()
    c = 0xFFFFFFFF
    for byte in bytes(data):
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c(data: memoryview | bytes) -> int:
    lib = READER.library()
    if lib is None:
        return crc32c_python(data)
    view = memoryview(data).cast("B")
    return int(lib.ftr_read_crc32c(READER.ffi().from_buffer(view), len(view)))
