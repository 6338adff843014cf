"""Build the fputrace-seed test module (workloads/seed/) for a kernel.

The module has deliberate FPU state bugs; the fpu-seed workload drives it so
that fputrace's findings can be checked against bugs known to be there.

For a Debian kernel, the linux-headers package of exactly that kernel (with
its -common and kbuild dependencies) is downloaded through the same private
apt configuration that fetched the kernel, unpacked once into the cache, and
the module is built with the kernel's own kbuild. For a kernel given by path,
the modules directory's `build` link (what `make modules_install` leaves)
points at its build tree.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel import debian
from fputrace.paths import PROJECT_ROOT

SOURCE_DIR = PROJECT_ROOT / "workloads" / "seed"
MODULE_NAME = "fputrace_seed"
# The compiler Debian's kbuild asks for (gcc-N) must exist; these are tried
# in its place when it does not. Module and kernel ABI do not depend on the
# compiler version for what this module uses.
FALLBACK_COMPILERS = ("gcc-12", "gcc")


def _source_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(SOURCE_DIR.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _debian_headers(info: debian.KernelInfo) -> Path:
    """The unpacked linux-headers tree of a Debian kernel, downloaded once."""
    tree = info.path / "headers"
    kdir = tree / "usr" / "src" / f"linux-headers-{info.release}"
    if (kdir / "Makefile").exists():
        return kdir
    apt = debian.PrivateApt(debian.RELEASES[info.series], info.arch)
    apt.update()
    package = f"linux-headers-{info.release}"
    packages = [package] + [d for d in apt.depends(package)
                            if d.startswith(("linux-headers-", "linux-kbuild-"))]
    with tempfile.TemporaryDirectory(dir=info.path) as tmp_s:
        tmp = Path(tmp_s)
        tmp.chmod(0o755)
        staging = tmp / "tree"
        for p in packages:
            apt.unpack(p, staging)
        staged = staging / "usr" / "src" / f"linux-headers-{info.release}"
        makefile = staged / "Makefile"
        if not makefile.exists():
            raise FputraceError(f"{package} has no usr/src/linux-headers-{info.release}/"
                                "Makefile")
        # The flavour's Makefile includes the -common tree by its absolute
        # installed path; point it into the unpacked tree instead.
        text = makefile.read_text()
        makefile.write_text(text.replace("include /usr/src/linux-headers-",
                                         f"include {tree}/usr/src/linux-headers-"))
        if tree.exists():
            shutil.rmtree(tree)
        staging.rename(tree)
    return kdir


def _compiler_override(kdir: Path) -> list[str]:
    """CC=... when the compiler the kernel's build wants is not installed."""
    wanted = None
    for f in (kdir / ".kernelvariables", kdir / "Makefile"):
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip().startswith("CC ") and "gcc-" in line:
                    wanted = "gcc-" + line.split("gcc-", 1)[1].split()[0].strip(")")
    if wanted is None or shutil.which(wanted):
        return []
    for cc in FALLBACK_COMPILERS:
        if shutil.which(cc):
            return [f"CC={cc}"]
    raise FputraceError(f"the kernel's build wants {wanted}, and no gcc is installed: "
                        "run 'make setup'")


def build_seed_module(kdir: Path, cache: Path) -> Path:
    """fputrace_seed.ko built against the kernel build tree `kdir`, cached in
    `cache` by the module's source digest."""
    out = cache / f"{MODULE_NAME}-{_source_digest()}.ko"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="fputrace-seed-") as tmp_s:
        work = Path(tmp_s) / "seed"
        shutil.copytree(SOURCE_DIR, work)
        cmd = ["make", "-C", str(kdir), f"M={work}", *_compiler_override(kdir), "modules"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ko = work / f"{MODULE_NAME}.ko"
        if proc.returncode != 0 or not ko.exists():
            lines = (proc.stdout + proc.stderr).strip().splitlines() or ["(no message)"]
            why = next((ln for ln in lines if "error" in ln.lower()), lines[-1]).strip()
            raise FputraceError(f"building the fputrace-seed module against {kdir} failed: "
                                f"{why} (the kernel's own compiler may be needed)")
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(ko, out)
    return out


def seed_module_for(debian_info: debian.KernelInfo | None, modules_dir: Path | None,
                    state_dir: Path) -> Path:
    """The seed module for a Debian kernel, or for a kernel built by the user
    whose modules directory has its `build` link."""
    if debian_info is not None:
        return build_seed_module(_debian_headers(debian_info), debian_info.path / "seed")
    build = modules_dir / "build" if modules_dir is not None else None
    if build is None or not (build / "Makefile").exists():
        raise FputraceError("the fpu-seed workload needs the kernel's build tree: pass "
                            "--modules lib/modules/RELEASE whose 'build' link points at it")
    return build_seed_module(build.resolve(), state_dir / "seed")
