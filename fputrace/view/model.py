"""What the timeline viewer draws, built once from an analysis as arrays:
lanes (one per CPU, one per vCPU instance), each with its segments (who
owned the registers from which seq to which) and its markers (events, with
a drawing priority), the owners with their stable colours, and the
findings. Drawing a window then costs a few binary searches per column."""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analyzers.costs import vcpu_label
from analyzers.ownership import Class
from analyzers.run import Analysis, owner_labels, vm_runs
from fputrace.trace import format as fmt

K = fmt.Kind


class Mark(enum.IntEnum):
    """Marker kinds, in drawing priority: a column shows its highest."""

    NONE = 0
    BOUNDARY = 1     # a user return: the boundary check point
    CONTROL = 2      # XSETBV, XFD, CPACR/CPTR/ZCR/SMCR/SVCR writes
    VM_ENTRY = 3
    VM_EXIT = 4
    SAVE = 5
    RESTORE = 6
    TRAP = 7
    REDUNDANT_SAVE = 8
    REDUNDANT_RESTORE = 9
    FINDING = 10


GLYPH = {Mark.NONE: " ", Mark.BOUNDARY: "·", Mark.CONTROL: "c", Mark.VM_ENTRY: ">",
         Mark.VM_EXIT: "<", Mark.SAVE: "S", Mark.RESTORE: "R", Mark.TRAP: "T",
         Mark.REDUNDANT_SAVE: "s", Mark.REDUNDANT_RESTORE: "r", Mark.FINDING: "!"}
MARK_STYLE = {Mark.REDUNDANT_SAVE: "bold black on yellow",
              Mark.REDUNDANT_RESTORE: "bold black on yellow",
              Mark.FINDING: "bold white on red", Mark.TRAP: "bold cyan"}
MARK_HELP = ("S save  R restore  s/r redundant save/restore  T FP access trap  "
             "> VM entry  < VM exit  c control register write (XSETBV, XFD, CPACR, CPTR, ...)  "
             "· user return (boundary check)  ! finding")

CONTROL_KINDS = (K.XSETBV, K.WRMSR_XFD, K.WRMSR_XFD_ERR, K.WRMSR, K.CPACR_WRITE, K.CPTR_WRITE,
                 K.ZCR_WRITE, K.SMCR_WRITE, K.SVCR_WRITE)

# Segment flags.
SEG_KERNEL_USE = 1
SEG_IN_GUEST = 2

# Owner colours: stable per name (CRC-32 of it), so that the same task or
# vCPU has the same colour in every trace. Magenta is kernel-mode use, grey
# the init state, dark grey an unknown owner, red findings.
PALETTE = ("dodger_blue2", "green3", "gold1", "dark_orange", "turquoise2", "medium_purple1",
           "spring_green2", "deep_sky_blue1", "khaki1", "light_sky_blue1", "chartreuse3",
           "sandy_brown", "steel_blue1", "aquamarine1", "light_goldenrod1", "cornflower_blue")
INIT_COLOUR, KERNEL_COLOUR, UNKNOWN_COLOUR = "grey70", "magenta", "grey35"


def owner_colour(label: str) -> str:
    if label == "init state":
        return INIT_COLOUR
    if label == "unknown":
        return UNKNOWN_COLOUR
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


@dataclass
class Lane:
    name: str
    kind: str                            # "cpu" or "vcpu"
    cpu: int                             # a CPU lane's CPU, -1 for a vCPU
    seg_start: npt.NDArray[np.int64]     # time each segment begins at, ascending
    seg_end: npt.NDArray[np.int64]
    seg_owner: npt.NDArray[np.int32]     # index into Model.owners
    seg_flags: npt.NDArray[np.uint8]     # SEG_*
    mark_time: npt.NDArray[np.int64]     # ascending
    mark_event: npt.NDArray[np.int64]    # event index
    mark_kind: npt.NDArray[np.uint8]     # Mark
    seg_row: npt.NDArray[np.int64]       # a CPU segment's row in Model.timeline, -1


@dataclass
class Model:
    analysis: Analysis
    lanes: list[Lane]
    owners: list[str]
    colours: list[str]
    first: int                              # the time axis: its first and last time
    last: int
    finding_events: npt.NDArray[np.int64]   # event index of each finding, by seq
    timeline: npt.NDArray[np.void]          # analyzers.timeline.cpu_timeline()
    time: npt.NDArray[np.int64]             # each event's time on the axis
    axis: str                               # the time's unit: AXIS_SEQ or instructions

    def cpu_lane(self, cpu: int) -> int:
        """The index of a CPU's lane (0 if the CPU has none)."""
        return next((n for n, lane in enumerate(self.lanes) if lane.cpu == cpu), 0)




