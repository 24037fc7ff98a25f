"""Errors meant for the user: one line that says what went wrong and what to do."""


class MmtokError(Exception):
    """A failure we can explain in one line (bad input, unloadable model, ...). Never a bug."""


class UsageError(MmtokError):
    """The command line asked for something impossible (exit status 2)."""


class RefusedSource(MmtokError):
    """An image source that a policy refuses (a private address, a path outside the allowed folder), as opposed to
    one that could not be read."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
