"""The viewer's details pane: one event with all its fields, its call site,
its instruction disassembled with capstone from the kernel image the run
booted (module code from the module's own .ko), and for a finding the
events that explain it; or the ownership interval under the cursor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.text import Text

from analyzers.boundaries import kernel_text_high
from analyzers.counts import task_label
from analyzers.ownership import Class, ContextKind, Unknown
from analyzers.run import AXIS_SEQ
from analyzers.timeline import Begin, End
from fputrace.errors import FputraceError
from fputrace.kernel.modules import ModuleTree, module_bytes
from fputrace.kernel.text import KernelText, load_kernel_text, module_code
from fputrace.paths import cache_dir
from fputrace.trace import format as fmt
from fputrace.view.model import Lane, Model

INSN_BYTES = 16
DEBIAN_PREFIX = "debian-linux-image-"


def _cached_image(identity: str) -> str | None:
    """The cached Debian kernel a trace names (recordings before the
    metadata named the image)."""
    if not identity.startswith(DEBIAN_PREFIX):
        return None
    release = identity[len(DEBIAN_PREFIX):]
    for p in sorted((cache_dir() / "kernels").glob(f"*/{release}/vmlinuz")):
        return str(p)
    return None


class Details:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.a = model.analysis
        self.sites: dict[int, str] = {}
        self._text: KernelText | None = None
        self._text_problem: str | None = None
        self._site_pcs: tuple[np.ndarray, list[str]] | None = None
        self._modules: dict[str, bytes | str] = {}  # name -> ELF image, or why none
        self.findings = {f.event: f for f in self.a.verdict.findings}

    def site(self, pc: int) -> str:
        s = self.sites.get(pc)
        if s is None:
            s = self.sites[pc] = self.a.run.symbols.describe(pc)
        return s

    # ---- instructions ------------------------------------------------

    def kernel_text(self) -> KernelText | None:
        if self._text is None and self._text_problem is None:
            meta = self.a.run.meta or {}
            path = meta.get("vmlinuz") or _cached_image(self.a.run.trace.header.kernel)
            if not path:
                self._text_problem = "the recording does not name its kernel image"
            else:
                arch = self.a.run.trace.header.arch.name.lower()
                try:
                    self._text = load_kernel_text(Path(path), arch,
                                                  self.a.run.symbols.values)
                except FputraceError as e:
                    self._text_problem = str(e)
        return self._text

    def module_image(self, name: str) -> bytes | str:
        """A module's ELF image, from the file the recording loaded it from
        or the kernel's modules directory; or why there is none."""
        if name not in self._modules:
            meta = self.a.run.meta or {}
            path = (meta.get("module_files") or {}).get(name)
            why = f"module {name}: the recording names no .ko for it"
            if path is None and meta.get("modules_dir"):
                try:
                    path = str(ModuleTree(Path(meta["modules_dir"])).path_of(name))
                except FputraceError as e:
                    why = str(e)
            try:
                self._modules[name] = module_bytes(Path(path)) if path else why
            except OSError as e:
                self._modules[name] = f"cannot read {path}: {e.strerror}"
        return self._modules[name]

    def code_at(self, pc: int) -> tuple[bytes, str]:
        """The instruction bytes at pc and where they came from, or (b"",
        why not)."""
        found = self.a.run.symbols.symbol_at(pc)
        if found is not None and found[2]:
            function, offset, module = found
            image = self.module_image(module)
            if isinstance(image, str):
                return b"", image
            code = module_code(image, function, offset, INSN_BYTES)
            return (code, f"{module}.ko, relocations not applied") if code else \
                (b"", f"{function} is not in {module}.ko: is it the module that ran?")
        text = self.kernel_text()
        if text is None:
            return b"", str(self._text_problem)
        code = text.read(pc, INSN_BYTES) or b""
        if not code:
            where = self.a.run.symbols.module_at(pc)
            return b"", (f"in module {where.name}, at no symbol of it" if where else
                         "not in the kernel image or any module the recording knows")
        return code, ""

    def disassemble(self, pc: int, kind: int = 0) -> str:
        import capstone

        code, source = self.code_at(pc)
        if not code:
            return f"(not disassembled: {source})"
        if self.a.arm64:
            cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        else:
            cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        for insn in cs.disasm(code, pc, 1):
            out = f"{insn.mnemonic} {insn.op_str}".strip() + f"   ({insn.bytes.hex()})"
            executed = fmt.kind_name(kind)
            if (kind in fmt.SAVE_KINDS | fmt.RESTORE_KINDS and not self.a.arm64
                    and insn.mnemonic.removesuffix("64") != executed):
                # The kernel patches its XSAVE sites at boot (alternatives):
                # the image holds the instruction before that.
                out += f"   [the image's; the CPU executed {executed}]"
            return out + (f"   [from {source}]" if source else "")
        return f"(capstone cannot decode {code[:4].hex()})"

    # ---- panes -----------------------------------------------------------

    def _line(self, i: int) -> str:
        ev = self.a.run.trace.events
        return (f"seq {int(ev['seq'][i])} cpu{int(ev['vcpu'][i])} "
                f"{fmt.kind_name(int(ev['kind'][i]))} at {self.site(int(ev['pc'][i]))} "
                f"({task_label(self.a.run.trace.tasks, int(self.a.ident[i]))})")

    def event(self, i: int, in_column: int = 1) -> Text:
        ev = self.a.run.trace.events[i]
        flags = int(ev["flags"])
        names = [f.name for f in fmt.Flag if f.name and f.value & flags and
                 f.value & (f.value - 1) == 0]
        pc = int(ev["pc"])
        out = Text()
        out.append(f"{fmt.kind_name(int(ev['kind']))}", style="bold")
        icount = f"  i={int(ev['icount'])}" if self.model.axis != AXIS_SEQ else ""
        out.append(f"  seq {int(ev['seq'])}{icount}  cpu{int(ev['vcpu'])}  "
                   f"{'L2' if flags & fmt.Flag.L2 else 'L1'}  pl{flags & fmt.Flag.PL_MASK}  "
                   f"task {task_label(self.a.run.trace.tasks, int(self.a.ident[i]))}\n")
        out.append(f"site   {self.site(pc)}  (pc {pc:#x})\n")
        out.append(f"insn   {self.disassemble(pc, int(ev['kind']))}\n")
        if flags & fmt.Flag.KERNEL_SIMD:
            # The kernel SIMD code that ran since the previous event.
            simd = int(ev["simd_pc"]) | kernel_text_high(self.a.run.symbols)
            out.append(f"simd   {self.site(simd)}: {self.disassemble(simd)}\n")
        cls = int(self.a.own.cls[i])
        if cls != Class.NOT_CLASSIFIED:
            why = f" ({Unknown(int(self.a.own.unknown_reason[i])).name.lower()})" \
                if cls == Class.UNKNOWN else ""
            style = "bold yellow" if cls in (Class.REDUNDANT_SAVE, Class.REDUNDANT_RESTORE) \
                else ""
            out.append("class  ")
            out.append(Class(cls).name.lower() + why, style=style)
            ck = int(self.a.own.context_kind[i])
            out.append(f"  context {ContextKind(ck).name.lower() if ck >= 0 else '-'}\n")
        fields = [f"{name}={int(ev[name]):#x}" for name in ev.dtype.names or ()
                  if name not in ("seq", "vcpu", "kind", "flags", "reserved8")]
        out.append("fields " + "  ".join(fields) + "\n", style="dim")
        out.append(f"flags  {flags:#x} {' '.join(names)}\n", style="dim")
        f = self.findings.get(i)
        if f is not None:
            out.append(f"FINDING {f.kind}: ", style="bold white on red")
            out.append(f.description + "\n")
            for role, j in f.events.items():
                out.append(f"  {role.replace('_', ' '):<12} {self._line(j)}\n")
            if f.confirmed_by >= 0:
                out.append(f"  {'confirmed by':<12} {self._line(f.confirmed_by)}\n")
        if in_column > 1:
            out.append(f"(+{in_column - 1} more event(s) in this column: zoom in with +)",
                       style="dim")
        return out

    def interval(self, lane: Lane, time: int) -> Text:
        i = int(np.searchsorted(lane.seg_start, time, side="right")) - 1
        if i < 0 or time > int(lane.seg_end[i]):
            return Text(f"{lane.name}: no owner known here", style="dim")
        owner = self.model.owners[int(lane.seg_owner[i])]
        out = Text()
        out.append(owner, style=f"bold {self.model.colours[int(lane.seg_owner[i])]}")
        start, end = int(lane.seg_start[i]), int(lane.seg_end[i])
        if self.model.axis == AXIS_SEQ:
            out.append(f"  on {lane.name} from seq {start} to {end}\n")
        else:
            out.append(f"  on {lane.name} for {end - start} {self.model.axis}, from "
                       f"+{start - self.model.first}\n")
        if lane.seg_row[i] >= 0:
            tl = self.model.timeline[int(lane.seg_row[i])]
            out.append(f"began  {Begin(int(tl['begin'])).name.lower()}, ended "
                       f"{End(int(tl['end'])).name.lower()}; "
                       f"registers {'changed' if tl['modified'] else 'unchanged'}; "
                       f"kernel-mode use {'yes' if tl['kernel_use'] else 'no'}; "
                       f"guest ran {'yes' if tl['in_guest'] else 'no'}; buffer "
                       f"{'current' if tl['buffer_current'] else 'STALE'} at the end\n")
        return out

    # ---- search --------------------------------------------------------

    def next_event_in(self, text: str, after: int) -> tuple[int, int] | None:
        """(event index, cpu) of the first event at or after the time after
        whose call site's function name contains text (case-insensitive)."""
        ev = self.a.run.trace.events
        if self._site_pcs is None:
            pcs = np.unique(ev["pc"])
            self._site_pcs = (pcs, [self.a.run.symbols.function(int(p)).lower()
                                    for p in pcs.tolist()])
        pcs, names = self._site_pcs
        low = text.lower()
        hit_pcs = pcs[[low in n for n in names]]
        if not len(hit_pcs):
            return None
        cand = np.flatnonzero(np.isin(ev["pc"], hit_pcs) & (self.model.time >= after))
        if not len(cand):
            return None
        j = int(cand[0])
        return j, int(ev["vcpu"][j])
