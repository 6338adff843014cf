"""fputrace view FILE: the FPU ownership timeline in the terminal. One lane
per CPU and per vCPU, coloured by the owner of the registers, with markers
for saves, restores, traps, VM entries and exits and control register
writes, findings and redundant operations highlighted. Interactive (keys:
? in the viewer); --static prints the whole trace at the terminal's width,
--svg saves the same picture."""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from analyzers.run import analyze_run
from fputrace.cmds.runs import add_run_options, count, load
from fputrace.errors import FputraceError
from fputrace.view.draw import static_lines
from fputrace.view.model import build_model


def add_parser(sub: Any) -> None:
    p = sub.add_parser("view", help="the FPU ownership timeline in the terminal",
                       description=__doc__)
    p.add_argument("trace", type=Path)
    p.add_argument("--static", action="store_true",
                   help="print the whole trace once, for logs and CI (no keys)")
    p.add_argument("--svg", type=Path, metavar="OUT.svg",
                   help="save the static picture as SVG")
    p.add_argument("--width", type=count, default=0,
                   help="columns for --static/--svg (default: the terminal's)")
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.svg is not None and not args.svg.parent.is_dir():
        raise FputraceError(f"--svg {args.svg}: no directory {args.svg.parent}")
    r = load(args, args.trace)
    model = build_model(analyze_run(r))
    if args.static or args.svg is not None:
        width = args.width or shutil.get_terminal_size((160, 40)).columns
        console = Console(width=width, record=args.svg is not None, emoji=False,
                          highlight=False, file=None if args.static else io.StringIO())
        for line in static_lines(model, width):
            console.print(line, overflow="crop", no_wrap=True)
        if args.svg is not None:
            tmp = args.svg.with_name(f".{args.svg.name}.partial")
            try:
                console.save_svg(str(tmp), title=f"fputrace view {args.trace.name}")
                tmp.replace(args.svg)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise FputraceError(f"cannot write {args.svg}: {e.strerror or e}") from None
            print(f"wrote {args.svg}")
        return 0
    if not sys.stdout.isatty():
        raise FputraceError("view needs a terminal; use --static (or --svg FILE) for a "
                            "picture without one")
    from fputrace.view.app import ViewerApp

    ViewerApp(model).run()
    return 0

