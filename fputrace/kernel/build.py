"""fputrace kernel build: Debian's kernel source of a series, with the user's
patches, built for recording.

The source is Debian's `linux` source package of the series (the one the FP
selftests are built from, fputrace.kernel.selftests), Debian's own patch
series applied. The configuration is either

- "small" (the default): tinyconfig plus what a recording needs (SMALL),
  built in minutes on two cores, or
- "debian": the configuration of Debian's binary kernel of the series, as
  the cache holds it (hours on two cores: every module is built),

with the user's fragments merged on top. Every option asked for must take:
an option that a dependency drops is an error, not a silent difference.

Trees, under ~/.cache/fputrace/builds:
- src/VERSION: the pristine source, unpacked and patched by Debian once;
- work/VERSION: hard links to it. A build's patches are applied here, each
  file they touch copied first, and put back before the next build (with a
  new modification time, so make rebuilds it);
- obj/VERSION-ARCH-CONFIGDIGEST: make's output (O=), kept per configuration,
  so a second build of the same configuration with other patches recompiles
  only what they touch;
- SERIES-ARCH-DIGEST: a finished build (kernel image, vmlinux, modules,
  the patches and configuration it was built with, build.json), keyed by a
  digest of source version, architecture, configuration and patches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from fputrace.errors import FputraceError
from fputrace.kernel import debian, selftests
from fputrace.paths import cache_dir, cache_lock
from fputrace.record.children import die_with_parent


@dataclass(frozen=True)
class KernelArch:
    karch: str  # make ARCH=
    cross: str  # make CROSS_COMPILE= ("": the machine's own compiler)
    image: str  # the bootable image under the output tree
    qemu: str  # the QEMU target


KERNEL_ARCHES = {
    "amd64": KernelArch("x86_64", "", "arch/x86/boot/bzImage", "x86_64"),
    "arm64": KernelArch("arm64", "aarch64-linux-gnu-", "arch/arm64/boot/Image", "aarch64"),
}

# What every small kernel needs to be recorded: a serial console, an
# initramfs with /proc, /sys and devtmpfs, ELF programs and scripts, SMP,
# kallsyms with data symbols (the per-CPU current task), modules, KVM, BTF
# (struct offsets: fputrace.kernel.btf), AF_ALG's hash for the kernel-fpu
# workload, 9p over virtio-pci for the L2 guest's root. -O2 as Debian
# builds: -Os (tinyconfig's choice) inlines other functions, and the
# probes are named functions.
SMALL_COMMON = """\
CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE=y
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=16
CONFIG_PRINTK=y
CONFIG_BUG=y
CONFIG_TTY=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_DEVTMPFS=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
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
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_VIRTUALIZATION=y
CONFIG_NET=y
CONFIG_UNIX=y
CONFIG_INET=y
CONFIG_CRYPTO=y
CONFIG_CRYPTO_USER_API_HASH=m
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO_PCI=m
CONFIG_NET_9P=m
CONFIG_NET_9P_VIRTIO=m
CONFIG_NETWORK_FILESYSTEMS=y
CONFIG_9P_FS=m
CONFIG_DEBUG_KERNEL=y
CONFIG_DEBUG_INFO=y
CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y
CONFIG_BPF_SYSCALL=y
CONFIG_DEBUG_INFO_BTF=y
"""

SMALL = {
    "amd64": SMALL_COMMON + """\
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_SERIAL_8250_NR_UARTS=4
CONFIG_SERIAL_8250_RUNTIME_UARTS=4
CONFIG_IA32_EMULATION=y
CONFIG_ACPI=y
CONFIG_CPU_SUP_AMD=y
CONFIG_CPU_SUP_INTEL=y
CONFIG_X86_LOCAL_APIC=y
CONFIG_KVM=m
CONFIG_KVM_AMD=m
CONFIG_CRYPTO_SHA256_SSSE3=m
""",
    # The virt board: PL011 UARTs, GICv3 and the generic timer (ARM64
    # selects them), PSCI for poweroff. allnoconfig turns off even the
    # features that default to y: SVE and VHE (KVM's default mode) are
    # asked for by name. SME is left as Debian has it: off (6.12.y marks it
    # BROKEN).
    "arm64": SMALL_COMMON + """\
