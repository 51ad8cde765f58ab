"""cmc: history-aware commit message completion."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "numpy" not in _sys.modules:
    # numpy's OpenBLAS starts a thread per core: a 9M model's products gain little from a second
    # thread and lose a lot when the cores are busy (`cmc.settings.inference_threads`). Set before
    # numpy is first imported, which is the only time OpenBLAS reads it.
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", _os.environ.get("CMC_THREADS", "1"))


class CmcError(Exception):
    """An error the user can act on; shown as one line, never as a traceback."""


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
