"""Debian kernels: download a linux-image package through a private apt
configuration and unpack it into the cache.

The private configuration has its own sources file, package lists and cache,
so the machine's own package set is never touched. Archive URIs come from the
machine's own apt sources.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.paths import cache_dir

# Debian release carrying each supported kernel series.
RELEASES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
ARCHES = ("amd64", "arm64")
LISTS_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class KernelInfo:
    """An unpacked kernel in the cache."""

    series: str  # "6.1"
    arch: str  # "amd64"
    package: str  # "linux-image-6.1.0-56-amd64"
    release: str  # "6.1.0-56-amd64", the uname -r of the kernel
    root: str  # directory holding vmlinuz, config, System.map, modules/

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def modules_dir(self) -> Path:
        return self.path / "modules"


APT_ETC = Path("/etc/apt")


def _sources_entries(etc: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every entry in an apt configuration directory."""
    entries: list[tuple[str, list[str]]] = []
    d = etc / "sources.list.d"
    for f in sorted(d.glob("*.sources")) if d.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            if "uris" in fields and "suites" in fields:
                entries.append((fields["uris"].split()[0], fields["suites"].split()))
    legacy = etc / "sources.list"
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                entries.append((m.group(1), [m.group(2)]))
    return entries


def archive_uris(etc: Path = APT_ETC) -> tuple[str, str | None]:
    """The machine's Debian archive URI and its security archive URI."""
    main = security = None
    for uri, suites in _sources_entries(etc):
        if any(s.endswith("-security") for s in suites):
            security = security or uri
        elif any(s in RELEASES.values() or s.split("-")[0] in RELEASES.values()
                 for s in suites):
            main = main or uri
    if main is None:
        raise FputraceError("no Debian archive in the apt sources (/etc/apt/sources.list.d): "
                            "add one, or give a kernel with --kernel PATH")
    return main, security


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and cache."""

    def __init__(self, codename: str, arch: str) -> None:
        self.codename = codename
        self.arch = arch
        self.root = cache_dir() / "apt" / f"{codename}-{arch}"
        self.lists = self.root / "lists"
        self.sources = self.root / "sources.list"

    def _options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::sourcelist={self.sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={self.lists}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", f"APT::Architecture={self.arch}",
            "-o", f"APT::Architectures={self.arch}",
            "-o", "Debug::NoLocking=1",
        ]

    def _run(self, tool: str, args: list[str], cwd: Path | None = None) -> str:
        cmd = [tool, *self._options(), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise FputraceError(f"{tool} {' '.join(args)} failed for {self.codename}/"
                                f"{self.arch}: {last}")
        return proc.stdout

    def update(self, force: bool = False) -> None:
        main, security = archive_uris()
        lines = [f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                 f"{main} {self.codename} {self.codename}-updates main"]
        if security:
            lines.append(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                         f"{security} {self.codename}-security main")
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        changed = not self.sources.exists() or self.sources.read_text() != text
        self.sources.write_text(text)
        stamp = self.root / "updated"
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S
        if force or changed or not fresh:
            self._run("apt-get", ["update", "-qq"])
            stamp.touch()

    def depends(self, package: str) -> list[str]:
        out = self._run("apt-cache", ["depends", "--important", package])
        return [m.group(1) for m in re.finditer(r"^\s*Depends:\s*(\S+)", out, re.M)]

    def download(self, package: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        # _apt cannot write into root-only directories: apt then downloads unsandboxed.
        self._run("apt-get", ["download", "-qq", package], cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise FputraceError(f"apt-get download {package} left no .deb in {dest}")
        return debs[-1]


def _kernels_root() -> Path:
    return cache_dir() / "kernels"


def _series_dir(series: str, arch: str) -> Path:
    return _kernels_root() / f"{series}-{arch}"


def cached_kernel(series: str, arch: str) -> KernelInfo | None:
    """The newest kernel of a series already unpacked in the cache."""
    current = _series_dir(series, arch) / "current.json"
    if not current.exists():
        return None
    info = KernelInfo(**json.loads(current.read_text()))
    return info if info.vmlinuz.exists() else None


def _check_series(series: str, arch: str) -> str:
    if series not in RELEASES:
        raise FputraceError(f"unknown kernel series '{series}': choose one of "
                            f"{', '.join(RELEASES)}, or give --kernel PATH")
    if arch not in ARCHES:
        raise FputraceError(f"unknown architecture '{arch}': choose amd64 or arm64")
    return RELEASES[series]


def fetch_kernel(series: str, arch: str = "amd64", refresh: bool = False) -> KernelInfo:
    """Download (once) and unpack the Debian kernel of a series; return it."""
    codename = _check_series(series, arch)
    cached = cached_kernel(series, arch)
    apt = PrivateApt(codename, arch)
    try:
        apt.update(force=refresh)
    except FputraceError:
        if cached is not None:
            return cached  # offline: the cached kernel is what we have
        raise
    flavour = f"linux-image-{arch}"
    deps = [d for d in apt.depends(flavour) if d.startswith("linux-image-")]
    if not deps:
        raise FputraceError(f"{flavour} in {codename} depends on no linux-image package")
    package = deps[0]
    release = package.removeprefix("linux-image-")
    root = _series_dir(series, arch) / release
    info = KernelInfo(series, arch, package, release, str(root))
    if not info.vmlinuz.exists():
        _unpack(apt, package, release, root)
    (root.parent / "current.json").write_text(json.dumps(asdict(info), indent=1))
    return info


def _unpack(apt: PrivateApt, package: str, release: str, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)
        deb = apt.download(package, tmp / "deb")
        tree = tmp / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        out = tmp / "out"
        out.mkdir()
        boot = tree / "boot"
        for src, name in ((f"vmlinuz-{release}", "vmlinuz"), (f"config-{release}", "config"),
                          (f"System.map-{release}", "System.map")):
            if (boot / src).exists():
                shutil.move(str(boot / src), out / name)
        if not (out / "vmlinuz").exists():
            raise FputraceError(f"{package} holds no boot/vmlinuz-{release}")
        for moddir in (tree / "lib" / "modules" / release,
                       tree / "usr" / "lib" / "modules" / release):
            if moddir.is_dir():
                shutil.move(str(moddir), out / "modules")
                break
        if root.exists():
            shutil.rmtree(root)
        out.rename(root)
