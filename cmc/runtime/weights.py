"""Reading a `save_pretrained` folder's safetensors as float32 numpy arrays, bf16 included.

`safetensors.numpy` cannot return bfloat16 (numpy has no such type), and the models cmc trains are
saved in bf16; a bf16 value is the top half of a float32, so widening it is a shift. The file format
is a little-endian u64 header length, a JSON header (dtype, shape, byte offsets per tensor), then the
raw bytes: read here with one `numpy.memmap` and no torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class WeightsError(ValueError):
    """Weights this reader cannot use (not safetensors, an unknown dtype, a truncated file)."""


def _read_file(path: Path, names: set[str] | None = None) -> dict[str, np.ndarray]:
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path.name}: {exc}") from exc
    if raw.size < 8:
        raise WeightsError(f"{path.name} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", bytes(raw[:8]))
    if length > raw.size - 8:
        raise WeightsError(f"{path.name} is not a safetensors file (bad header length)")
    try:
        header = json.loads(bytes(raw[8 : 8 + length]))
    except ValueError as exc:
        raise WeightsError(f"{path.name} has a corrupt header: {exc}") from exc
    base = 8 + length
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise WeightsError(f"{path.name}: tensor {name} has dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        if base + end > raw.size:
            raise WeightsError(f"{path.name} is truncated (tensor {name})")
        arr = raw[base + start : base + end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            wide = arr.astype(np.uint32)
            wide <<= 16
            arr = wide.view(np.float32)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def read_weights(folder: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a model folder (one file, or shards listed by the index) as float32."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return _read_file(folder / WEIGHTS)
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())["weight_map"]
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(index.values())):
            out.update(_read_file(folder / shard, {k for k, v in index.items() if v == shard}))
        return out
    raise WeightsError(f"no {WEIGHTS} in {folder}")
