"""Drawing a window of the timeline as rich Text, shared by the interactive
viewer, --static and --svg. Each lane is two rows: who owned the registers
(one colour per owner; a full block on the L1 host, a shaded one while the
guest ran; magenta where the kernel used the registers itself) and the
markers of its events. A column stands for span/width seqs; it shows the
owner at its first seq and its highest-priority marker (model.Mark)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rich.text import Text

from analyzers.run import AXIS_SEQ
from fputrace.view.model import (
    GLYPH,
    KERNEL_COLOUR,
    MARK_HELP,
    MARK_STYLE,
    SEG_IN_GUEST,
    SEG_KERNEL_USE,
    Lane,
    Mark,
    Model,
)

LABEL_WIDTH = 22
AXIS_STEP = 20          # columns between times under the lanes
HOST_GLYPH, GUEST_GLYPH = "█", "▒"


@dataclass
class Window:
    start: int      # first time shown (Model.axis: instructions or event seq)
    span: int       # times shown, at least 1
    width: int      # columns for the lanes

    def column_starts(self) -> npt.NDArray[np.int64]:
        cols = np.arange(self.width, dtype=np.int64)
        out: npt.NDArray[np.int64] = self.start + (cols * self.span) // self.width
        return out

    def column_of(self, time: int) -> int:
        return int(self.columns_of(np.array([time], dtype=np.int64))[0])

    def columns_of(self, times: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The column showing each time: column c shows the times from
        c * span // width on (time_range()); zoomed in, a time spans several
        columns and is marked at the first of them."""
        d = times - self.start
        first = (d * self.width + self.span - 1) // self.span
        last = ((d + 1) * self.width - 1) // self.span
        out: npt.NDArray[np.int64] = np.minimum(first, last)
        return out

    def time_range(self, col: int) -> tuple[int, int]:
        """[first, last) times of a column."""
        lo = self.start + (col * self.span) // self.width
        hi = self.start + ((col + 1) * self.span) // self.width
        return lo, max(hi, lo + 1)


def whole(model: Model, width: int) -> Window:
    return Window(model.first, max(model.last - model.first + 1, 1), max(width, 1))


def lane_owner_cells(lane: Lane, win: Window) -> tuple[npt.NDArray[np.int32],
                                                     npt.NDArray[np.uint8]]:
    """Per column: the owner index (-1: no segment) and the segment flags."""
    if not len(lane.seg_start):
        return np.full(win.width, -1, dtype=np.int32), np.zeros(win.width, dtype=np.uint8)
    cs = win.column_starts()
    i = np.searchsorted(lane.seg_start, cs, side="right") - 1
    j = np.maximum(i, 0)
    ok = (i >= 0) & (cs <= lane.seg_end[j])
    owner = np.where(ok, lane.seg_owner[j], -1).astype(np.int32)
    flags = np.where(ok, lane.seg_flags[j], 0).astype(np.uint8)
    return owner, flags


def lane_mark_cells(lane: Lane, win: Window) -> npt.NDArray[np.uint8]:
    """Per column: the highest-priority marker among its events."""
    lo, hi = np.searchsorted(lane.mark_time, [win.start, win.start + win.span])
    out = np.zeros(win.width, dtype=np.uint8)
    if hi > lo:
        cols = win.columns_of(lane.mark_time[lo:hi])
        np.maximum.at(out, cols, lane.mark_kind[lo:hi])
    return out


def events_in_column(lane: Lane, win: Window, col: int) -> npt.NDArray[np.int64]:
    lo_seq, hi_seq = win.time_range(col)
    lo, hi = np.searchsorted(lane.mark_time, [lo_seq, hi_seq])
    out: npt.NDArray[np.int64] = lane.mark_event[lo:hi]
    return out


def _owner_row(model: Model, lane: Lane, win: Window, shown: set[int] | None) -> Text:
    owner, flags = lane_owner_cells(lane, win)
    text = Text()
    col = 0
    while col < win.width:
        end = col + 1
        while end < win.width and owner[end] == owner[col] and flags[end] == flags[col]:
            end += 1
        o, f = int(owner[col]), int(flags[col])
        if o < 0:
            text.append(" " * (end - col))
        else:
            glyph = GUEST_GLYPH if f & SEG_IN_GUEST else HOST_GLYPH
            colour = KERNEL_COLOUR if f & SEG_KERNEL_USE else model.colours[o]
            if shown is not None and o not in shown:
                colour, glyph = "grey23", "░"
            text.append(glyph * (end - col), style=colour)
        col = end
    return text