def _marks(a: Analysis, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """The marker of each event in idx (Mark.NONE: not drawn)."""
    ev = a.run.trace.events
    kind = ev["kind"][idx]
    cls = a.own.cls[idx]
    save = fmt.SAVE_TABLE[kind]
    restore = fmt.RESTORE_TABLE[kind] | (kind == K.SME_LOAD)
    save = save | (kind == K.SME_SAVE)
    m = np.select(
        [cls == Class.REDUNDANT_SAVE, cls == Class.REDUNDANT_RESTORE, kind == K.FP_TRAP,
         restore, save, kind == K.VM_EXIT, kind == K.VM_ENTRY,
         np.isin(kind, [int(k) for k in CONTROL_KINDS]), kind == K.USER_RETURN],
        [Mark.REDUNDANT_SAVE, Mark.REDUNDANT_RESTORE, Mark.TRAP, Mark.RESTORE, Mark.SAVE,
         Mark.VM_EXIT, Mark.VM_ENTRY, Mark.CONTROL, Mark.BOUNDARY], Mark.NONE)
    out: npt.NDArray[np.uint8] = m.astype(np.uint8)
    return out


def build_model(a: Analysis) -> Model:
    ev = a.run.trace.events
    seq = ev["seq"].astype(np.int64)
    axis = a.time_axis()
    time, at = axis.time, axis.of_seq
    tl = a.timeline()
    labels = owner_labels(a, tl["owner"])
    owners = sorted(set(labels.values()))
    owner_index = {name: i for i, name in enumerate(owners)}
    # Each interval's owner index, by buffer (labels has every owner buffer).
    buffers = np.array(sorted(labels), dtype=np.uint64)
    index_of = np.array([owner_index[labels[int(b)]] for b in buffers], dtype=np.int32)
    pos = np.minimum(np.searchsorted(buffers, tl["owner"]), len(buffers) - 1)
    tl_owner = np.where(buffers[pos] == tl["owner"], index_of[pos],
                        owner_index["unknown"]).astype(np.int32)
    lanes: list[Lane] = []
    finding_events = np.array(sorted({f.event for f in a.verdict.findings},
                                     key=lambda i: int(seq[i])), dtype=np.int64)
    marks = _marks(a, np.arange(len(ev), dtype=np.int64))
    marks[finding_events] = Mark.FINDING
    drawn = marks != Mark.NONE
    cpus = np.unique(ev["vcpu"]).tolist()
    for cpu in cpus:
        row_idx = np.flatnonzero(tl["cpu"] == cpu)
        rows = tl[row_idx]
        on_cpu = np.flatnonzero(drawn & (ev["vcpu"] == cpu))
        flags = (rows["kernel_use"].astype(np.uint8) * SEG_KERNEL_USE
                 | rows["in_guest"].astype(np.uint8) * SEG_IN_GUEST)
        lanes.append(Lane(
            f"cpu{cpu}", "cpu", int(cpu), at(rows["start_seq"].astype(np.int64)),
            at(rows["end_seq"].astype(np.int64)), tl_owner[row_idx], flags, time[on_cpu],
            on_cpu.astype(np.int64), marks[on_cpu], row_idx.astype(np.int64)))
    # vCPU lanes: when each vCPU instance ran in the guest (entry to exit),
    # coloured as the guest state it owns; its markers are the entries, the
    # exits and what the guest did (events flagged L2).
    runs = vm_runs(ev, a.ident)
    l2_events = np.flatnonzero((ev["flags"] & np.uint32(fmt.Flag.L2)) != 0)
    by_vcpu: dict[int, list[tuple[int, int, int, int]]] = {}
    for r in runs:
        by_vcpu.setdefault(r[0], []).append(r)
    for vcpu, rs in sorted(by_vcpu.items()):
        name = vcpu_label(vcpu, a.run.trace.tasks)
        owner_name = "guest of " + name
        if owner_name not in owner_index:
            owner_index[owner_name] = len(owners)
            owners.append(owner_name)
        entries = np.array([r[2] for r in rs], dtype=np.int64)
        exits = np.array([r[3] for r in rs], dtype=np.int64)
        mine = np.zeros(len(ev), dtype=bool)
        mine[entries] = True
        mine[exits] = True
        # The guest's events inside one of its runs (entry <= i < exit): a
        # vCPU's runs follow each other, so both columns are sorted.
        lo, hi = np.searchsorted(l2_events, [entries[0], exits[-1]])
        candidates = l2_events[lo:hi]
        run = np.searchsorted(entries, candidates, side="right") - 1
        mine[candidates[(run >= 0) & (candidates < exits[np.maximum(run, 0)])]] = True
        idx = np.flatnonzero(mine & drawn)
        lanes.append(Lane(
            name, "vcpu", -1, time[entries], time[exits],
            np.full(len(rs), owner_index[owner_name], dtype=np.int32),
            np.full(len(rs), SEG_IN_GUEST, dtype=np.uint8),
            time[idx], idx.astype(np.int64), marks[idx], np.full(len(rs), -1, dtype=np.int64)))
    return Model(a, lanes, owners, [owner_colour(o) for o in owners],
                 int(time[0]) if len(time) else 0, int(time[-1]) if len(time) else 0,
                 finding_events, tl, time, axis.unit)
