"""Kernel symbols from /proc/kallsyms text (kernel and modules) and the
lookups the recorder and the reports need.

A recording's symbols may also hold the guest's /proc/modules, each line
prefixed with MODULE_LINE ("name size refs deps state address"): where each
module lies. A symbol then never stretches past the end of its module's
memory, and an address in a module no symbol covers is shown bare with the
module it falls in, never as the nearest earlier function plus an offset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

TEXT_TYPES = frozenset("tTwW")
MODULE_LINE = "@module "


@dataclass(frozen=True)
class ModuleRange:
    name: str
    start: int
    end: int  # exclusive: start + the size /proc/modules gives


@dataclass
class Symbols:
    """Text symbols sorted by address, plus every symbol's value by name."""

    addrs: npt.NDArray[np.uint64]
    names: list[str]
    modules: list[str]
    values: dict[str, int]
    module_ranges: tuple[ModuleRange, ...] = ()

    @classmethod
    def parse(cls, *texts: str) -> Symbols:
        rows: list[tuple[int, str, str]] = []
        values: dict[str, int] = {}
        ranges: dict[tuple[str, int], ModuleRange] = {}
        for text in texts:
            for line in text.splitlines():
                if line.startswith(MODULE_LINE):
                    m = line[len(MODULE_LINE):].split()
                    try:
                        start, size = int(m[5], 16), int(m[1])
                    except (IndexError, ValueError):
                        continue
                    if start:
                        ranges[(m[0], start)] = ModuleRange(m[0], start, start + size)
                    continue
                parts = line.split()
                if len(parts) < 3:
                    continue
                try:
                    addr = int(parts[0], 16)
                except ValueError:
                    continue
                name = parts[2]
                module = parts[3].strip("[]") if len(parts) > 3 else ""
                values.setdefault(name, addr)
                if parts[1] in TEXT_TYPES and addr:
                    rows.append((addr, name, module))
        rows = sorted(set(rows))  # dumped again after each command: the same rows
        return cls(np.array([r[0] for r in rows], dtype=np.uint64), [r[1] for r in rows],
                   [r[2] for r in rows], values,
                   tuple(sorted(ranges.values(), key=lambda r: r.start)))

    @classmethod
    def load(cls, *paths: Path) -> Symbols:
        return cls.parse(*(p.read_text(errors="replace") for p in paths if p.exists()))

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, pcs: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Index of the symbol containing each pc, or -1."""
        idx = np.searchsorted(self.addrs, pcs, side="right").astype(np.int64) - 1
        return np.where(pcs >= (self.addrs[0] if len(self.addrs) else 0), idx, -1)

    def with_alias(self, prefix: str, offset: int, label: str) -> Symbols:
        """These symbols plus, for every text symbol named prefix+NAME, NAME at
        its address minus offset, shown as 'NAME+0x.. [label]': the nVHE
        hypervisor's code runs at its own virtual addresses, offset from the
        kernel's by a constant (kern_hyp_va()). Each alias ends where the
        next kernel symbol begins, with a nameless mark that keeps other
        addresses bare."""
        picked = [i for i, n in enumerate(self.names) if n.startswith(prefix)]
        if not picked:
            return self
        # (address, 0 for an end mark or 1 for a name, name, module): at one
        # address a name wins over an end mark, since lookups take the last row.
        rows = [(int(a), 1, n, m) for a, n, m in zip(self.addrs, self.names, self.modules,
                                                       strict=True)]
        for i in picked:
            start = (int(self.addrs[i]) - offset) % (1 << 64)
            after = int(np.searchsorted(self.addrs, self.addrs[i], side="right"))
            end = int(self.addrs[after]) if after < len(self.addrs) else \
                int(self.addrs[i]) + 0x1000
            rows.append((start, 1, self.names[i].removeprefix(prefix), label))
            rows.append(((end - offset) % (1 << 64), 0, "", ""))
        rows.sort()
        return Symbols(np.array([r[0] for r in rows], dtype=np.uint64), [r[2] for r in rows],
                       [r[3] for r in rows], self.values, self.module_ranges)

    def module_at(self, pc: int) -> ModuleRange | None:
        """The module whose memory holds pc, when the recording knows where
        modules lie."""
        for r in self.module_ranges:
            if r.start <= pc < r.end:
                return r
        return None

    def symbol_at(self, pc: int) -> tuple[str, int, str] | None:
        """(function, offset, module or "") of pc, or None where no symbol
        covers it: a symbol covers the addresses up to the next symbol and,
        in a module, not past the module's memory."""
        if not len(self.addrs):
            return None
        i = int(self.locate(np.array([pc], dtype=np.uint64))[0])
        if i < 0 or not self.names[i]:
            return None
        module = self.modules[i]
        inside = self.module_at(pc)
        # In module memory, or past a module's symbol, the symbol must be of
        # the module that holds pc, or it would stretch over code it does not
        # name.
        in_modules = inside is not None or any(r.name == module for r in self.module_ranges)
        if in_modules and (inside is None or module != inside.name
                           or int(self.addrs[i]) < inside.start):
            return None
        return self.names[i], pc - int(self.addrs[i]), module

    def describe(self, pc: int) -> str:
        """function+0xoff [module], or the bare address (with the module it
        falls in, when known)."""
        found = self.symbol_at(pc)
        if found is None:
            inside = self.module_at(pc)
            return f"{pc:#x}" + (f" (in module {inside.name}, no symbol)" if inside else "")
        name, off, module = found
        return f"{name}+{off:#x}" + (f" [{module}]" if module else "")

    def function(self, pc: int) -> str:
        """function [module] without the offset."""
        text = self.describe(pc)
        if "+" not in text:
            return text
        name, rest = text.split("+", 1)
        return name + (" " + rest.split(" ", 1)[1] if " " in rest else "")
