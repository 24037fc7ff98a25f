"""Errors meant for the user: one line that says what went wrong and what to do."""


class MmtokError(Exception):
    """A failure we can explain in one line (bad input, unloadable model, ...). Never a bug."""


class UsageError(MmtokError):
    """The command line asked for something impossible (exit status 2)."""