def _mark_row(lane: Lane, win: Window, cursor: int | None) -> Text:
    marks = lane_mark_cells(lane, win)
    text = Text()
    for col, m in enumerate(marks.tolist()):
        style = MARK_STYLE.get(Mark(m), "")
        if col == cursor:
            style = (style + " reverse").strip()
        text.append(GLYPH[Mark(m)] if m or col != cursor else "^", style=style)
    return text


def short_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def axis(model: Model, win: Window) -> Text:
    """Times under the lanes, one every 20 columns or so: event seqs, or
    instructions since the trace's first event."""
    line = [" "] * win.width
    for col in range(0, win.width, AXIS_STEP):
        t = win.start + (col * win.span) // win.width
        label = f"|{t}" if model.axis == AXIS_SEQ else f"|+{short_count(t - model.first)}"
        if col + len(label) <= win.width:
            line[col:col + len(label)] = list(label)
    return Text(" " * LABEL_WIDTH + "".join(line), style="dim")


def lane_rows(model: Model, win: Window, lanes: list[int] | None = None,
              selected: int | None = None, cursor: int | None = None,
              shown: set[int] | None = None) -> list[Text]:
    """Two rows per lane (lanes: which, by index; None for all), label first.
    selected: the lane with the cursor; shown: owner indices to colour (the
    rest dimmed), None for all."""
    rows: list[Text] = []
    for n in range(len(model.lanes)) if lanes is None else lanes:
        lane = model.lanes[n]
        label = lane.name if len(lane.name) < LABEL_WIDTH else lane.name[:LABEL_WIDTH - 2] + "…"
        mark = "▶" if n == selected else " "
        head = Text(f"{mark}{label:<{LABEL_WIDTH - 1}}",
                    style="bold" if n == selected else "")
        rows.append(head + _owner_row(model, lane, win, shown))
        rows.append(Text(" " * LABEL_WIDTH) + _mark_row(lane, win,
                                                        cursor if n == selected else None))
    return rows


def legend(model: Model, win: Window, lanes: list[int] | None = None,
           limit: int = 16) -> list[Text]:
    """The owners seen in the window's lanes (by columns covered), then the
    markers."""
    counts: dict[int, int] = {}
    for n in range(len(model.lanes)) if lanes is None else lanes:
        lane = model.lanes[n]
        owner, _ = lane_owner_cells(lane, win)
        for o, c in zip(*np.unique(owner[owner >= 0], return_counts=True), strict=True):
            counts[int(o)] = counts.get(int(o), 0) + int(c)
    out = []
    line = Text("owners: ")
    for o, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]:
        piece = Text(HOST_GLYPH * 2, style=model.colours[o]) + Text(f" {model.owners[o]}  ")
        if len(line) + len(piece) > LABEL_WIDTH + win.width and len(line) > 8:
            out.append(line)
            line = Text("        ")
        line += piece
    if len(counts) > limit:
        line += Text(f"(+{len(counts) - limit} more)")
    out.append(line)
    out.append(Text(HOST_GLYPH * 2 + " L1 host  " + GUEST_GLYPH * 2 + " guest ran  ")
               + Text(HOST_GLYPH * 2, style=KERNEL_COLOUR) + Text(" kernel-mode use"))
    out.append(Text("markers: " + MARK_HELP, style="dim"))
    return out


def title(model: Model, win: Window) -> Text:
    run = model.analysis.run
    h = run.trace.header
    n = len(run.trace.events)
    return Text(f"{run.trace.path.name}  {h.arch.name.lower()}  {h.kernel or '-'}  "
                f"{n} events, {len(model.finding_events)} findings  "
                f"{_span_text(model, win)}", style="bold")


def _span_text(model: Model, win: Window) -> str:
    if model.axis == AXIS_SEQ:
        return (f"seq {win.start}-{win.start + win.span - 1} of "
                f"{model.first}-{model.last}")
    lo, hi = win.start - model.first, win.start + win.span - 1 - model.first
    return (f"{model.axis} +{short_count(lo)} to +{short_count(hi)} of "
            f"{short_count(model.last - model.first)}")


def static_lines(model: Model, width: int) -> list[Text]:
    """The whole trace at a width of terminal columns (--static, --svg)."""
    win = whole(model, max(width - LABEL_WIDTH, 10))
    return [title(model, win), *lane_rows(model, win), axis(model, win), *legend(model, win)]
