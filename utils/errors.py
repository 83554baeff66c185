"""One exception type for bad input; entry scripts print its message as a single line and exit 1."""


class CPGError(Exception):
    """A user-facing error: the message names the path or value and says what to do."""
