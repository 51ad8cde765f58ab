"""Loading a model: any transformers `save_pretrained` folder or hub id (which one: `cmc.settings`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmc import CmcError, one_line
from cmc.prompt import DEFAULT_BUDGET, Budget
from cmc.settings import NO_MODEL_HELP, is_model_dir


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    budget: Budget


_LOADED: dict[str, LoadedModel] = {}


def _cpu_dtype():
    """fp32 unless CMC_DTYPE says otherwise: measured here (AMX CPU), bf16 prefills a 600-token
    prompt 3x faster but decodes each token slower (6.3 vs 4.6 ms), and decoding dominates."""
    import torch

    return getattr(torch, os.environ.get("CMC_DTYPE", "float32"), torch.float32)


MODEL_META = "cmc.json"  # beside a model's weights: its prompt budget and training provenance


def read_model_meta(path: str | os.PathLike) -> dict:
    meta = Path(path) / MODEL_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def write_model_meta(path: str | os.PathLike, budget: Budget, **extra: Any) -> None:
    """The one writer of a model folder's ``cmc.json``."""
    from dataclasses import asdict

    data = {**extra, "budget": asdict(budget)}
    (Path(path) / MODEL_META).write_text(json.dumps(data, indent=2) + "\n")


def inference_threads() -> int:
    """Threads for completion: 1 unless CMC_THREADS says otherwise. A small model's decode step
    gains little from a second thread, and when the cores are busy (a build, tests, an IDE) torch's
    threads spin and wait: measured here, 2 threads were 7x slower than 1 under load."""
    try:
        return max(1, int(os.environ.get("CMC_THREADS", "1")))
    except ValueError:
        return 1


def read_budget(path: str | os.PathLike) -> Budget:
    """The prompt budget a model was trained with (its ``cmc.json``), or the defaults."""
    data = read_model_meta(path).get("budget", {})
    return Budget(**{k: v for k, v in data.items() if k in Budget.__dataclass_fields__})


def check_model_spec(spec: str) -> Path:
    """Fail early, in one line, on a model folder that is missing or is not a model."""
    if not spec:
        raise CmcError(NO_MODEL_HELP)
    local = Path(spec).expanduser()
    if local.exists() and not is_model_dir(local):
        raise CmcError(f"model folder {spec} has no config.json (is it a save_pretrained folder?)")
    if not local.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise CmcError(f"model {spec} not found")
    return local


def load_tokenizer(spec: str) -> tuple[Any, Budget]:
    """A model's tokenizer and prompt budget, without its weights (for `cmc prompt`)."""
    local = check_model_spec(spec)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else spec,
                                                  trust_remote_code=False)  # fmt: skip
    except Exception as exc:
        raise CmcError(f"cannot load the tokenizer of {spec}: {one_line(exc)}") from exc
    return tokenizer, read_budget(local) if local.exists() else DEFAULT_BUDGET


def load_model(spec: str) -> LoadedModel:
    """Load a causal LM and its tokenizer (cached for the life of the process)."""
    if spec in _LOADED:
        return _LOADED[spec]
    local = check_model_spec(spec)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(inference_threads())
    source = str(local) if local.exists() else spec
    try:
        # Never run a model folder's own Python (no interactive "trust this code?" either).
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        if config.is_encoder_decoder:
            # The paper's released checkpoints are T5s; their prompt puts history in the decoder,
            # which the shared prompt format does not build yet.
            raise CmcError(f"model {spec} is an encoder-decoder (seq2seq); cmc needs a causal LM")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=_cpu_dtype(),
            trust_remote_code=False,
            use_safetensors=local.exists() or None,
        )
    except CmcError:
        raise
    except Exception as exc:  # corrupt safetensors, pickle-only weights, a bad config: one line
        raise CmcError(f"cannot load model {spec}: {one_line(exc)}") from exc
    model.eval()
    loaded = LoadedModel(
        spec, model, tokenizer, read_budget(source) if local.exists() else DEFAULT_BUDGET
    )
    _LOADED[spec] = loaded
    return loaded
