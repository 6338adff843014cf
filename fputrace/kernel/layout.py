"""What the plugin must know about a kernel, collected once and cached.

Debian's System.map is a one-line stub and its debug package is huge, so the
kernel tells us itself: a short first boot saves /proc/kallsyms and
/sys/kernel/btf/vmlinux through spare serial ports. From them come the
per-cpu address of the current task pointer and task_struct offsets.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel import debian
from fputrace.kernel.btf import Btf
from fputrace.kernel.build import find_build
from fputrace.kernel.busybox import busybox_for
from fputrace.kernel.dwarf import struct_offsets
from fputrace.kernel.modules import ModuleTree
from fputrace.paths import cache_dir
from fputrace.record.initramfs import busybox_initramfs
from fputrace.record.machine import MachineSpec, run_machine
from fputrace.trace.symbols import Symbols

COLLECT_TIMEOUT_S = 300
# The serial ports' device names: QEMU's x86 PC has 16550s, arm64 virt PL011s.
SERIAL_DEVICE = {"x86_64": "ttyS", "aarch64": "ttyAMA"}
KVM_MODES = ("vhe", "nvhe")


def kernel_cmdline(arch: str, kvm_mode: str = "vhe") -> str:
    """The command line every recording boots with. nokaslr: the symbols
    collected once are the runtime addresses. On arm64, kvm-arm.mode=nvhe
    runs the host at EL1 and KVM's world switch at EL2."""
    line = f"console={SERIAL_DEVICE[arch]}0 nokaslr panic=-1 rdinit=/init"
    if arch == "aarch64" and kvm_mode == "nvhe":
        line += " kvm-arm.mode=nvhe"
    return line


@dataclass(frozen=True)
class KernelTarget:
    """A kernel to boot: a Debian one from the cache, or the user's own build."""

    identity: str  # what the trace header calls it
    arch: str  # "x86_64"
    vmlinuz: Path
    modules_dir: Path | None
    vmlinux: Path | None  # with DWARF, for struct offsets when there is no BTF
    state_dir: Path  # where the collected symbols and layout are cached
    debian: debian.KernelInfo | None = None  # a Debian kernel: its package in the cache


@dataclass(frozen=True)
class Layout:
    # x86: %gs:current_addr holds the current task_struct pointer; arm64: 0,
    # the plugin follows the kernel's writes of SP_EL0.
    current_addr: int
    current_symbol: str
    task_pid: int
    task_tgid: int
    task_comm: int
    release: str

    def plugin_args(self) -> list[str]:
        current = [f"current={self.current_addr:#x}"] if self.current_addr else []
        return [*current, f"task_pid={self.task_pid}", f"task_tgid={self.task_tgid}",
                f"task_comm={self.task_comm}"]


