"""A recorded run: the trace plus its sidecars (symbols, recording metadata).

For a trace run.ftr the sidecars are run.console.log, run.kallsyms.gz and
run.meta.json (fputrace.record.recorder writes them)."""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
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
    # Sidecars missing or damaged: what the run cannot say (attribution,
    # how its recording went).
    context_problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The trace is complete and its symbols and metadata are there."""
        return self.trace.complete and not self.context_problems

    @property
    def problems(self) -> list[str]:
        return [*self.trace.problems, *self.context_problems]

    @property
    def own_check_failures(self) -> list[str]:
        """The recording's workloads and --run commands that failed their
        own check (a nonzero exit status, run.meta.json): the run's own
        verdict, which a report must not contradict."""
        meta = self.meta or {}
        out = []
        for key, level in (("workloads", ""), ("guest_workloads", "L2 ")):
            for w in meta.get(key) or []:
                if isinstance(w, dict) and w.get("exit_status") not in (0, None):
                    out.append(f"{level}{w.get('label')} exited {w['exit_status']}")
        for r in meta.get("runs") or []:
            if isinstance(r, dict) and r.get("exit_status") not in (0, None):
                out.append(f"--run {r.get('command')!r} exited {r['exit_status']}")
        return out


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


def read_symbols(trace: Path, what: str = "kallsyms.gz") -> tuple[Symbols | None, str]:
    """A run's symbol sidecar (run.kallsyms.gz; the nested guest kernel's is
    run.guest.kallsyms.gz), or None and why it cannot be used."""
    syms_file = sidecar(trace, what)
    try:
        text = gzip.decompress(syms_file.read_bytes()).decode(errors="replace")
    except FileNotFoundError:
        return None, f"{syms_file.name} is missing"
    except (OSError, EOFError, zlib.error) as e:
        # OSError: gzip's BadGzipFile (not gzip, a bad CRC), a directory, no
        # permission; EOFError: cut short; zlib.error: bad compressed data.
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return None, f"{syms_file.name} is damaged or unreadable ({why})"
    symbols = Symbols.parse(text)
    if not symbols.values:
        return None, f"{syms_file.name} holds no kernel symbols"
    return symbols, ""


def load_symbols(trace: Path, what: str = "kallsyms.gz") -> Symbols | None:
    """read_symbols(), without the reason."""
    return read_symbols(trace, what)[0]


def _read_meta(trace: Path) -> tuple[dict[str, Any] | None, str]:
    meta_file = sidecar(trace, "meta.json")
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return None, f"{meta_file.name} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        return None, f"{meta_file.name} is damaged or unreadable ({why})"
    if not isinstance(meta, dict):
        return None, f"{meta_file.name} is damaged (not a JSON object)"
    return meta, ""


def load_run(path: Path) -> Run:
    """The trace and its sidecars. A sidecar that is missing or damaged is a
    context problem of the run: functions cannot be named (attribution
    unknown), or how the recording went and its workloads' own checks are
    unknown; the run is then not complete."""
    trace = read_trace(path)
    problems = []
    symbols, why = read_symbols(path)
    if symbols is None:
        problems.append(f"{why}: functions cannot be named, attribution is unknown and "
                        "the kernel SIMD check is not made; record the run again")
        symbols = Symbols.parse("")
    offset = nvhe_hyp_offset(trace.events, symbols)
    if offset is not None:
        symbols = symbols.with_alias(NVHE_PREFIX, offset, "nvhe")
    meta, why = _read_meta(path)
    if meta is None:
        problems.append(f"{why}: how the recording went and its workloads' own checks are "
                        "unknown; record the run again")
    return Run(trace, symbols, meta, problems)
