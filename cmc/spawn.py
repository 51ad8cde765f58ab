"""Starting cmc's own Python children without the caller's folder on their import path.

``python -m pkg`` and ``python -c`` put the current folder first on ``sys.path``. cmc runs inside
repositories it does not trust (a clone's ``json.py`` or ``torch.py`` would shadow the real module),
so every Python child cmc starts goes through `python_argv` (``-P``, or an equivalent bootstrap
before 3.11), runs from a folder cmc owns, and carries ``PYTHONSAFEPATH=1`` so that grandchildren
(torchrun's workers) are started the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before 3.11 there is no -P: drop the '' entry -c adds, then run the module as -m would.
_BOOTSTRAP = (
    "import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "m = sys.argv.pop(1); runpy.run_module(m, run_name='__main__', alter_sys=True)"
)


def python_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``module`` like ``python -m`` but never imports from the working folder."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]


def safe_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child: the working folder never joins its import path."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    return env


def safe_cwd(folder: str | os.PathLike) -> str:
    """A working folder for a child: ``folder`` (created, cmc's own) rather than a repository."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def die_with_parent(sig: int = 15) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; else nothing).

    A training worker whose launcher was killed must stop (cleanly, on SIGTERM) rather than train
    on unseen, writing into a run folder someone may start again.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def lowest_priority() -> None:
    """In a child, before it runs: the lowest CPU priority, and idle I/O priority (Linux)."""
    try:
        os.nice(19)
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        import ctypes
        import platform

        number = {"x86_64": 251, "aarch64": 30}.get(platform.machine())  # ioprio_set
        if number is not None:
            try:  # IOPRIO_WHO_PROCESS, this process, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
                ctypes.CDLL(None, use_errno=True).syscall(number, 1, 0, 3 << 13)
            except (OSError, AttributeError):
                pass
