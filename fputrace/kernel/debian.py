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
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from fputrace.errors import FputraceError
from fputrace.paths import cache_dir, cache_lock

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
    version: str = ""  # Debian version of the package, "6.1.192-2" (older caches: "")

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
        for stanza in deb822.Deb822.iter_paragraphs(
                f.read_text(errors="replace").splitlines(), use_apt_pkg=False):
            if "URIs" in stanza and "Suites" in stanza:       # field names are case-blind
                entries.append((stanza["URIs"].split()[0], stanza["Suites"].split()))
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


class NotServed(FputraceError):
    """The package index names a file that the archive does not serve (HTTP 404):
    the index and the pool are out of step, and an older version may be there."""


def note(message: str) -> None:
    """One line on stderr about a choice the command made for the user."""
    print(f"fputrace: {message}", file=sys.stderr)


def version_sorted(versions: list[str]) -> list[str]:
    """Debian versions, newest first, as dpkg orders them."""
    return sorted(set(versions), key=Version, reverse=True)


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and cache. With
    sources=True it reads the source package indices (deb-src) instead."""

    def __init__(self, codename: str, arch: str, sources: bool = False) -> None:
        self.codename = codename
        self.arch = arch
        self.kind = "deb-src" if sources else "deb"
        self.root = cache_dir() / "apt" / (f"{codename}-source" if sources
                                           else f"{codename}-{arch}")
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
            errors = [e for e in proc.stderr.strip().splitlines() if e.startswith("E:")]
            first = (errors or proc.stderr.strip().splitlines() or ["(no message)"])[0]
            error = NotServed if " 404 " in proc.stderr else FputraceError
            raise error(f"{tool} {' '.join(args)} failed for {self.codename}/"
                        f"{self.arch}: {first}")
        return proc.stdout

    def update(self, force: bool = False) -> None:
        main, security = archive_uris()
        signed = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
        lines = [f"{self.kind} {signed} {main} {self.codename} main",
                 f"{self.kind} {signed} {main} {self.codename}-updates main"]
        if security:
            lines.append(f"{self.kind} {signed} {security} {self.codename}-security main")
        text = "\n".join(lines) + "\n"
        # apt runs unlocked (Debug::NoLocking): its lists are ours, one writer at a time.
        with cache_lock(f"apt-{self.root.name}"):
            (self.lists / "partial").mkdir(parents=True, exist_ok=True)
            (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            changed = not self.sources.exists() or self.sources.read_text() != text
            if changed:
                self.sources.write_text(text)
            stamp = self.root / "updated"
            fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S
            if force or changed or not fresh:
                self._run("apt-get", ["update", "-qq"])
                stamp.touch()

    def depends(self, package: str) -> list[str]:
        out = self._run("apt-cache", ["depends", "--important", package])
        return [m.group(1) for m in re.finditer(r"^\s*Depends:\s*(\S+)", out, re.M)]

    def versions(self, package: str) -> list[str]:
        """Every version of a binary (or, with sources, source) package in the
        indices, newest first."""
        index = "Sources" if self.kind == "deb-src" else "Packages"
        out = self._run("apt-cache", ["madison", package])
        found = [cols[1].strip() for line in out.splitlines()
                 if len(cols := line.split("|")) == 3 and cols[0].strip() == package
                 and cols[2].strip().endswith(index)]
        return version_sorted(found)

    def exact_depends(self, package: str, version: str, prefix: str) -> tuple[str, str]:
        """The (name, version) a package version depends on exactly, among the
        names starting with prefix: linux-image-arm64 5.10.223-1 depends on
        linux-image-5.10.0-32-arm64 (= 5.10.223-1)."""
        out = self._run("apt-cache", ["show", f"{package}={version}"])
        for stanza in deb822.Packages.iter_paragraphs(out.splitlines(), use_apt_pkg=False):
            for alternatives in stanza.relations["depends"] or []:
                for dep in alternatives:
                    exact = dep.get("version")
                    if dep["name"].startswith(prefix) and exact and exact[0] == "=":
                        return dep["name"], exact[1]
        raise FputraceError(f"{package} {version} in {self.codename} depends on no "
                            f"{prefix}* package of an exact version")

    def download(self, package: str, dest: Path, version: str | None = None) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        # _apt cannot write into root-only directories: apt then downloads unsandboxed.
        self._run("apt-get", ["download", "-qq", f"{package}={version}" if version else package],
                  cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise FputraceError(f"apt-get download {package} left no .deb in {dest}")
        return debs[-1]

    def unpack(self, package: str, tree: Path, version: str | None = None) -> Path:
        """Download a package into tree's parent and unpack its files into
        tree (several packages may share one tree); return the .deb."""
        deb = self.download(package, tree.parent / "deb", version)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        return deb

    def download_source(self, package: str, version: str, dest: Path) -> Path:
        """The .dsc, with its tarballs next to it, of one source package version."""
        dest.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", ["source", "--download-only", "-qq", f"{package}={version}"],
                  cwd=dest)
        dsc = sorted(dest.glob(f"{package}_*.dsc"))
        if not dsc:
            raise FputraceError(f"apt-get source {package}={version} left no .dsc in {dest}")
        return dsc[-1]


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
    """Download (once) and unpack the Debian kernel of a series; return it.

    The newest kernel the indices name comes first. Where the archive does not
    serve it (the indices and the pool out of step: HTTP 404), the next older
    version of the series is taken, and a note says so."""
    codename = _check_series(series, arch)
    with cache_lock(f"kernel-{series}-{arch}"):
        return _fetch_kernel(series, arch, codename, refresh)


def _fetch_kernel(series: str, arch: str, codename: str, refresh: bool) -> KernelInfo:
    cached = cached_kernel(series, arch)
    apt = PrivateApt(codename, arch)
    try:
        apt.update(force=refresh)
    except FputraceError:
        if cached is not None:
            return cached  # offline: the cached kernel is what we have
        raise
    flavour = f"linux-image-{arch}"
    versions = apt.versions(flavour)
    if not versions:
        raise FputraceError(f"{flavour} is not in the {codename} package indices")
    # Packages found missing before are retried only with --refresh.
    known_missing = _series_dir(series, arch) / "not-served.json"
    skip = set() if refresh or not known_missing.exists() else \
        set(json.loads(known_missing.read_text()))
    not_served: list[str] = []
    for meta_version in versions:
        package, version = apt.exact_depends(flavour, meta_version, "linux-image-")
        release = package.removeprefix("linux-image-")
        root = _series_dir(series, arch) / release
        info = KernelInfo(series, arch, package, release, str(root), version)
        if f"{package} {version}" in skip:
            continue
        if not info.vmlinuz.exists():
            try:
                _unpack(apt, package, version, release, root)
            except NotServed:
                not_served.append(f"{package} {version}")
                continue
        if not_served:
            note(f"the archive does not serve {', '.join(not_served)} (HTTP 404), which its "
                 f"indices name: using {package} {version}")
            known_missing.write_text(json.dumps(sorted(skip | set(not_served))))
        (root.parent / "current.json").write_text(json.dumps(asdict(info), indent=1))
        return info
    raise FputraceError(f"the archive serves none of the {codename} {arch} kernels its indices "
                        f"name ({', '.join(not_served)}: HTTP 404): try again later, or give "
                        "--kernel PATH")


def kernel_version(info: KernelInfo) -> str:
    """The Debian version of a kernel package, from the indices for caches that
    predate the version field."""
    if info.version:
        return info.version
    apt = PrivateApt(_check_series(info.series, info.arch), info.arch)
    apt.update()
    versions = apt.versions(info.package)
    if not versions:
        raise FputraceError(f"{info.package} is no longer in the package indices: run "
                            f"'fputrace kernel fetch {info.series} --arch {info.arch}'")
    return versions[0]


def _unpack(apt: PrivateApt, package: str, version: str, release: str, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp_s:
        tmp = Path(tmp_s)
        os.chmod(tmp, 0o755)
        tree = tmp / "tree"
        apt.unpack(package, tree, version)
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
