"""cmc: history-aware commit message completion."""

__version__ = "0.1.0"


class CmcError(Exception):
    """An error the user can act on; shown as one line, never as a traceback."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
