"""One exception type for bad input; entry scripts print its message as a single line and exit 1."""


class CPGError(Exception):
    """A user-facing error: the message names the path or value and says what to do.

    Raised inside a DataLoader worker, the error reaches the main process re-created from one long
    message ("Caught CPGError in DataLoader worker process 0. Original Traceback ..."); the
    original one-line message is recovered from its last line, so a bad image read by a worker
    reads exactly as one read in process.
    """

    def __init__(self, message=''):
        message = str(message)
        if message.startswith('Caught ') and 'Original Traceback' in message:
            last = message.rstrip().splitlines()[-1]   # "<module>.<Class>: <message>"
            marker = f'{type(self).__name__}: '
            message = last[last.find(marker) + len(marker):] if marker in last else last
        super().__init__(message)