CONFIG_SERIAL_AMBA_PL011=y
CONFIG_SERIAL_AMBA_PL011_CONSOLE=y
CONFIG_PCI_HOST_GENERIC=y
CONFIG_ARM64_VHE=y
CONFIG_ARM64_PAN=y
CONFIG_ARM64_SVE=y
CONFIG_KERNEL_MODE_NEON=y
CONFIG_KVM=y
CONFIG_CRYPTO_SHA2_ARM64_CE=m
""",
}

BASES = ("small", "debian")

# Debian's configuration names its own signing certificates, which its
# source package does not ship.
DEBIAN_UNSET = ("CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS",
                "CONFIG_MODULE_SIG_KEY")


@dataclass(frozen=True)
class BuildRequest:
    series: str
    arch: str = "amd64"
    patches: tuple[Path, ...] = ()
    fragments: tuple[Path, ...] = ()
    base: str = "small"


@dataclass(frozen=True)
class KernelBuild:
    """A finished build, as build.json records it."""

    name: str
    root: str  # the build's directory
    series: str
    arch: str
    source_version: str  # Debian's source version, "6.1.187-1"
    release: str  # uname -r
    base: str
    patches: list[str]  # file names, in the order applied (copies under patches/)
    fragments: list[str]
    seconds: float  # how long make took
    built: str  # when, UTC
    obj: str  # make's output tree (O=), shared by the builds of one configuration

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def image(self) -> Path:
        return self.path / Path(KERNEL_ARCHES[self.arch].image).name

    @property
    def vmlinux(self) -> Path:
        return self.path / "vmlinux"

    @property
    def modules(self) -> Path:
        """lib/modules/RELEASE, as record --modules takes it; its `build` link
        is the output tree (out-of-tree modules build against it)."""
        return self.path / "modules" / "lib" / "modules" / self.release


def builds_root() -> Path:
    return cache_dir() / "builds"


def list_builds() -> list[KernelBuild]:
    out = []
    for meta in sorted(builds_root().glob("*/build.json")):
        try:
            out.append(KernelBuild(**json.loads(meta.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # a damaged entry is built again when asked for
    return out


def find_build(name: str) -> KernelBuild | None:
    for b in list_builds():
        if name in (b.name, b.path.name):
            return b
    return None


# --- the source trees -------------------------------------------------------

def _pristine_tree(series: str) -> tuple[str, Path]:
    """(source version, the tree with Debian's patches), unpacked once."""
    info = debian.cached_kernel(series, "amd64") or debian.fetch_kernel(series, "amd64")
    version, dsc = selftests.fetch_source(debian.kernel_version(info), debian.RELEASES[series])
    root = builds_root() / "src"
    tree = root / version
    if (tree / ".fputrace-ready").exists():
        return version, tree
    with cache_lock(f"src-{version}"):
        if not (tree / ".fputrace-ready").exists():  # or another unpacked it meanwhile
            _unpack_pristine(version, dsc, root, tree)
    return version, tree


def _unpack_pristine(version: str, dsc: Path, root: Path, tree: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tree, ignore_errors=True)
    orig, debian_tar = selftests.dsc_files(dsc)
    tmp = Path(tempfile.mkdtemp(dir=root))
    print(f"unpacking linux {version} ...", file=sys.stderr)
    subprocess.run(["tar", "-xf", str(orig), "-C", str(tmp), "--strip-components=1"],
                   check=True)
    subprocess.run(["tar", "-xf", str(debian_tar), "-C", str(tmp)], check=True)
    # Debian's patch series, whole and in order, as its own build applies it.
    for entry in (tmp / "debian" / "patches" / "series").read_text().splitlines():
        name = entry.split("#", 1)[0].strip()
        if not name:
            continue
        with open(tmp / "debian" / "patches" / name.split()[0], "rb") as f:
            p = subprocess.run(["patch", "-p1", "--forward", "--silent"], cwd=tmp, stdin=f,
                               capture_output=True, text=True, errors="replace")
        if p.returncode != 0:
            raise FputraceError(f"Debian patch {name} does not apply to linux {version}: "
                                f"{(p.stdout + p.stderr).strip()[:300]}")
    (tmp / ".fputrace-ready").write_text(version + "\n")
    tmp.rename(tree)


def _work_tree(work: Path, pristine: Path) -> None:
    """Hard links to the pristine tree: only the files a patch touches are copied."""
    if not (work / ".fputrace-ready").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(pristine), str(work)], check=True)


