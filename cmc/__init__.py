"""cmc: history-aware commit message completion."""

import sys as _sys

__version__ = "0.1.0"


class CmcError(Exception):
    """An error the user can act on; shown as one line, never as a traceback."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if "numpy" not in _sys.modules:
    from cmc.settings import limit_blas_threads as _limit_blas_threads

    _limit_blas_threads()
