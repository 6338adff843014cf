"""The user's own programs as workloads: `record --add PATH --run 'CMD ARGS'`.

Added files and directories are copied into the guest under /added. /added
and each directory added there come first on the PATH of every command
(guest_path()), so `--run` finds an added program by its bare name, as the
check here resolves it. The guest is a busybox initramfs: it has busybox's applets and
no dynamic loader, so everything is checked before anything boots: a missing
file, a dynamically linked or foreign-architecture binary, a script whose
interpreter the guest lacks, or a command that names nothing in the guest.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from fputrace.errors import FputraceError

GUEST_DIR = "added"
# What each guest runs: an x86_64 kernel runs i386 programs in compatibility
# mode (CONFIG_IA32_EMULATION, on in the Debian kernels).
ELF_MACHINES = {"x86_64": ("EM_X86_64", "EM_386"), "aarch64": ("EM_AARCH64",)}


@dataclass(frozen=True)
class AddedFile:
    src: Path
    guest: str  # path inside the guest, without the leading /


@dataclass(frozen=True)
class ForeignRun:
    command: str

    @property
    def script(self) -> str:
        """The shell line that runs it in the guest, from /added."""
        return f"(cd /{GUEST_DIR} && sh -c {shlex.quote(self.command)}) </dev/null"


@cache
def busybox_applets(busybox: Path) -> frozenset[str]:
    """Paths of busybox's applets ('bin/ls', 'usr/bin/env', ...)."""
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True)
    if out.returncode != 0:
        raise FputraceError(f"{busybox} --list-full failed: install busybox-static "
                            "(make setup)")
    return frozenset(line.strip() for line in out.stdout.splitlines() if line.strip())