def _touched_state(work: Path) -> Path:
    return work.with_name(work.name + ".touched.json")


def _restore(work: Path, pristine: Path) -> None:
    """Put back every file the last build's patches touched."""
    state = _touched_state(work)
    if not state.exists():
        return
    for rel in json.loads(state.read_text()):
        dest = work / rel
        dest.unlink(missing_ok=True)
        if (pristine / rel).exists():
            # A copy, not a link: its new mtime makes make rebuild it.
            shutil.copyfile(pristine / rel, dest)
    state.unlink()


def patch_files(patch: Path) -> list[str]:
    """The paths (after -p1) a unified diff touches; an error names a bad patch."""
    try:
        text = patch.read_text(errors="surrogateescape")
    except OSError as e:
        raise FputraceError(f"--patch {patch}: {e.strerror}") from None
    try:
        files = PatchSet(text)
    except UnidiffParseError as e:
        raise FputraceError(f"--patch {patch}: not a unified diff ({e})") from None
    if not files:
        raise FputraceError(f"--patch {patch}: no file changes in it (a unified diff, "
                            "as git format-patch or diff -u writes, is wanted)")
    out = []
    for f in files:
        for name in (f.source_file, f.target_file):
            if name != "/dev/null" and "/" in name:
                out.append(name.split("/", 1)[1])
    return sorted(set(out))


HUNK_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
PATCHING = re.compile(r"^(?:patching|checking) file '?([^'\n]+)'?$", re.M)


def _why_not(output: str, patch: Path, version: str) -> str:
    """One line naming the file and hunk a patch failed on, from patch's output."""
    current = None
    for line in output.splitlines():
        m = PATCHING.match(line.strip())
        if m:
            current = m.group(1)
        h = HUNK_FAILED.search(line)
        if h:
            return (f"--patch {patch}: hunk #{h.group(1)} of {current} does not apply to "
                    f"linux {version} (at line {h.group(2)}): rebase it on this source")
        if "Reversed (or previously applied) patch detected" in line:
            return (f"--patch {patch}: {current} already has this change (the patch is "
                    f"reversed, or linux {version} has it)")
        if "can't find file to patch" in line or "No such file" in line:
            return f"--patch {patch}: a file it changes is not in linux {version}"
    first = output.strip().splitlines()[:1]
    return f"--patch {patch}: does not apply to linux {version}: {' '.join(first)}"


def _patch(tree: Path, patch: Path, version: str) -> str:
    """Apply one patch (-p1) in tree: "" if it applied, else why not, in one
    line. No backups, no .rej files."""
    with open(patch, "rb") as f:
        p = subprocess.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                            "-r", "-"], cwd=tree, stdin=f, capture_output=True, text=True,
                           errors="replace")
    return "" if p.returncode == 0 else _why_not(p.stdout + p.stderr, patch, version)


def _apply(work: Path, pristine: Path, patches: tuple[Path, ...], version: str) -> None:
    touched: list[str] = []
    for patch in patches:
        touched += patch_files(patch)
    # Recorded before anything changes, so a failure is put back next time.
    _touched_state(work).write_text(json.dumps(sorted(set(touched))))
    for rel in touched:
        dest = work / rel
        if dest.exists():
            data = dest.read_bytes()
            dest.unlink()  # break the hard link to the pristine tree
            dest.write_bytes(data)
    for patch in patches:
        why = _patch(work, patch, version)
        if why:
            _restore(work, pristine)
            raise FputraceError(why)


def dry_run(tree: Path, patches: tuple[Path, ...], version: str) -> None:
    """Apply the patches in order to a scratch copy of the files of `tree`
    they touch; raises naming the file and hunk that does not apply."""
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for patch in patches:
            for rel in patch_files(patch):
                if (tree / rel).exists() and not (tmp / rel).exists():
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(tree / rel, tmp / rel)
        for patch in patches:
            why = _patch(tmp, patch, version)
            if why:
                raise FputraceError(why)


def check_patches(series: str, patches: tuple[Path, ...]) -> str:
    """Whether the patches apply to the series' source as the cache holds it
    now; returns its version."""
    version, pristine = _pristine_tree(series)
    dry_run(pristine, patches, version)
    return version


