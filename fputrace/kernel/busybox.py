"""The static busybox a recording's initramfs is built around, for the guest's
architecture: the machine's own on x86_64 (busybox-static, installed by the
set-up), Debian's arm64 build for arm64, fetched once through the private apt
configuration into the cache (the machine's package set is not touched)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel.debian import PrivateApt
from fputrace.paths import cache_dir, cache_lock

HOST_BUSYBOX = Path("/bin/busybox")
# Debian architecture names of the QEMU targets.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def busybox_for(arch: str) -> Path:
    """A static busybox that runs on `arch` (QEMU's name: x86_64, aarch64)."""
    if arch == "x86_64":
        if not HOST_BUSYBOX.exists():
            raise FputraceError(f"{HOST_BUSYBOX} not found: run 'make setup' (installs "
                                "busybox-static)")
        return HOST_BUSYBOX
    deb_arch = DEBIAN_ARCH[arch]
    path = cache_dir() / "busybox" / deb_arch / "busybox"
    if path.exists():
        return path
    with cache_lock(f"busybox-{deb_arch}"):
        if not path.exists():  # while this one waited, another fetched it
            _fetch_busybox(deb_arch, path)
    return path


def _fetch_busybox(deb_arch: str, path: Path) -> None:
    apt = PrivateApt("bookworm", deb_arch)
    apt.update()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp_s:
        tmp = Path(tmp_s)
        tmp.chmod(0o755)
        deb = apt.unpack("busybox-static", tmp / "tree")
        found = tmp / "tree" / "bin" / "busybox"
        if not found.exists():
            raise FputraceError(f"{deb.name} holds no bin/busybox")
        shutil.move(str(found), path)


def applets_busybox() -> Path:
    """A busybox this machine can run to list the applets: the host's. Debian
    builds busybox-static from one configuration for every architecture, so
    its applets are the guest's too."""
    return busybox_for("x86_64")
