"""The one exception type the library raises for bad input; ``cli.py`` turns it into one line."""


class MaedferError(Exception):
    """A user-facing error with a one-line message: what was wrong, the value, what is allowed."""


class NotAvailableYet(MaedferError):
    """A command whose implementation has not landed yet (the CLI exits 2 on it)."""