# --- configuration ----------------------------------------------------------

def _config_lines(text: str) -> list[tuple[str, str]]:
    """(option, value) of each CONFIG_X=v and '# CONFIG_X is not set' ("n")."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out.append((line[2:].split()[0], "n"))
        elif line.startswith("CONFIG_") and "=" in line:
            option, value = line.split("=", 1)
            out.append((option, value))
    return out


def _config_value(config: str, option: str) -> str:
    for name, value in _config_lines(config):
        if name == option:
            return value
    return "n"


def _kconfig_symbols(tree: Path, arch: KernelArch) -> set[str]:
    """Every option this source defines (for the architecture and generic)."""
    symbols: set[str] = set()
    define = re.compile(r"^\s*(?:menu)?config\s+(\w+)", re.M)
    for kconfig in tree.rglob("Kconfig*"):
        rel = kconfig.relative_to(tree).parts
        if rel[0] == "arch" and len(rel) > 1 and rel[1] != arch.karch.replace("x86_64", "x86"):
            continue
        try:
            text = kconfig.read_text(errors="replace")
        except OSError:
            continue
        symbols.update("CONFIG_" + s for s in define.findall(text))
    return symbols


def _base_config(req: BuildRequest, tree: Path) -> tuple[str, list[tuple[str, str]]]:
    """(the starting configuration's text or "" for tinyconfig, the options
    fputrace itself asks for that this source knows)."""
    arch = KERNEL_ARCHES[req.arch]
    if req.base == "debian":
        info = debian.cached_kernel(req.series, req.arch) or \
            debian.fetch_kernel(req.series, req.arch)
        text = (info.path / "config").read_text()
        return text, [(o, '""') for o in DEBIAN_UNSET if _config_value(text, o) != "n"]
    known = _kconfig_symbols(tree, arch)
    # An option this version does not have (ARM64_VHE, which 6.1 no longer has) is left out:
    # asking for it would fail the check below.
    return "", [(o, v) for o, v in _config_lines(SMALL[req.arch]) if o in known]


def merge_options(own: list[tuple[str, str]], fragments: list[str]) -> list[tuple[str, str]]:
    """fputrace's options with the fragments' on top, a later one overriding."""
    merged = dict(own)
    for text in fragments:
        merged.update(_config_lines(text))
    return list(merged.items())


def _fragment_text(options: list[tuple[str, str]]) -> str:
    return "".join(f"# {o} is not set\n" if v == "n" else f"{o}={v}\n" for o, v in options)


# --- building ---------------------------------------------------------------

def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:12]


class _Progress:
    """make's output into the log; a status line of how far it got."""

    def __init__(self, what: str, log: Path, report: Callable[[str], None]) -> None:
        self.what, self.log, self.report = what, log, report
        self.start = time.monotonic()
        self.steps = 0
        self.last = ""

    def run(self, cmd: list[str], cwd: Path) -> int:
        with open(self.log, "a") as log:
            # make stops its jobs when the build's process dies (SIGTERM).
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    preexec_fn=die_with_parent(signal.SIGTERM))
            assert proc.stdout is not None
            stop = threading.Event()
            ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True)
            ticker.start()
            for line in proc.stdout:
                log.write(line)
                s = line.strip()
                if s[:3] in ("CC ", "LD ", "AR ") or s.startswith(("CC [M]", "BTF", "LD [M]")):
                    self.steps += 1
                    self.last = s
            stop.set()
            ticker.join()
            return proc.wait()

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(5 if sys.stderr.isatty() else 60):
            self.report(f"{self.what}: {self.elapsed()}, {self.steps} steps, {self.last}")

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60}m{s % 60:02d}s"


def _say(message: str) -> None:
    end = "\r" if sys.stderr.isatty() else "\n"
    width = shutil.get_terminal_size((100, 20)).columns - 1
    print(message[:width].ljust(width) if end == "\r" else message, end=end, file=sys.stderr,
          flush=True)


