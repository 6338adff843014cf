"""The tests' own x86_64 kernels: Debian's `linux` source of a series (the
source the selftests are built from, fputrace.kernel.selftests), with
Debian's patches, built with a small configuration as a kernel developer
would build their own.

Two variants cover what Debian's kernels do not:
- kvm-builtin-btf: KVM and KVM_AMD compiled into the image (CONFIG_KVM=y,
  CONFIG_KVM_AMD=y), with BTF;
- kvm-modules-dwarf: KVM as modules, with DWARF and no BTF, so the task
  layout can come only from the vmlinux given with --vmlinux.

The configuration is tinyconfig plus what a recording needs (FRAGMENTS):
serial console, initramfs, /proc, /sys, devtmpfs, ELF and scripts, 32-bit
compat, SMP, ACPI for poweroff, kallsyms with data symbols (the per-cpu
current task pointer), modules. It has no networking, so no AF_ALG: the
kernel-fpu workload does not run on it.

Built once per machine and source version under ~/.cache/fputrace/testkernels
(keyed by a digest of the fragments, so a changed configuration is built
again); the build tree is removed, keeping bzImage, vmlinux and the
installed modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel import debian, selftests
from fputrace.paths import cache_dir

COMMON = """\
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=16
CONFIG_PRINTK=y
CONFIG_BUG=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_SERIAL_8250_NR_UARTS=4
CONFIG_SERIAL_8250_RUNTIME_UARTS=4
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_DEVTMPFS=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_IA32_EMULATION=y
CONFIG_MULTIUSER=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_SIGNALFD=y
CONFIG_TIMERFD=y
CONFIG_EVENTFD=y
CONFIG_SHMEM=y
CONFIG_TMPFS=y
CONFIG_POSIX_TIMERS=y
CONFIG_FILE_LOCKING=y
CONFIG_KALLSYMS=y
CONFIG_KALLSYMS_ALL=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_PCI=y
CONFIG_ACPI=y
CONFIG_CPU_SUP_AMD=y
CONFIG_CPU_SUP_INTEL=y
CONFIG_X86_LOCAL_APIC=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_VIRTUALIZATION=y
CONFIG_DEBUG_KERNEL=y
CONFIG_DEBUG_INFO=y
CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y
"""

FRAGMENTS = {
    "kvm-builtin-btf": COMMON + """\
CONFIG_KVM=y
CONFIG_KVM_AMD=y
CONFIG_BPF_SYSCALL=y
CONFIG_DEBUG_INFO_BTF=y
""",
    "kvm-modules-dwarf": COMMON + """\