def _check_elf(path: Path, shown: Path, arch: str) -> bool:
    """False if not an ELF file; raises if the guest cannot run it."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return False
        f.seek(0)
        try:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            interp = next((seg.get_interp_name() for seg in elf.iter_segments()
                           if isinstance(seg, InterpSegment)), "")
        except ELFError as e:
            raise FputraceError(f"--add {shown}: not a readable ELF file ({e})") from None
    if machine not in ELF_MACHINES[arch]:
        raise FputraceError(f"--add {shown}: built for {machine}, and the guest is {arch}: "
                            "build it for the guest's architecture")
    if interp:
        raise FputraceError(f"--add {shown}: dynamically linked (needs {interp}), and the "
                            "guest has no loader: link it with -static")
    return True


def _found_in_guest(name: str, added: set[str], applets: frozenset[str]) -> bool:
    """Whether a command or interpreter name resolves in the guest."""
    p = PurePosixPath(name)
    if p.is_absolute():
        rel = str(p).lstrip("/")
        return rel in applets or rel in added
    return name in added or any(PurePosixPath(a).name == name for a in applets)


def _check_script(path: Path, shown: Path, added: set[str], applets: frozenset[str]) -> None:
    with open(path, "rb") as f:
        head = f.readline(256)
    if not head.startswith(b"#!"):
        return
    words = head[2:].decode(errors="replace").split()
    if not words:
        raise FputraceError(f"--add {shown}: empty #! line")
    interp = words[0]
    if PurePosixPath(interp).name == "env" and len(words) > 1:
        interp = words[1]
    if not _found_in_guest(interp, added, applets):
        raise FputraceError(f"--add {shown}: its interpreter {interp} is not in the guest "
                            "(busybox only): add it with --add, or use /bin/sh")


def prepare_added(paths: list[Path], arch: str, applets: frozenset[str]) -> list[AddedFile]:
    """The files to copy into the guest, checked."""
    out: list[AddedFile] = []
    for p in paths:
        if not p.exists():
            raise FputraceError(f"--add {p}: no such file or directory")
        base = p.resolve()
        if base.is_dir():
            for root, _, files in os.walk(base):
                for name in sorted(files):
                    src = Path(root) / name
                    rel = src.relative_to(base.parent).as_posix()
                    out.append(AddedFile(src, f"{GUEST_DIR}/{rel}"))
        else:
            out.append(AddedFile(base, f"{GUEST_DIR}/{base.name}"))
    names = {f.guest.removeprefix(GUEST_DIR + "/") for f in out}
    guest_paths = {f.guest for f in out} | {PurePosixPath(f.guest).name for f in out} | names
    for f in out:
        shown = f.src
        if not f.src.is_file():
            raise FputraceError(f"--add {shown}: not a regular file (a device, a pipe or a "
                                "socket): add the program or data file itself")
        if not os.access(f.src, os.R_OK):
            raise FputraceError(f"--add {shown}: not readable")
        if not _check_elf(f.src, shown, arch):
            _check_script(f.src, shown, guest_paths, applets)
    return out


# Shell builtins a --run command may use between programs: they name no file.
SHELL_BUILTINS = frozenset({"cd", "export", "set", "ulimit", "umask", "wait", "exit", ":",
                            "true", "false"})
SHELL_SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")"})


# Reserved words after which a command comes (if, while, do, ...), and those
# that end a compound command (done, fi, ...): no program either way.
SHELL_BEFORE_COMMAND = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!",
                                  "{"})
SHELL_AFTER_COMMAND = frozenset({"done", "fi", "}"})


def programs_of(cmd: str) -> list[str]:
    """The first word of each simple command in a shell line ('cd fp &&
    ./fp-stress -t 5' -> ['cd', './fp-stress']). The words of a `for`
    header and of a `case` are no commands."""
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    programs: list[str] = []
    expect = True
    redirect = False
    skip_until = ""  # inside `for NAME in WORDS;` (until do) or a case (until esac)
    for token in lexer:
        if skip_until:
            if token == skip_until:
                skip_until, expect = "", True
        elif token in SHELL_SEPARATORS:
            expect = True
        elif "<" in token or ">" in token:
            redirect = True  # the next word is a file or descriptor
        elif redirect:
            redirect = False
        elif expect and token in ("for", "case"):
            skip_until = "do" if token == "for" else "esac"
        elif expect and token in SHELL_BEFORE_COMMAND:
            continue
        elif token in SHELL_AFTER_COMMAND:
            expect = False
        elif expect and "=" not in token.split("/")[0]:  # not a VAR=value prefix
            programs.append(token)
            expect = False
    return programs


def added_dirs(added: list[AddedFile]) -> list[str]:
    """/added and the directories --add put directly under it, in order."""
    dirs = [f"/{GUEST_DIR}"]
    for f in added:
        parts = PurePosixPath(f.guest).parts
        if len(parts) > 2 and f"/{GUEST_DIR}/{parts[1]}" not in dirs:
            dirs.append(f"/{GUEST_DIR}/{parts[1]}")
    return dirs


def guest_path(added: list[AddedFile]) -> str:
    """The PATH of every command in the guest."""
    return ":".join([*added_dirs(added), "/bin", "/sbin", "/usr/bin", "/usr/sbin"])


def check_commands(commands: list[str], added: list[AddedFile],
                   applets: frozenset[str]) -> list[ForeignRun]:
    """Each --run command, checked as the guest will resolve it: every
    program it runs must be an added file (a bare name found in a directory
    of guest_path(), or a path from /added, where commands run) or a busybox
    applet."""
    on_path = set(added_dirs(added))
    # Every name a command may run an added file by.
    by_name = {name: f for f in added
               for name in (f.guest, f.guest.removeprefix(GUEST_DIR + "/"),
                            *([PurePosixPath(f.guest).name]
                              if str(PurePosixPath("/" + f.guest).parent) in on_path else []))}
    names = set(by_name)
    runs = []
    for cmd in commands:
        try:
            programs = programs_of(cmd)
        except ValueError as e:
            raise FputraceError(f"--run {cmd!r}: {e}") from None
        if not programs:
            raise FputraceError("--run needs a command, e.g. --run './repro 100'")
        for prog in programs:
            # A name made by an expansion is known only when the shell runs it.
            if prog in SHELL_BUILTINS or "$" in prog or "`" in prog:
                continue
            plain = prog.removeprefix("./")
            # ./name after a cd into an added directory: some added file is it.
            below = prog.startswith("./") and any(f.guest.endswith("/" + plain) for f in added)
            if not (plain in names or below or _found_in_guest(prog, names, applets)):
                raise FputraceError(f"--run {cmd!r}: {prog} is neither an added file nor a "
                                    "busybox command in the guest: add it with --add PATH")
            program = by_name.get(plain)
            if program is not None and not program.src.stat().st_mode & 0o111:
                # The guest would refuse it with 126, after the whole boot.
                raise FputraceError(f"--run {cmd!r}: {program.src} is not executable: "
                                    f"chmod +x {program.src}")
        runs.append(ForeignRun(cmd))
    return runs
