"""A recorded run: the trace plus its sidecars (symbols, recording metadata).

For a trace run.ftr the sidecars are run.console.log, run.kallsyms.gz and
run.meta.json (fputrace.record writes them)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt
from fputrace.trace.reader import Trace, read_trace
from fputrace.trace.symbols import Symbols

NVHE_PREFIX = "__kvm_nvhe_"
# The nVHE hypervisor's exception vectors (arch/arm64/kvm/hyp/nvhe/host.S is
# the host's; hyp-entry.S's __kvm_hyp_vector takes the guest's exits).
NVHE_GUEST_VECTOR = NVHE_PREFIX + "__kvm_hyp_vector"
VECTOR_ALIGN = 0x800  # VBAR_ELx: a 2 KiB aligned table


def sidecar(trace: Path, what: str) -> Path:
    """run.ftr -> run.<what>"""
    base = trace.with_suffix("") if trace.suffix == ".ftr" else trace
    return base.with_name(base.name + "." + what)


@dataclass
class Run:
    trace: Trace
    symbols: Symbols
    meta: dict[str, Any] | None


def nvhe_hyp_offset(ev: npt.NDArray[np.void], symbols: Symbols) -> int | None:
    """Kernel address minus hypervisor address of the nVHE hypervisor's code,
    from the VM exits: each is taken at an entry of __kvm_hyp_vector, whose
    kernel address the symbols give. None without nVHE exits, or if they
    disagree."""
    kva = symbols.values.get(NVHE_GUEST_VECTOR)
    if kva is None:
        return None
    exits = ev[(ev["kind"] == fmt.Kind.VM_EXIT)
               & ((ev["flags"] & np.uint32(fmt.Flag.PL_MASK)) == 2)]
    pcs = exits["pc"].astype(np.uint64)
    hyp = pcs[(pcs >> np.uint64(48)) == 0]  # not a kernel address: the hypervisor's
    bases = np.unique(hyp & ~np.uint64(VECTOR_ALIGN - 1))
    if len(bases) != 1:
        return None
    return (kva - int(bases[0])) % (1 << 64)


def load_symbols(trace: Path, what: str = "kallsyms.gz") -> Symbols | None:
    """A run's symbol sidecar (run.kallsyms.gz; the nested guest kernel's is
    run.guest.kallsyms.gz); None when it is missing or unreadable."""
    syms_file = sidecar(trace, what)
    try:
        return Symbols.parse(gzip.decompress(syms_file.read_bytes()).decode(errors="replace"))
    except (OSError, EOFError):
        return None


def load_run(path: Path) -> Run:
    trace = read_trace(path)
    symbols = load_symbols(path) or Symbols.parse("")
    offset = nvhe_hyp_offset(trace.events, symbols)
    if offset is not None:
        symbols = symbols.with_alias(NVHE_PREFIX, offset, "nvhe")
    meta_file = sidecar(path, "meta.json")
    meta = None
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            meta = None
    return Run(trace, symbols, meta)