def _bzimage_release(path: Path) -> str | None:
    """uname -r of an x86 bzImage, from the version string its setup header points to."""
    with open(path, "rb") as f:
        head = f.read(0x10000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (ptr,) = struct.unpack_from("<H", head, 0x20E)
    start = ptr + 0x200
    end = head.find(b"\0", start)
    if not 0 < start < len(head) or end < 0:
        return None
    text = head[start:end].decode("ascii", "replace").split()
    return text[0] if text else None


def resolve_kernel(kernel: str, arch: str = "amd64", modules: Path | None = None,
                   vmlinux: Path | None = None) -> KernelTarget:
    """--kernel 6.1 (a Debian series, fetched once) or --kernel PATH (a bzImage)."""
    qemu_arch = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    if kernel in debian.RELEASES:
        info = debian.fetch_kernel(kernel, arch)
        return KernelTarget(f"debian-{info.package}", qemu_arch, info.vmlinuz,
                            info.modules_dir if info.modules_dir.is_dir() else None,
                            vmlinux, info.path / "collected", info)
    built = find_build(kernel) if "/" not in kernel else None
    if built is not None:
        if built.arch != arch:
            raise FputraceError(f"kernel {kernel} is an {built.arch} build: give --arch "
                                f"{'x86_64' if built.arch == 'amd64' else built.arch}")
        kernel, modules = str(built.image), modules or built.modules
        vmlinux = vmlinux or built.vmlinux
    path = Path(kernel)
    if not path.is_file():
        raise FputraceError(f"kernel '{kernel}' is neither a file nor a known Debian series "
                            f"({', '.join(debian.RELEASES)}), nor a kernel of 'fputrace kernel "
                            "build' (see fputrace kernel list)")
    if modules is not None and not modules.is_dir():
        raise FputraceError(f"--modules {modules}: not a directory")
    if vmlinux is not None and not vmlinux.is_file():
        raise FputraceError(f"--vmlinux {vmlinux}: no such file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    release = _bzimage_release(path) or path.name
    identity = (f"{built.name} (linux {built.source_version}"
                f"{''.join(' + ' + p for p in built.patches)}, sha256:{digest})"
                if built is not None else f"{release} ({path.name} sha256:{digest})")
    return KernelTarget(identity, qemu_arch, path.resolve(),
                        modules, vmlinux, cache_dir() / "kernels" / "custom" / digest)


def _collect(target: KernelTarget) -> None:
    """Boot the kernel once and save its kallsyms and BTF into state_dir.

    They come back as one tar stream on the second serial port (arm64's
    virt machine has two UARTs)."""
    tty = SERIAL_DEVICE[target.arch]
    init = f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp/out
cat /proc/kallsyms > /tmp/out/kallsyms
[ -e /sys/kernel/btf/vmlinux ] && cat /sys/kernel/btf/vmlinux > /tmp/out/btf
uname -r > /tmp/out/release
ls /sys/module > /tmp/out/sysmodule
stty -F /dev/{tty}1 raw -echo
tar -c -f - -C /tmp/out . | gzip -1 > /dev/{tty}1
poweroff -f
"""
    busybox = busybox_for(target.arch)
    tmp = target.state_dir.with_name(target.state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    busybox_initramfs(busybox, init).write(tmp / "initramfs.gz")
    stream = tmp / "collected.tar.gz"
    spec = MachineSpec(target.arch, target.vmlinuz, tmp / "initramfs.gz",
                       kernel_cmdline(target.arch), serial_files=[tmp / "console.log", stream])
    result = run_machine(spec, COLLECT_TIMEOUT_S)
    if result.status != "shutdown":
        raise FputraceError(f"the symbol-collection boot of {target.identity} failed "
                            f"({result.status}: {result.detail}); console log: "
                            f"{tmp / 'console.log'}")
    try:
        with tarfile.open(stream, "r:gz") as tar:
            for name in ("kallsyms", "btf", "release", "sysmodule"):
                try:
                    member = tar.getmember(f"./{name}")
                except KeyError:
                    continue
                data = tar.extractfile(member)
                if data is not None:
                    (tmp / name).write_bytes(data.read())
    except (OSError, EOFError, tarfile.TarError):
        raise FputraceError(f"the kernel's symbols did not arrive whole; console log: "
                            f"{tmp / 'console.log'}") from None
    if not (tmp / "kallsyms").exists():
        raise FputraceError(f"the kernel sent no /proc/kallsyms; console log: "
                            f"{tmp / 'console.log'}")
    for f in (stream, tmp / "initramfs.gz"):
        f.unlink()
    shutil.rmtree(target.state_dir, ignore_errors=True)
    tmp.rename(target.state_dir)


# A built-in module's initcall, named after its KBUILD_MODNAME since v5.15
# ("init: lto: ensure initcall ordering", __initcall__kmod_<modname>__<id>_<line>_<fn>).
INITCALL_MODNAME = re.compile(r"__initcall__kmod_(\w+?)__\d+_\d+_")


def builtin_modules(target: KernelTarget) -> set[str]:
    """The modules compiled into the kernel image: those its modules
    directory's modules.builtin lists; those the kernel lists in /sys/module
    at the collection boot, when nothing is loaded yet (a built-in module
    with parameters has its directory there: kvm, kvm_amd); and those the
    image's initcall symbols name (not a module's name when the modules
    directory has it as a .ko). A kernel collected before the
    /sys/module list was taken is collected again."""
    listing = target.state_dir / "sysmodule"
    if not listing.exists():
        _collect(target)
    found = set(listing.read_text().split()) if listing.exists() else set()
    initcalls: set[str] = set()
    kallsyms = target.state_dir / "kallsyms"
    if kallsyms.exists():
        initcalls = set(INITCALL_MODNAME.findall(kallsyms.read_text(errors="replace")))
    if target.modules_dir is None:
        return found | initcalls
    # A built-in object that is no module is named after its file: Debian's
    # arch/x86/kernel/kvm.o (the guest side) is "kvm" beside kvm.ko. Where
    # the modules are known, a name with a .ko is a module.
    tree = ModuleTree(target.modules_dir)
    return found | tree.builtin | {m for m in initcalls if not tree.has(m)}


def _current_task_address(symbols: Symbols, btf: Btf | None,
                          dwarf_offsets: dict[str, dict[str, int]]) -> tuple[int, str]:
    """Where %gs:ADDR holds `current`, decided by which symbols exist.

    - `current_task` is a per-cpu variable up to v6.1 and again from v6.15
      ("x86/percpu: Move current_task to percpu hot section").
    - v6.2 to v6.14 keep it in struct pcpu_hot ("x86/percpu: Move current_task
      to pcpu_hot").
    Per-cpu symbols are offsets from GS base when zero-based (up to v6.14) and
    addresses that %gs: adds the per-cpu offset to afterwards; both read as
    GS base + symbol value.
    """
    if "current_task" in symbols.values:
        return symbols.values["current_task"], "current_task"
    if "pcpu_hot" in symbols.values:
        off = btf.member_offset("pcpu_hot", "current_task") if btf else None
        if off is None:
            off = dwarf_offsets.get("pcpu_hot", {}).get("current_task")
        if off is not None:
            return symbols.values["pcpu_hot"] + off, "pcpu_hot.current_task"
    raise FputraceError("the kernel has neither a current_task nor a pcpu_hot per-cpu symbol: "
                        "cannot find the current task")


def kernel_layout(target: KernelTarget) -> Layout:
    """The cached layout of a kernel, collecting it on first use."""
    layout_file = target.state_dir / "layout.json"
    if layout_file.exists():
        return Layout(**json.loads(layout_file.read_text()))
    if not (target.state_dir / "kallsyms").exists():
        _collect(target)
    symbols = Symbols.load(target.state_dir / "kallsyms")
    btf_file = target.state_dir / "btf"
    btf = Btf(btf_file.read_bytes()) if btf_file.exists() else None
    wanted = {"task_struct": ["pid", "tgid", "comm"], "pcpu_hot": ["current_task"]}
    dwarf_offsets = struct_offsets(target.vmlinux, wanted) if target.vmlinux else {}
    offsets: dict[str, int] = {}
    for member in wanted["task_struct"]:
        off = dwarf_offsets.get("task_struct", {}).get(member)
        if off is None and btf is not None:
            off = btf.member_offset("task_struct", member)
        if off is None:
            raise FputraceError(f"task_struct.{member} not found: the kernel has no BTF "
                                "(CONFIG_DEBUG_INFO_BTF); pass --vmlinux with debug info")
        offsets[member] = off
    if target.arch == "aarch64":
        # arm64 keeps `current` in SP_EL0 (arch/arm64/include/asm/current.h).
        addr, sym = 0, "sp_el0"
    else:
        addr, sym = _current_task_address(symbols, btf, dwarf_offsets)
    release = (target.state_dir / "release").read_text().strip() if (
        target.state_dir / "release").exists() else ""
    layout = Layout(addr, sym, offsets["pid"], offsets["tgid"], offsets["comm"], release)
    layout_file.write_text(json.dumps(asdict(layout), indent=1))
    return layout
