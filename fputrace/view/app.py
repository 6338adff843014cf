"""fputrace view: the interactive timeline (textual). The screen is the
lanes of the current window (view.draw), a details pane for the event or
interval under the cursor, and a prompt for filtering and searching. Every
key redraws from the model's arrays; nothing is drawn per event."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from rich.console import Group
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from fputrace.view.details import Details
from fputrace.view.draw import (
    LABEL_WIDTH,
    Window,
    axis,
    events_in_column,
    lane_mark_cells,
    lane_rows,
    legend,
    title,
)
from fputrace.view.model import Model

HELP = """\
fputrace view: keys

  left / right, h / l     pan by a quarter of the window
  + / -                   zoom in / out around the cursor
  0                       the whole trace, cursor at its start
  , / .                   cursor one column left / right
  [ / ]                   cursor to the previous / next event in the lane
  up / down, k / j        select the lane above / below
  n / p                   next / previous finding (red !)
  f                       filter by task or vCPU (part of its name;
                          empty: all): other owners are dimmed, other
                          vCPU lanes hidden
  /                       search a kernel function (part of its name):
                          jump to its next event; /  again: the next one
  ?                       this help           q  quit

Lanes: one per CPU, one per vCPU. Top row: who owned the registers
(a colour per owner; full block on the L1 host, shaded while the guest
ran, magenta where the kernel used them itself). Bottom row: markers.
The details pane shows the event under the cursor (all its fields, its
call site and instruction, and for a finding the events that explain it),
or the ownership interval when there is no event.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def action_close(self) -> None:
        self.app.pop_screen()


