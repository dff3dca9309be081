"""The one exception type for bad input: the CLI prints its message as one line."""


class FM2SError(ValueError):
    """Bad input or options. The message names the problem and the fix."""
