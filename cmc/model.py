"""Which model cmc uses, and loading it (any transformers `save_pretrained` folder or hub id).

Resolution order: ``--model`` flag > ``git config cmc.model`` > this repository's personalized model
(``$GIT_DIR/cmc/model``, written by ``cmc train``) > the default model bundled in the package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmc import CmcError
from cmc.prompt import DEFAULT_BUDGET, Budget

BUNDLED_MODEL = Path(__file__).parent / "default_model"
NO_MODEL_HELP = (
    "no model available: pass --model PATH, or run `git config cmc.model PATH` "
    "(a transformers save_pretrained folder or hub id), or `cmc train` in this repository"
)


def personalized_model_dir(git_dir: str | os.PathLike) -> Path:
    return Path(git_dir) / "cmc" / "model"


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def resolve_model(flag: str | None, configured: str | None, git_dir: str | None) -> str:
    """The model spec to load, by the resolution order in the module docstring."""
    for spec in (flag, configured):
        if spec:
            return spec
    if git_dir and is_model_dir(personalized_model_dir(git_dir)):
        return str(personalized_model_dir(git_dir))
    if is_model_dir(BUNDLED_MODEL):
        return str(BUNDLED_MODEL)
    raise CmcError(NO_MODEL_HELP)


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    budget: Budget
    is_seq2seq: bool = False


_LOADED: dict[str, LoadedModel] = {}


def _cpu_dtype():
    """fp32 unless CMC_DTYPE says otherwise: measured here (AMX CPU), bf16 prefills a 600-token
    prompt 3x faster but decodes each token slower (6.3 vs 4.6 ms), and decoding dominates."""
    import torch

    return getattr(torch, os.environ.get("CMC_DTYPE", "float32"), torch.float32)


def read_budget(path: str) -> Budget:
    """Prompt budgets saved beside a model by cmc (``cmc.json``), or the defaults."""
    meta = Path(path) / "cmc.json"
    if meta.is_file():
        data = json.loads(meta.read_text()).get("budget", {})
        return Budget(**{k: v for k, v in data.items() if k in Budget.__dataclass_fields__})
    return DEFAULT_BUDGET


def check_model_spec(spec: str) -> Path:
    """Fail early, in one line, on a model folder that is missing or is not a model."""
    local = Path(spec).expanduser()
    if local.exists() and not is_model_dir(local):
        raise CmcError(f"model folder {spec} has no config.json (is it a save_pretrained folder?)")
    if not local.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise CmcError(f"model {spec} not found")
    return local


def load_model(spec: str) -> LoadedModel:
    """Load a causal LM and its tokenizer (cached for the life of the process)."""
    if spec in _LOADED:
        return _LOADED[spec]
    local = Path(spec).expanduser()
    if local.exists() and not is_model_dir(local):
        raise CmcError(f"model folder {spec} has no config.json (is it a save_pretrained folder?)")
    if not local.exists() and (
        spec.startswith((".", "/", "~")) or (os.sep in spec and spec.count("/") > 1)
    ):
        raise CmcError(f"model {spec} not found")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    source = str(local) if local.exists() else spec
    try:
        config = AutoConfig.from_pretrained(source)
        if config.is_encoder_decoder:
            # The paper's released checkpoints are T5s; their prompt puts history in the decoder,
            # which the shared prompt format does not build yet.
            raise CmcError(f"model {spec} is an encoder-decoder (seq2seq); cmc needs a causal LM")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_cpu_dtype())
    except (OSError, ValueError) as exc:
        raise CmcError(f"cannot load model {spec}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    loaded = LoadedModel(
        spec, model, tokenizer, read_budget(source) if local.exists() else DEFAULT_BUDGET
    )
    _LOADED[spec] = loaded
    return loaded