CONFIG_KVM=m
CONFIG_KVM_AMD=m
# CONFIG_DEBUG_INFO_BTF is not set
""",
}

@dataclass(frozen=True)
class BuiltKernel:
    variant: str
    source_version: str
    bzimage: Path
    vmlinux: Path
    modules: Path  # INSTALL_MOD_PATH: lib/modules/RELEASE below it
    release: str


def _digest(variant: str) -> str:
    return hashlib.sha256(FRAGMENTS[variant].encode()).hexdigest()[:12]


def _source_tree(root: Path, series: str) -> tuple[str, Path]:
    """(source version, the patched tree), unpacked once."""
    info = debian.cached_kernel(series, "amd64") or debian.fetch_kernel(series, "amd64")
    version, dsc = selftests.fetch_source(debian.kernel_version(info), debian.RELEASES[series])
    tree = root / f"src-{version}"
    if (tree / ".fputrace-ready").exists():
        return version, tree
    shutil.rmtree(tree, ignore_errors=True)
    orig, debian_tar = selftests.dsc_files(dsc)
    tmp = Path(tempfile.mkdtemp(dir=root))
    subprocess.run(["tar", "-xf", str(orig), "-C", str(tmp), "--strip-components=1"],
                   check=True)
    subprocess.run(["tar", "-xf", str(debian_tar), "-C", str(tmp)], check=True)
    # Debian's patch series, whole and in order, as its own build applies it
    # (git renames included).
    series_file = tmp / "debian" / "patches" / "series"
    for entry in series_file.read_text().splitlines():
        name = entry.split("#", 1)[0].strip()
        if not name:
            continue
        patch = tmp / "debian" / "patches" / name.split()[0]
        with open(patch, "rb") as f:
            p = subprocess.run(["patch", "-p1", "--forward", "--silent"], cwd=tmp, stdin=f,
                               capture_output=True, text=True, errors="replace")
        if p.returncode != 0:
            raise FputraceError(f"Debian patch {name} does not apply to linux {version}: "
                                f"{(p.stdout + p.stderr).strip()[:300]}")
    (tmp / ".fputrace-ready").write_text(version + "\n")
    tmp.rename(tree)
    return version, tree


def _config_value(config: str, option: str) -> str:
    for line in config.splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1]
        if line == f"# {option} is not set":
            return "n"
    return "n"


def build_test_kernel(series: str, variant: str) -> BuiltKernel:
    """Build (once) a variant of FRAGMENTS from the series' Debian source."""
    root = cache_dir() / "testkernels" / series
    root.mkdir(parents=True, exist_ok=True)
    version, tree = _source_tree(root, series)
    dest = root / f"{variant}-{version}-{_digest(variant)}"
    done = dest / "kernel.json"
    if done.exists():
        d = json.loads(done.read_text())
        return BuiltKernel(d["variant"], d["source_version"], Path(d["bzimage"]),
                          Path(d["vmlinux"]), Path(d["modules"]), d["release"])
    # A build cut short is taken up where it stopped (the same fragment: make
    # is incremental); what it installed is done again.
    dest.mkdir(exist_ok=True)
    shutil.rmtree(dest / "modules", ignore_errors=True)
    out = dest / "build"
    log = dest / "build.log"
    make = ["make", f"O={out}", "ARCH=x86_64", f"-j{os.cpu_count() or 1}"]

    def run(*args: str) -> None:
        with open(log, "a") as f:
            if subprocess.run([*make, *args], cwd=tree, stdout=f,
                              stderr=subprocess.STDOUT).returncode != 0:
                raise FputraceError(f"test kernel {variant}: make {' '.join(args)} failed "
                                    f"(log: {log})")

    if not (out / ".config").exists():
        run("tinyconfig")
    fragment = dest / "fragment.config"
    fragment.write_text(FRAGMENTS[variant])
    with open(log, "a") as f:
        subprocess.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out),
                        str(out / ".config"), str(fragment)], cwd=tree, stdout=f,
                       stderr=subprocess.STDOUT, check=True)
    run("olddefconfig")
    # Every option asked for took (a dependency left out would drop it).
    config = (out / ".config").read_text()
    for line in FRAGMENTS[variant].splitlines():
        option, want = (line[2:].split()[0], "n") if line.startswith("# ") else \
            line.split("=", 1)
        if _config_value(config, option) != want:
            raise FputraceError(f"test kernel {variant}: {option} is "
                                f"{_config_value(config, option)}, not {want}")
    run("bzImage", "modules")
    run("modules_install", f"INSTALL_MOD_PATH={dest / 'modules'}")
    release = (out / "include/config/kernel.release").read_text().strip()
    for name in ("build", "source"):
        # Links into the trees, one of them removed below.
        (dest / "modules" / "lib" / "modules" / release / name).unlink(missing_ok=True)
    shutil.copy(out / "arch/x86/boot/bzImage", dest / "bzImage")
    shutil.copy(out / "vmlinux", dest / "vmlinux")
    shutil.rmtree(out)
    kernel = BuiltKernel(variant, version, dest / "bzImage", dest / "vmlinux", dest / "modules",
                        release)
    done.write_text(json.dumps({k: str(v) for k, v in kernel.__dict__.items()}, indent=1))
    return kernel
