"""Reading a `save_pretrained` folder's safetensors as float32 numpy arrays, bf16 included.

`safetensors.numpy` cannot return bfloat16 (numpy has no such type), and the models cmc trains are
saved in bf16; a bf16 value is the top half of a float32, so widening it is a shift. The file format
is a little-endian u64 header length, a JSON header (dtype, shape, byte offsets per tensor), then the
raw bytes: read here tensor by tensor as the model asks for them, with no torch and no memory map.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class WeightsError(ValueError):
    """Weights this reader cannot use (not safetensors, an unknown dtype, a truncated file)."""


class Weights(Mapping):
    """A model's tensors by name, each read from its file when asked for (``w[name]``,
    ``w.pop(name)``) as a float32 array of its own: nothing stays mapped, so loading a model
    holds one tensor's bytes at a time beside what it keeps, not the whole file (the base:
    540 MB)."""

    def __init__(self, where: dict[str, tuple[Path, str, list[int], int, int]]):
        self._where = where  # name -> (file, dtype, shape, start, end)
        self._read: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._read:
            self._read[name] = _read_tensor(name, *self._where[name])
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the file's index (nothing read)."""
        return tuple(self._where[name][2])

    def pop(self, name: str, *default):
        """The tensor, forgotten here: the caller's alone."""
        if name not in self._where:
            if default:
                return default[0]
            raise KeyError(name)
        arr = self[name]
        del self._where[name], self._read[name]
        return arr


def _read_tensor(name: str, path: Path, dtype: str, shape: list[int], start: int, end: int):
    with path.open("rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    if len(raw) != end - start:
        raise WeightsError(f"{path.name} is truncated (tensor {name})")
    arr = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":  # the top half of a float32: widened by a shift
        wide = arr.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    return np.array(arr, dtype=np.float32)  # its own, writable memory


def _index_file(path: Path, names: set[str] | None = None) -> dict:
    """Where each tensor of one safetensors file lies (its header, checked)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path.name} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise WeightsError(f"{path.name} is not a safetensors file (bad header length)")
            text = f.read(length)
    except OSError as exc:
        raise WeightsError(f"cannot read {path.name}: {exc}") from exc
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise WeightsError(f"{path.name} has a corrupt header: {exc}") from exc
    base = 8 + length
    where = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        if info.get("dtype") not in _DTYPES:
            raise WeightsError(f"{path.name}: tensor {name} has dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        if base + end > size:
            raise WeightsError(f"{path.name} is truncated (tensor {name})")
        where[name] = (path, info["dtype"], info["shape"], base + start, base + end)
    return where


def read_weights(folder: str | Path) -> Weights:
    """All tensors of a model folder (one file, or shards listed by the index) as float32, each
    read when first used."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return Weights(_index_file(folder / WEIGHTS))
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())["weight_map"]
        where: dict = {}
        for shard in sorted(set(index.values())):
            where.update(_index_file(folder / shard, {k for k, v in index.items() if v == shard}))
        return Weights(where)
    raise WeightsError(f"no {WEIGHTS} in {folder}")
