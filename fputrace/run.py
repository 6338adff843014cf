"""A recorded run: the trace plus its sidecars (symbols, recording metadata).

For a trace run.ftr the sidecars are run.console.log, run.kallsyms.gz and
run.meta.json (fputrace.record writes them)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fputrace.kernel.symbols import Symbols
from fputrace.trace.reader import Trace, read_trace


def sidecar(trace: Path, what: str) -> Path:
    """run.ftr -> run.<what>"""
    base = trace.with_suffix("") if trace.suffix == ".ftr" else trace
    return base.with_name(base.name + "." + what)


@dataclass
class Run:
    trace: Trace
    symbols: Symbols
    meta: dict[str, Any] | None


def load_run(path: Path) -> Run:
    trace = read_trace(path)
    syms_file = sidecar(path, "kallsyms.gz")
    if syms_file.exists():
        try:
            symbols = Symbols.parse(gzip.decompress(syms_file.read_bytes()).decode(
                errors="replace"))
        except (OSError, EOFError):
            symbols = Symbols.parse("")
    else:
        symbols = Symbols.parse("")
    meta_file = sidecar(path, "meta.json")
    meta = None
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            meta = None
    return Run(trace, symbols, meta)
