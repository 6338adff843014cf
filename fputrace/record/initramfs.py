"""A gzip-compressed newc cpio archive, written directly (no cpio binary)."""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Entry:
    name: str
    mode: int
    data: bytes


class Initramfs:
    """Files, directories and symlinks to pack into an initramfs."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._entries:
                self._entries[d] = _Entry(d, stat.S_IFDIR | 0o755, b"")

    def directory(self, name: str) -> None:
        name = name.strip("/")
        self._add_parents(name + "/x")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self._add_parents(name)
        self._entries[name] = _Entry(name, stat.S_IFREG | mode, data)

    def copy(self, name: str, src: Path, mode: int | None = None) -> None:
        self.file(name, src.read_bytes(), mode if mode is not None else src.stat().st_mode & 0o777)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self._add_parents(name)
        self._entries[name] = _Entry(name, stat.S_IFLNK | 0o777, target.encode())

    def pack(self) -> bytes:
        out = bytearray()
        ino = 1
        for e in [*self._entries.values(), _Entry("TRAILER!!!", 0, b"")]:
            name = e.name.encode() + b"\0"
            fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
            out += b"070701" + b"".join(b"%08X" % f for f in fields)
            out += name
            out += b"\0" * (-len(out) % 4)
            out += e.data
            out += b"\0" * (-len(out) % 4)
            ino += 1
        # mtime=0: the same files give the same bytes (a deterministic run).
        return gzip.compress(bytes(out), compresslevel=1, mtime=0)

    def write(self, path: Path) -> None:
        path.write_bytes(self.pack())


BASE_APPLETS = ("sh", "mount", "insmod", "cat", "echo", "grep", "gzip", "poweroff", "stty", "tar",
                "sleep", "mkdir", "uname", "dmesg", "taskset", "wc", "head")


def busybox_initramfs(busybox: Path, init_script: str,
                      applets: frozenset[str] | None = None) -> Initramfs:
    """An initramfs with a static busybox, its applet links, and /init.
    applets: paths of the applets to link ('usr/bin/env'); a basic set
    under bin/ when not given."""
    ramfs = Initramfs()
    for d in ("proc", "sys", "dev", "tmp", "sbin", "usr/bin", "usr/sbin"):
        ramfs.directory(d)
    ramfs.copy("bin/busybox", busybox, 0o755)
    for path in sorted(applets) if applets else [f"bin/{a}" for a in BASE_APPLETS]:
        if path != "bin/busybox":
            depth = path.count("/")
            ramfs.symlink(path, "../" * depth + "bin/busybox")
    ramfs.file("init", init_script.encode(), 0o755)
    return ramfs
