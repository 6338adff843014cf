"""fputrace command line: dispatches to one module per subcommand.

Commands parse arguments and call into the library; every FputraceError ends
the program with one line on stderr and status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType, ModuleType
from typing import NoReturn

from rich.console import Console

from fputrace import __version__
from fputrace.cmds import runs
from fputrace.errors import FputraceError

# The commands in the order --help lists them: command NAME is module
# fputrace.cmds.NAME, imported when it is the one run, or for --help.
COMMANDS = ("record", "check", "report", "view", "compare", "export", "dump", "kernel", "zoo")


class Terminated(Exception):
    """SIGTERM: unwinds like an interrupt, so that a QEMU being run is
    stopped (fputrace.record.machine) instead of left running without us."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (what was wrong, where to look),
    as every other error of fputrace; its subcommands' parsers are of this
    class too."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"fputrace: {where}{message} (see {self.prog} --help)\n")


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"fputrace.cmds.{name}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for argv: when it begins with a command's name, the
    parser of that command alone, with only that command's modules
    imported. Every run of fputrace would otherwise pay for all of them:
    the imports (recording's and the analysis's libraries, a tenth of a
    second) and a few milliseconds for each command's parser (argparse
    looks up a translation of each of its messages). The top-level help
    and errors still list every command."""
    parser = Parser(
        prog="fputrace",
        description="Record and analyze the FPU/SIMD state handling of a Linux KVM host "
                    "running under QEMU.")
    parser.add_argument("--version", action="version", version=f"fputrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name in COMMANDS:
        if chosen is None or name == chosen:
            command_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    Console.on_broken_pipe = _broken_pipe  # type: ignore[method-assign, assignment]
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status: int = args.run(args)
        return runs.exit_status(args, status)
    except FputraceError as e:
        print(f"fputrace: {e}", file=sys.stderr)
        return int(getattr(args, "error_status", 2))  # check: 128, which stops a bisect
    except KeyboardInterrupt:
        print("fputrace: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("fputrace: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except BrokenPipeError:
        # The reader went away (report | head): what it read was whole. Later
        # writes, Python's last flush among them, go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _broken_pipe(console: Console) -> None:
    """rich's Console ends the program with status 1 when its reader goes
    away; fputrace ends it as for any other broken pipe (main())."""
    console.quiet = True
    raise BrokenPipeError


if __name__ == "__main__":
    sys.exit(main())
