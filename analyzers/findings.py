"""The kinds of finding, as the report, --json and the gates name them:
defined here once (docs/analysis.md, "Findings")."""

from __future__ import annotations

import enum

__all__ = ["Kind"]


class Kind(enum.StrEnum):
    # An operation that lost, overwrote or misattributed a context's
    # registers, confirmed at the harmed context's next boundary
    # (ownership.FindingKind is the compiled pass's code for them).
    LOST_STATE = "lost_state"
    STALE_RESTORE = "stale_restore"
    FOREIGN_SAVE = "foreign_save"
    # Seen at a boundary: kernel SIMD use outside a kernel_fpu section, and
    # registers other than the task or vCPU left with (or a purposeful
    # change gives).
    KERNEL_FPU_MISUSE = "kernel_fpu_misuse"
    CORRUPTED_STATE = "corrupted_state"
