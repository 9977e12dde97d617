"""One exception type for user-facing errors.

The CLI prints ``VgpoError`` as a single line (no traceback); the message must name the field, file
or line at fault and what was expected.
"""


class VgpoError(Exception):
    """Bad input from the user: config value, prompt file, checkpoint path, reward name."""
