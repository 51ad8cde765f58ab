"""A model fine-tuned from the pretrained base, kept as what it changed: the difference of each
changed tensor from the base, quantized per block of 32 values (int8, or int4 where asked), in one
safetensors file beside a ``cmc.json``. The base comes from its own package (`cmc.base`), so
shipping a fine-tuned base costs the repository the delta, not the model: the model folder is built
once, on this machine, and cached like the base's conversion.

    write_delta(base_dir, tuned_dir, out_dir)   # what `cmc checkpoint delta` writes
    built = delta_model(out_dir)                 # base + delta, built on first use, then cached

The delta records the base it was made against (its name and GGUF as the base's ``cmc.json`` has
them, and a digest of its norm vectors' contents); building it on another base is an error, not a
silently different model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from cmc import CmcError

DELTA_FILE = "delta.safetensors"
FORMAT = 1
BLOCK = 32
KINDS = {8: "int8", 4: "int4"}


def quantize(diff: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """Symmetric ``bits``-bit integers per block of `BLOCK` values along the last axis, with a
    float16 scale per block (int4 values are packed two to a byte)."""
    top = 2 ** (bits - 1) - 1
    blocks = diff.astype(np.float32).reshape(*diff.shape[:-1], -1, BLOCK)
    scale = (np.abs(blocks).max(-1, keepdims=True) / top).astype(np.float16)
    wide = scale.astype(np.float32)
    q = np.clip(np.round(blocks / np.where(wide == 0, 1, wide)), -top, top).astype(np.int8)
    if bits == 4:
        flat = (q.reshape(-1) & 0x0F).astype(np.uint8)
        q = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return {"q": q.reshape(-1), "scale": scale.reshape(-1)}


def dequantize(q: np.ndarray, scale: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 tensor of `quantize`'s ``q`` and ``scale``."""
    if bits == 4:
        low = (q & 0x0F).astype(np.int8)
        high = (q >> 4).astype(np.int8)
        values = np.empty(q.size * 2, np.int8)
        values[0::2], values[1::2] = low, high
        q = np.where(values > 7, values - 16, values).astype(np.int8)
    blocks = q.reshape(-1, BLOCK).astype(np.float32) * scale.astype(np.float32).reshape(-1, 1)
    return blocks.reshape(shape)


def _base_record(base: Path) -> dict:
    """The base a delta applies to: its name and GGUF (as recorded) and a digest of its vectors'
    contents (the norms: a few hundred KB that differ between any two trainings of a model)."""
    from cmc.runtime.weights import read_weights

    meta = _meta(base)
    record = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    weights = read_weights(base)
    digest = hashlib.sha256()
    for name in sorted(weights):
        if len(weights.shape(name)) == 1:  # the matrices are never read (540 MB for the base)
            tensor = weights.pop(name)
            digest.update(name.encode() + np.ascontiguousarray(tensor, np.float32).tobytes())
    return {**record, "weights": digest.hexdigest()[:16]}


def _meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "cmc.json").read_text())
    except (OSError, ValueError):
        return {}


def write_delta(
    base: str | Path, tuned: str | Path, out: str | Path, low_bits: tuple[str, ...] = ()
) -> dict:
    """Write the delta of the model folder ``tuned`` from ``base`` into the folder ``out``:
    ``delta.safetensors``, ``cmc.json`` (the tuned model's, with the base recorded) and the base's
    licence and notice. Tensors named in ``low_bits`` are kept in int4, other matrices in int8,
    vectors (norms) exactly. Returns {"tensors", "values", "bytes", "max_error"}."""
    from safetensors.numpy import save_file

    from cmc.base import carry_notice
    from cmc.runtime.weights import read_weights

    base, tuned, out = Path(base), Path(tuned), Path(out)
    before, after = read_weights(base), read_weights(tuned)
    if sorted(before) != sorted(after):
        raise CmcError(f"{tuned} is not a fine-tune of {base}: their tensors differ")
    tensors: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    values, worst = 0, 0.0
    for name in sorted(after):
        old, new = before[name], after[name]
        if old.shape != new.shape:
            raise CmcError(f"{tuned} is not a fine-tune of {base}: {name} has another shape")
        diff = new.astype(np.float32) - old.astype(np.float32)
        if not np.any(diff):
            continue
        values += diff.size
        if diff.ndim == 2 and diff.shape[-1] % BLOCK == 0:
            bits = 4 if name in low_bits else 8
            packed = quantize(diff, bits)
            tensors[f"{name}.q"], tensors[f"{name}.scale"] = packed["q"], packed["scale"]
            kinds[name] = KINDS[bits]
            back = dequantize(packed["q"], packed["scale"], bits, diff.shape)
            worst = max(worst, float(np.abs(back - diff).max()))
        else:
            tensors[name] = diff
            kinds[name] = "float32"
    out.mkdir(parents=True, exist_ok=True)
    shapes = {name: list(after[name].shape) for name in kinds}
    save_file(tensors, str(out / DELTA_FILE),
              metadata={"format": str(FORMAT), "kinds": json.dumps(kinds), "shapes": json.dumps(shapes)})  # fmt: skip
    meta = {k: v for k, v in _meta(tuned).items() if k != "runtime"}
    meta["delta"] = {"format": FORMAT, "base": _base_record(base)}
    (out / "cmc.json").write_text(json.dumps(meta, indent=2) + "\n")
    carry_notice(base, out)
    size = (out / DELTA_FILE).stat().st_size
    return {"tensors": len(kinds), "values": values, "bytes": size, "max_error": worst}


