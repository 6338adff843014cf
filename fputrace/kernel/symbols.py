"""Kernel symbols from /proc/kallsyms text (kernel and modules) and the
lookups the recorder and the reports need."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

TEXT_TYPES = frozenset("tTwW")


@dataclass
class Symbols:
    """Text symbols sorted by address, plus every symbol's value by name."""

    addrs: npt.NDArray[np.uint64]
    names: list[str]
    modules: list[str]
    values: dict[str, int]

    @classmethod
    def parse(cls, *texts: str) -> Symbols:
        rows: list[tuple[int, str, str]] = []
        values: dict[str, int] = {}
        for text in texts:
            for line in text.splitlines():
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
        rows.sort()
        return cls(np.array([r[0] for r in rows], dtype=np.uint64), [r[1] for r in rows],
                   [r[2] for r in rows], values)

    @classmethod
    def load(cls, *paths: Path) -> Symbols:
        return cls.parse(*(p.read_text(errors="replace") for p in paths if p.exists()))

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, pcs: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Index of the symbol containing each pc, or -1."""
        idx = np.searchsorted(self.addrs, pcs, side="right").astype(np.int64) - 1
        return np.where(pcs >= (self.addrs[0] if len(self.addrs) else 0), idx, -1)

    def describe(self, pc: int) -> str:
        """function+0xoff [module], or the bare address."""
        if not len(self.addrs):
            return f"{pc:#x}"
        i = int(self.locate(np.array([pc], dtype=np.uint64))[0])
        if i < 0:
            return f"{pc:#x}"
        off = pc - int(self.addrs[i])
        mod = f" [{self.modules[i]}]" if self.modules[i] else ""
        return f"{self.names[i]}+{off:#x}{mod}"

    def function(self, pc: int) -> str:
        """function [module] without the offset."""
        text = self.describe(pc)
        if "+" not in text:
            return text
        name, rest = text.split("+", 1)
        return name + (" " + rest.split(" ", 1)[1] if " " in rest else "")
