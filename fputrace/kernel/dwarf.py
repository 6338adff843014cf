"""Struct member offsets from a vmlinux with DWARF debug info (pyelftools),
for kernels built without BTF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from fputrace.errors import FputraceError


def _member_offset(die: Any, member: str) -> int | None:
    for child in die.iter_children():
        if child.tag != "DW_TAG_member":
            continue
        loc = child.attributes.get("DW_AT_data_member_location")
        base = loc.value if loc is not None and isinstance(loc.value, int) else 0
        name = child.attributes.get("DW_AT_name")
        if name is not None and name.value.decode() == member:
            return int(base)
        if name is None:  # anonymous struct/union: look inside
            t = child.get_DIE_from_attribute("DW_AT_type")
            if t.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                inner = _member_offset(t, member)
                if inner is not None:
                    return int(base) + inner
    return None


def struct_offsets(vmlinux: Path, wanted: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """{struct: {member: byte offset}} for the members found in the first full
    definition of each struct."""
    found: dict[str, dict[str, int]] = {}
    try:
        f = open(vmlinux, "rb")  # noqa: SIM115
    except OSError as e:
        raise FputraceError(f"{vmlinux}: cannot open: {e.strerror}") from None
    with f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            raise FputraceError(f"{vmlinux} has no DWARF debug info: give a vmlinux built "
                                "with CONFIG_DEBUG_INFO")
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_declaration" in die.attributes:
                    continue
                name_attr = die.attributes.get("DW_AT_name")
                if name_attr is None:
                    continue
                name = name_attr.value.decode()
                if name in wanted and name not in found:
                    found[name] = {m: off for m in wanted[name]
                                   if (off := _member_offset(die, m)) is not None}
            if len(found) == len(wanted):
                break
    return found
