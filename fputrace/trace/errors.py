"""The one exception type that reaches the user as a single line."""


class FputraceError(Exception):
    """Bad input or a failed step: the message says what was wrong and what to do."""