def build_kernel(req: BuildRequest, name: str | None = None,
                 report: Callable[[str], None] = _say) -> tuple[KernelBuild, bool]:
    """Build (once) the request; returns the build and whether it was built now."""
    if req.series not in debian.RELEASES:
        raise FputraceError(f"unknown kernel series '{req.series}': one of "
                            f"{', '.join(debian.RELEASES)}")
    if req.arch not in KERNEL_ARCHES:
        raise FputraceError(f"--arch {req.arch}: one of {', '.join(KERNEL_ARCHES)}")
    if req.base not in BASES:
        raise FputraceError(f"--config-base {req.base}: one of {', '.join(BASES)}")
    arch = KERNEL_ARCHES[req.arch]
    compiler = f"{arch.cross}gcc"
    if shutil.which(compiler) is None:
        raise FputraceError(f"{compiler} not found: install "
                            f"{'gcc-aarch64-linux-gnu' if arch.cross else 'gcc'} (make setup)")
    fragments: list[tuple[Path, str]] = []
    for f in req.fragments:
        try:
            fragments.append((f, f.read_text()))
        except OSError as e:
            raise FputraceError(f"--config {f}: {e.strerror}") from None
        if not _config_lines(fragments[-1][1]):
            raise FputraceError(f"--config {f}: no CONFIG_ line in it (a fragment is lines "
                                "like CONFIG_KVM=y or '# CONFIG_X is not set')")
    patch_texts = []
    for p in req.patches:
        patch_files(p)  # an unreadable or empty patch is named before the source is fetched
        patch_texts.append(p.read_bytes())
    names = [p.name for p in req.patches]
    if len(set(names)) != len(names):
        raise FputraceError("two --patch files have the same name: rename one")

    version, pristine = _pristine_tree(req.series)
    base_text, own = _base_config(req, pristine)
    wanted = merge_options(own, [text for _, text in fragments])
    config_digest = _digest(req.arch.encode(), req.base.encode(), base_text.encode(),
                            _fragment_text(wanted).encode())
    digest = _digest(version.encode(), config_digest.encode(), *patch_texts)
    plan = _Plan(arch, version, pristine, base_text, wanted, fragments, config_digest,
                 builds_root() / f"{req.series}-{req.arch}-{digest}")
    # Another fputrace may be making the same build: the second one waits
    # for it and takes it.
    with cache_lock(f"build-{plan.dest.name}"):
        return _build_once(req, plan, name, report)


@dataclass(frozen=True)
class _Plan:
    """What a request comes to before anything is built: the source tree,
    the configuration asked for, and where the build goes (named by the
    digest of all of it)."""

    arch: KernelArch
    version: str                        # Debian's source version
    pristine: Path                      # its unpacked tree, never built in
    base_text: str                      # the base .config ("" for tinyconfig)
    wanted: list[tuple[str, str]]       # (option, value) the build must end with
    fragments: list[tuple[Path, str]]   # the user's --config files and their text
    config_digest: str
    dest: Path


def _build_once(req: BuildRequest, plan: _Plan, name: str | None,
                report: Callable[[str], None]) -> tuple[KernelBuild, bool]:
    dest = plan.dest
    meta = dest / "build.json"
    if meta.exists():
        build = KernelBuild(**json.loads(meta.read_text()))
        if not (dest / "build").exists() and Path(build.obj, "Module.symvers").exists():
            _module_build_tree(Path(build.obj), dest, build.release)  # built before it was kept
        if name and name != build.name:
            _rename(build, name)
            build = KernelBuild(**json.loads(meta.read_text()))
        return build, False
    if name and (other := find_build(name)) is not None:
        raise FputraceError(f"--name {name} is taken by {other.path.name}: choose another "
                            "name, or remove that build")

    work = builds_root() / "work" / plan.version
    # One build at a time in a work tree (another build of the same version may be running).
    with cache_lock(f"work-{plan.version}"):
        _work_tree(work, plan.pristine)
        _restore(work, plan.pristine)
        _apply(work, plan.pristine, req.patches, plan.version)
        try:
            return _make(req, plan, work, name, report), True
        finally:
            _restore(work, plan.pristine)