class ViewerApp(App[None]):
    CSS = """
    #timeline { height: auto; }
    #details-box { height: 1fr; border-top: solid $accent; }
    #prompt { display: none; }
    #help { padding: 1 2; background: $panel; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("left,h", "pan(-1)", "pan", show=False),
        Binding("right,l", "pan(1)", "pan", show=False),
        Binding("plus,equals_sign", "zoom(0.5)", "zoom in", show=False),
        Binding("minus", "zoom(2)", "zoom out", show=False),
        Binding("0", "whole", "whole trace", show=False),
        Binding("comma", "cursor(-1)", "cursor", show=False),
        Binding("full_stop", "cursor(1)", "cursor", show=False),
        Binding("left_square_bracket", "step(-1)", "previous event", show=False),
        Binding("right_square_bracket", "step(1)", "next event", show=False),
        Binding("up,k", "lane(-1)", "lane", show=False),
        Binding("down,j", "lane(1)", "lane", show=False),
        Binding("n", "finding(1)", "next finding", show=False),
        Binding("p", "finding(-1)", "previous finding", show=False),
        Binding("f", "prompt('filter')", "filter", show=False),
        Binding("slash", "prompt('search')", "search", show=False),
    ]

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model
        self.details = Details(model)
        self.width = 80
        self.start = model.first
        self.span = max(model.last - model.first + 1, 1)
        self.cursor = 0
        self.lane = 0
        self.shown: set[int] | None = None
        self.vcpu_filter = ""
        self.search = ""
        self.prompt_mode = ""
        self.message = ""

    # ---- layout -------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="timeline")
        with VerticalScroll(id="details-box"):
            yield Static(id="details")
        yield Input(id="prompt")

    def on_mount(self) -> None:
        self.refresh_view()

    def on_resize(self, _event: Any) -> None:
        self.refresh_view()

    def window(self) -> Window:
        return Window(self.start, self.span, self.width)

    def visible_lanes(self) -> list[int]:
        return [n for n, lane in enumerate(self.model.lanes)
                if lane.kind == "cpu" or self.vcpu_filter.lower() in lane.name.lower()]

    def refresh_view(self) -> None:
        self.width = max(self.size.width - LABEL_WIDTH - 1, 10)
        win = self.window()
        self.cursor = min(max(self.cursor, 0), self.width - 1)
        lanes = self.visible_lanes()
        if self.lane not in lanes:
            self.lane = lanes[0] if lanes else 0
        model = self.model
        rows = lane_rows(model, win, lanes, self.lane, self.cursor, self.shown)
        status = Text(self.message or "? help  q quit", style="dim")
        self.query_one("#timeline", Static).update(
            Group(title(model, win), *rows, axis(model, win), *legend(model, win, lanes, 8),
                  status))
        self.query_one("#details", Static).update(self.details_text())

    def details_text(self) -> Text:
        if not self.model.lanes:
            return Text("no CPU lanes: the trace has no events")
        lane = self.model.lanes[self.lane]
        win = self.window()
        events = events_in_column(lane, win, self.cursor)
        if len(events):
            kinds = lane.mark_kind[np.searchsorted(lane.mark_event, events)]
            return self.details.event(int(events[int(np.argmax(kinds))]), len(events))
        return self.details.interval(lane, win.time_range(self.cursor)[0])

    # ---- actions ------------------------------------------------------

    def clamp(self) -> None:
        total = self.model.last - self.model.first + 1
        self.span = int(min(max(self.span, min(self.width, total), 1), max(total, 1)))
        self.start = int(min(max(self.start, self.model.first),
                             self.model.first + total - self.span))

    def action_pan(self, direction: int) -> None:
        self.start += direction * max(self.span // 4, 1)
        self.clamp()
        self.message = ""
        self.refresh_view()

    def action_zoom(self, factor: float) -> None:
        at = self.window().time_range(self.cursor)[0]
        self.span = int(self.span * factor)
        self.clamp()
        self.start = at - (self.cursor * self.span) // self.width
        self.clamp()
        self.cursor = self.window().column_of(at)
        self.refresh_view()

    def action_whole(self) -> None:
        self.start, self.span = self.model.first, self.model.last - self.model.first + 1
        self.cursor = 0
        self.clamp()
        self.refresh_view()

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta
        if self.cursor < 0 or self.cursor >= self.width:
            self.action_pan(1 if delta > 0 else -1)
            self.cursor = min(max(self.cursor, 0), self.width - 1)
        self.refresh_view()

    def action_step(self, direction: int) -> None:
        """The cursor to the next (previous) column with a marker."""
        lane = self.model.lanes[self.lane]
        marks = lane_mark_cells(lane, self.window())
        cols = np.flatnonzero(marks)
        later = cols[cols > self.cursor] if direction > 0 else cols[cols < self.cursor][::-1]
        if len(later):
            self.cursor = int(later[0])
            self.refresh_view()
            return
        # Off the window: the lane's next event, brought into view.
        here = self.window().time_range(self.cursor)
        i = np.searchsorted(lane.mark_time, here[1] if direction > 0 else here[0])
        i = i if direction > 0 else i - 1
        if 0 <= i < len(lane.mark_time):
            self.go_to(int(lane.mark_time[i]), self.lane)
        else:
            self.message = "no further event in this lane"
            self.refresh_view()

    def action_lane(self, delta: int) -> None:
        lanes = self.visible_lanes()
        if lanes:
            i = lanes.index(self.lane) if self.lane in lanes else 0
            self.lane = lanes[min(max(i + delta, 0), len(lanes) - 1)]
        self.refresh_view()

    def go_to(self, time: int, lane: int) -> None:
        """Show a time in the middle of the window, cursor on it."""
        self.lane = lane
        if time < self.start or time >= self.start + self.span:
            self.start = time - self.span // 2
            self.clamp()
        self.cursor = self.window().column_of(time)
        self.refresh_view()

    def action_finding(self, direction: int) -> None:
        model = self.model
        seqs = model.time[model.finding_events]
        if not len(seqs):
            self.message = "no findings in this trace"
            self.refresh_view()
            return
        here = self.window().time_range(self.cursor)
        i = np.searchsorted(seqs, here[1]) if direction > 0 else \
            np.searchsorted(seqs, here[0]) - 1
        if not 0 <= i < len(seqs):
            self.message = "no further finding"
            self.refresh_view()
            return
        ev = int(model.finding_events[i])
        lane = model.cpu_lane(int(model.analysis.run.trace.events["vcpu"][ev]))
        if self.span > 400:
            self.span = 400
            self.clamp()
        self.message = f"finding {i + 1} of {len(seqs)}"
        self.go_to(int(seqs[i]), lane)

    def action_prompt(self, mode: str) -> None:
        self.prompt_mode = mode
        box = self.query_one("#prompt", Input)
        box.placeholder = ("filter: part of a task or vCPU name (empty: all)" if mode == "filter"
                           else "search: part of a kernel function name")
        box.value = self.search if mode == "search" else ""
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        box = self.query_one("#prompt", Input)
        box.display = False
        self.set_focus(None)            # keys are the viewer's again
        text = event.value.strip()
        mode, self.prompt_mode = self.prompt_mode, ""
        if mode == "filter":
            self.apply_filter(text)
        elif mode == "search" and text:
            self.search = text
            self.find_function(text)
        self.refresh_view()

    def apply_filter(self, text: str) -> None:
        if not text:
            self.shown, self.vcpu_filter, self.message = None, "", "filter off"
            return
        low = text.lower()
        self.shown = {i for i, o in enumerate(self.model.owners) if low in o.lower()}
        self.vcpu_filter = text if any(low in ln.name.lower() for ln in self.model.lanes
                                       if ln.kind == "vcpu") else ""
        self.message = f"filter {text!r}: {len(self.shown)} owner(s)"

    def find_function(self, text: str) -> None:
        here = self.window().time_range(self.cursor)[1]
        hit = self.details.next_event_in(text, here)
        if hit is None:
            ev_seq = self.model.analysis.run.trace.events["seq"]
            at = int(np.searchsorted(self.model.time, here))
            seq = int(ev_seq[at]) if at < len(ev_seq) else int(ev_seq[-1]) + 1 if len(ev_seq) \
                else 0
            self.message = f"no event in a function matching {text!r} after seq {seq}"
            return
        i, cpu = hit
        self.message = f"search {text!r}: seq {int(self.model.analysis.run.trace.events['seq'][i])}"
        self.go_to(int(self.model.time[i]), self.model.cpu_lane(cpu))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def key_escape(self) -> None:
        box = self.query_one("#prompt", Input)
        if box.display:
            box.display = False
            self.prompt_mode = ""
            self.set_focus(None)