def apply_delta(delta: str | Path, base: str | Path, out: str | Path) -> Path:
    """Write the model folder of base + ``delta`` into ``out``: the base's config, tokenizer,
    licence and notice, the weights with the delta added, the delta's ``cmc.json``."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cmc.runtime.weights import read_weights

    delta, base, out = Path(delta), Path(base), Path(out)
    meta = _meta(delta)
    want = (meta.get("delta") or {}).get("base", {})
    have = _base_record(base)
    if want.get("weights") != have["weights"]:
        raise CmcError(f"the delta in {delta} was made against another base "
                       f"({want.get('gguf') or want.get('weights')}); install the base it names")  # fmt: skip
    weights = dict(read_weights(base))
    try:
        with safe_open(str(delta / DELTA_FILE), framework="numpy") as f:
            info = f.metadata() or {}
            if info.get("format") != str(FORMAT):
                raise CmcError(f"{delta / DELTA_FILE}: delta format {info.get('format')} is not "
                               f"{FORMAT}: a newer cmc wrote it")  # fmt: skip
            kinds, shapes = json.loads(info["kinds"]), json.loads(info["shapes"])
            for name, kind in kinds.items():
                if name not in weights:
                    raise CmcError(f"{delta / DELTA_FILE}: {name} is not a tensor of the base")
                shape = tuple(shapes[name])
                if kind == "float32":
                    diff = f.get_tensor(name).reshape(shape)
                else:
                    bits = 8 if kind == "int8" else 4
                    diff = dequantize(f.get_tensor(f"{name}.q"), f.get_tensor(f"{name}.scale"),
                                      bits, shape)  # fmt: skip
                weights[name] = (weights[name].astype(np.float32) + diff).astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise CmcError(f"cannot read the delta in {delta}: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for path in base.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != "cmc.json":
            shutil.copyfile(path, out / path.name)
    (out / "cmc.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def is_delta_dir(path: str | Path) -> bool:
    """Whether ``path`` is a delta folder (`write_delta`), not a model folder."""
    return (Path(path) / DELTA_FILE).is_file() and not (Path(path) / "config.json").exists()


_BUILT: dict[tuple, Path] = {}  # (delta, its file's stat, base, root) → the folder built for it


def delta_model(delta: str | Path, base: str | Path | None = None, root: str | Path | None = None,
                build: bool = True) -> Path | None:  # fmt: skip
    """The model folder of ``delta`` on the installed base (`cmc.base.base_folder` when ``base`` is
    None): built on first use under ``root`` (``$XDG_CACHE_HOME/cmc/models``), then reused until
    the delta or the base changes (a new build removes the earlier ones of a delta of this name).
    Without ``build``, None where the base's conversion or this build is still to do (a minute of
    work: `cmc base` does it)."""
    from cmc.settings import cache_home

    delta = Path(delta)
    try:
        weights = (delta / DELTA_FILE).stat()
    except OSError as exc:
        raise CmcError(f"{delta} is not a delta folder: {exc.strerror}") from exc
    key = (str(delta.resolve()), weights.st_size, weights.st_mtime_ns, str(base), str(root))
    known = _BUILT.get(key)
    if known is not None and (known / "config.json").is_file():
        return known  # a request does not read the base's norms again
    if base is None:
        from cmc.base import base_folder

        base = base_folder(convert=build)
        if base is None:
            return None
    base = Path(base)
    digest = hashlib.sha256(f"{weights.st_size}:{weights.st_mtime_ns}".encode())
    digest.update((delta / "cmc.json").read_bytes())
    digest.update(_base_record(base)["weights"].encode())
    folder = Path(root or cache_home() / "models") / f"{delta.name}-{digest.hexdigest()[:12]}"
    if (folder / "config.json").is_file():
        _BUILT[key] = folder
        return folder
    if not build:
        return None
    from cmc.base import build_cached

    build_cached(folder, lambda tmp: apply_delta(delta, base, tmp),
                 lambda f: (f / "config.json").is_file(), ".build-")  # fmt: skip
    _BUILT[key] = folder
    earlier = re.compile(re.escape(delta.name) + r"-[0-9a-f]{12}")
    for old in folder.parent.iterdir():  # earlier builds of it: 540 MB each
        if old != folder and earlier.fullmatch(old.name) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder
