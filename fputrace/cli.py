"""fputrace command line: dispatches to one module per subcommand.

Commands parse arguments and call into the library; every FputraceError ends
the program with one line on stderr and status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from fputrace import __version__
from fputrace.cmds import check, compare, dump, export, kernel, record, report, runs, view
from fputrace.errors import FputraceError

COMMANDS = (record, check, report, view, compare, export, dump, kernel)


class Terminated(Exception):
    """SIGTERM: unwinds like an interrupt, so that a QEMU being run is
    stopped (fputrace.machine) instead of left running without us."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fputrace",
        description="Record and analyze the FPU/SIMD state handling of a Linux KVM host "
                    "running under QEMU.")
    parser.add_argument("--version", action="version", version=f"fputrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status: int = args.run(args)
        return runs.exit_status(args, status)
    except FputraceError as e:
        print(f"fputrace: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fputrace: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("fputrace: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
