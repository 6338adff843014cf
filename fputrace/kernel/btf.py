"""Struct member offsets from a kernel's BTF (/sys/kernel/btf/vmlinux).

Only what fputrace needs: find a struct by name and the byte offset of a
member, looking through anonymous struct/union members as C does.
The encoding is the kernel's include/uapi/linux/btf.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fputrace.errors import FputraceError

BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG, KIND_ENUM64 = 13, 14, 15, 17, 19


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    members: tuple[Member, ...]


class Btf:
    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise FputraceError("BTF blob is truncated")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise FputraceError("not a BTF blob (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # type id 0 is void
        self._by_name: dict[str, list[int]] = {}
        self._parse(blob[hdr_len + type_off : hdr_len + type_off + type_len])

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode("utf-8", "replace")

    def _parse(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos + 12 <= n:
            name_off, info = struct.unpack_from("<II", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            members: tuple[Member, ...] = ()
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    bit = m_off & 0xFFFFFF if kind_flag else m_off
                    ms.append(Member(self._str(m_name), m_type, bit))
                members = tuple(ms)
                pos += 12 * vlen
            elif kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
                pos += 4
            elif kind == KIND_ARRAY:
                pos += 12
            elif kind in (KIND_ENUM, KIND_FUNC_PROTO):
                pos += 8 * vlen
            elif kind in (KIND_DATASEC, KIND_ENUM64):
                pos += 12 * vlen
            name = self._str(name_off)
            tid = len(self.types)
            self.types.append(BtfType(kind, name, members))
            if name:
                self._by_name.setdefault(name, []).append(tid)

    def struct_id(self, name: str) -> int | None:
        for tid in self._by_name.get(name, []):
            t = self.types[tid]
            if t is not None and t.kind == KIND_STRUCT and t.members:
                return tid
        return None

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of a member (possibly inside anonymous members), or None."""
        tid = self.struct_id(struct_name)
        if tid is None:
            return None
        bits = self._find(tid, member)
        return None if bits is None else bits // 8

    def _find(self, tid: int, member: str) -> int | None:
        t = self.types[tid]
        if t is None:
            return None
        for m in t.members:
            if m.name == member:
                return m.bit_offset
        for m in t.members:
            if m.name == "":
                inner = self.types[m.type_id] if m.type_id < len(self.types) else None
                if inner is not None and inner.kind in (KIND_STRUCT, KIND_UNION):
                    found = self._find(m.type_id, member)
                    if found is not None:
                        return m.bit_offset + found
        return None