def _make(req: BuildRequest, plan: _Plan, work: Path, name: str | None,
          report: Callable[[str], None]) -> KernelBuild:
    arch, version, dest, wanted, fragments = (plan.arch, plan.version, plan.dest, plan.wanted,
                                              plan.fragments)
    out = builds_root() / "obj" / f"{version}-{req.arch}-{plan.config_digest}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    log = dest / "build.log"
    make = ["make", f"O={out}", f"ARCH={arch.karch}", f"-j{os.cpu_count() or 1}"]
    if arch.cross:
        make.append(f"CROSS_COMPILE={arch.cross}")
    what = f"linux {version} {req.arch}" + (f" + {len(req.patches)} patches"
                                            if req.patches else "")
    progress = _Progress(what, log, report)

    def run(*args: str) -> None:
        if progress.run([*make, *args], work) != 0:
            raise FputraceError(f"kernel build of {what}: make {' '.join(args)} failed "
                                f"(log: {log})")

    if not (out / ".config").exists():
        if plan.base_text:
            (out / ".config").write_text(plan.base_text)
        else:
            run("tinyconfig")
        fragment = dest / "fputrace.config"
        fragment.write_text(_fragment_text(wanted))
        with open(log, "a") as f:
            subprocess.run([str(work / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out),
                            str(out / ".config"), str(fragment)], cwd=work, stdout=f,
                           stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "ARCH": arch.karch})
    run("olddefconfig")
    config = (out / ".config").read_text()
    for option, want in wanted:
        got = _config_value(config, option)
        if got != want and not (want == '""' and got in ('""', "n")):
            where = next((str(f) for f, text in reversed(fragments)
                          if option in dict(_config_lines(text))), "fputrace")
            (out / ".config").unlink()  # configured again next time
            raise FputraceError(f"kernel build: {option} is {got}, not {want} (asked by "
                                f"{where}): one of its dependencies is off")
    report(f"building {what} ...")
    t0 = time.monotonic()
    run(Path(arch.image).name, "modules")
    shutil.rmtree(dest / "modules", ignore_errors=True)
    run("modules_install", f"INSTALL_MOD_PATH={dest / 'modules'}")
    seconds = time.monotonic() - t0
    release = (out / "include/config/kernel.release").read_text().strip()
    # `source` points into the work tree, which the next build patches.
    (dest / "modules" / "lib" / "modules" / release / "source").unlink(missing_ok=True)
    _module_build_tree(out, dest, release)
    shutil.copy(out / arch.image, dest / Path(arch.image).name)
    shutil.copy(out / "vmlinux", dest / "vmlinux")
    shutil.copy(out / ".config", dest / "config")
    (dest / "patches").mkdir()
    for p in req.patches:
        shutil.copy(p, dest / "patches" / p.name)
    for i, (frag, text) in enumerate(fragments):
        (dest / f"fragment-{i}-{frag.name}").write_text(text)
    build = KernelBuild(
        name=name or dest.name, root=str(dest), series=req.series, arch=req.arch,
        source_version=version, release=release, base=req.base,
        patches=[p.name for p in req.patches], fragments=[str(f) for f, _ in fragments],
        seconds=round(seconds, 1),
        built=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), obj=str(out))
    (dest / "build.json").write_text(json.dumps(asdict(build), indent=1) + "\n")
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return build


def _module_build_tree(out: Path, dest: Path, release: str) -> None:
    """dest/build, what `make -C build M=...` builds an out-of-tree module
    against (the test module, fputrace.kernel.seedmod): make's output tree,
    linked entry by entry, with this build's own vmlinux and Module.symvers.
    The output tree is shared by every build of one configuration and holds
    the last one's; a module's BTF is made against vmlinux, and one made
    against another build's is refused at insmod (BTF: -22)."""
    tree = dest / "build"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    for entry in out.iterdir():
        if entry.name not in ("vmlinux", "Module.symvers"):
            (tree / entry.name).symlink_to(entry)
    (tree / "vmlinux").symlink_to(dest / "vmlinux")
    shutil.copy(out / "Module.symvers", tree / "Module.symvers")
    link = dest / "modules" / "lib" / "modules" / release / "build"
    link.unlink(missing_ok=True)
    link.symlink_to(tree)


def _rename(build: KernelBuild, name: str) -> None:
    other = find_build(name)
    if other is not None and other.root != build.root:
        raise FputraceError(f"--name {name} is taken by {other.path.name}: choose another "
                            "name, or remove that build")
    d = asdict(build)
    d["name"] = name
    (build.path / "build.json").write_text(json.dumps(d, indent=1) + "\n")

