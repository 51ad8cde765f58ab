"""A model's ``int8w`` weights, prepared once and kept: a cold process skips reading and
quantizing the float32 weights.

Loading the pretrained base cold spent 3.7 of its 5.2 s (busy cores) reading 540 MB of float32
weights and quantizing them into blocks (`cmc.runtime.linear.quantize_blocks`). The blocks are
the same every time for the same weights, so the first load keeps them, ~150 MB as one ``.npz``
under ``$XDG_CACHE_HOME/cmc/prepared`` (a private folder), named by what they were made from: each
weights file's name, size and modification time, the precision, the block size and this format's
version. A later load reads them back one matrix at a time, as it builds each (all at once added
~150 MB to the base's peak: each is copied into its onnxruntime session); anything wrong with the
file (missing, truncated, another shape) and the load quantizes again as if there were none, and
replaces it. The newest `KEEP`
are kept. Nothing here ever stops a model from loading: a cache that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cmc.runtime.linear import BLOCK, Blocks, quantize_rows

FORMAT = 1  # bump when what is kept, or how it is made, changes
KEEP = 4  # prepared models kept; the oldest go (each export of a training run is another)


def cache_dir() -> Path:
    from cmc.settings import cache_home

    return cache_home() / "prepared"


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".safetensors"))


def cache_path(folder: str | Path, precision: str) -> Path:
    """Where the prepared weights of this model folder, as it is now, are kept."""
    h = hashlib.sha256(f"{FORMAT}:{precision}:{BLOCK}:{Path(folder).resolve()}".encode())
    for f in _weight_files(Path(folder)):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_dir() / f"{h.hexdigest()[:24]}.npz"


class Prepared:
    """The blocks and int8 rows of one load: read back from the cache where it has them, made
    (and kept for `save`) where it does not."""

    def __init__(self, folder: str | Path, precision: str):
        self.path = cache_path(folder, precision)
        self._kept: Any = None  # the open file (`numpy.lib.npyio.NpzFile`): arrays read when asked
        try:
            self._kept = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # none yet, or unreadable: made again
        self._made: dict[str, np.ndarray] = {}

    def _get(self, key: str) -> np.ndarray | None:
        """One kept array, read now (None: not kept, or unreadable)."""
        if self._kept is None:
            return None
        try:
            return self._kept[key]
        except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    @property
    def hit(self) -> bool:
        return self._kept is not None and bool(self._kept.files)

    def blocks(self, name: str, weight: Callable[[], np.ndarray]) -> Blocks:
        """Matrix ``name`` as blocks; ``weight()`` gives its float32 (out, in) when needed."""
        q, scale, zero, shape = (self._get(f"{name}.{part}") for part in ("q", "s", "z", "shape"))
        if q is not None and scale is not None and zero is not None and shape is not None:
            dims = tuple(int(x) for x in shape)
            if q.dtype == np.uint8 and len(dims) == 2 and q.shape[0] == dims[0]:
                return Blocks(q, scale, zero, dims)  # type: ignore[arg-type]
        made = Blocks.of(weight())
        self._made.update({f"{name}.q": made.q, f"{name}.s": made.scale, f"{name}.z": made.zero,
                           f"{name}.shape": np.array(made.shape)})  # fmt: skip
        return made

    def rows(self, name: str, weight: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Table ``name`` as int8 rows with a scale each (an embedding looked up by token)."""
        q, scale = self._get(f"{name}.rows"), self._get(f"{name}.scale")
        if q is not None and scale is not None and q.dtype == np.int8 and len(scale) == len(q):
            return q, scale
        q, scale = quantize_rows(weight(), levels=127)
        self._made.update({f"{name}.rows": q, f"{name}.scale": scale})
        return q, scale

    def save(self) -> None:
        """Keep what this load made (with what it read back), if it made anything; then close
        the file read."""
        if not self._made:
            self.close()
            return
        kept = {}
        for key in self._kept.files if self._kept is not None else ():
            value = self._get(key)
            if value is not None:
                kept[key] = value
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".prepare-", suffix=".npz", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **{**kept, **self._made})
                os.replace(tmp, self.path)  # whole or not at all, for a process loading beside
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            kept = sorted(self.path.parent.glob("*.npz"), key=lambda f: f.stat().st_mtime)
            for old in kept[:-KEEP]:
                old.unlink(missing_ok=True)
        except OSError:
            return  # a read-only or full disk: the next load quantizes again

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None
