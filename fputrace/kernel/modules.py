"""Kernel modules of an unpacked kernel: find them by name and order their
loading from the `depends=` entries of each module's .modinfo section."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

from elftools.elf.elffile import ELFFile

from fputrace.errors import FputraceError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


def module_name(path: Path) -> str:
    """kvm-amd.ko.xz -> kvm_amd (the kernel treats - and _ alike)."""
    name = path.name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def module_bytes(path: Path) -> bytes:
    """The ELF image of a module file, decompressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        import subprocess

        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True,
                              check=True).stdout
    return data


def modinfo(elf_image: bytes) -> dict[str, list[str]]:
    """key -> values of a module's .modinfo section (NUL-separated key=value)."""
    elf = ELFFile(io.BytesIO(elf_image))
    section = elf.get_section_by_name(".modinfo")
    if section is None:
        return {}
    info: dict[str, list[str]] = {}
    for entry in section.data().split(b"\0"):
        if b"=" in entry:
            k, v = entry.decode("utf-8", "replace").split("=", 1)
            info.setdefault(k, []).append(v)
    return info


class ModuleTree:
    """All modules below a kernel's modules directory, and the ones its
    modules.builtin lists (`make modules_install` writes it: one path per
    module compiled into the image, as kernel/arch/x86/kvm/kvm-amd.ko)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name: dict[str, Path] = {}
        self.builtin: set[str] = set()
        for p in root.rglob("*.ko*"):
            if p.name.endswith(MODULE_SUFFIXES):
                self.by_name.setdefault(module_name(p), p)
        for listing in root.rglob("modules.builtin"):
            self.builtin |= {module_name(Path(line.strip())) for line in
                             listing.read_text(errors="replace").splitlines() if line.strip()}

    def has(self, name: str) -> bool:
        return name.replace("-", "_") in self.by_name

    def is_builtin(self, name: str) -> bool:
        return name.replace("-", "_") in self.builtin

    def path_of(self, name: str) -> Path:
        key = name.replace("-", "_")
        if key not in self.by_name:
            raise FputraceError(f"module {name} is not in {self.root}: is it built in, or "
                                "is this the right kernel?")
        return self.by_name[key]

    def load_order(self, wanted: list[str]) -> list[Path]:
        """The modules named and everything they depend on, dependencies
        first; built-in ones are left out."""
        order: list[Path] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            key = name.replace("-", "_")
            if state.get(key) == "done" or key in self.builtin:
                return
            if state.get(key) == "visiting":
                raise FputraceError(f"module dependency cycle: {' -> '.join((*chain, key))}")
            state[key] = "visiting"
            path = self.path_of(key)
            deps = modinfo(module_bytes(path)).get("depends", [""])[0]
            for dep in filter(None, deps.split(",")):
                visit(dep, (*chain, key))
            state[key] = "done"
            order.append(path)

        for w in wanted:
            visit(w, ())
        return order
