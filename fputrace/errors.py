"""The one exception type that reaches the user as a single line (defined in
the trace layer, which raises it too)."""

from fputrace.trace.errors import FputraceError

__all__ = ["FputraceError"]
