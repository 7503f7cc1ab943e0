"""Errors a person can act on.

Every error that comes from bad input (an unknown name, a wrong bit count, a malformed file)
is a :class:`HashbenchError`; the CLI prints its message on one line and exits with code 2.
"""


class HashbenchError(Exception):
    """Bad input or configuration. The message is one line and says what to do."""


class UnknownComponentError(HashbenchError, KeyError):
    """A component name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SplitLeakError(HashbenchError):
    """Two splits that a protocol declares disjoint share items."""
