"""One exception type for every problem caused by user input.

The CLI turns a ``NoraError`` into a single ``error: ...`` line and a non-zero exit code; anything
else escaping is a bug in nora and keeps its traceback.
"""


class NoraError(Exception):
    """A problem with the user's input (config, data, checkpoint, arguments)."""
