"""cmc: history-aware commit message completion."""

__version__ = "0.1.0"


class CmcError(Exception):
    """An error the user can act on; shown as one line, never as a traceback."""
