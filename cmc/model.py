"""Loading a model: any transformers `save_pretrained` folder or hub id (which one: `cmc.settings`).

A local Llama folder with a `tokenizer.json` (every model cmc trains, the bundled one included) runs
on `cmc.runtime.llama.NumpyLlama` and `cmc.runtime.tokenizer.LeanTokenizer`: no torch, no
transformers, ~0.3 s to load. Anything else loads through transformers (`cmc.runtime.hf`), as does
everything when ``CMC_RUNTIME=transformers``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmc import CmcError, one_line
from cmc.prompt import DEFAULT_BUDGET, Budget
from cmc.settings import (
    NO_MODEL_HELP,
    RUNTIMES,
    inference_threads,
    is_model_dir,
    precision_env,
    runtime_env,
    torch_dtype_name,
)


@dataclass
class LoadedModel:
    name: str
    model: Any  # a runtime: NumpyLlama or TorchCausalLM (prefill / beams / step)
    tokenizer: Any
    budget: Budget
    chooser: tuple[float, ...] | None = None  # its own chooser weights (`read_chooser`)


_LOADED: dict[str, LoadedModel] = {}


def _cpu_dtype():
    """fp32 unless CMC_DTYPE says otherwise: measured here (AMX CPU), bf16 prefills a 600-token
    prompt 3x faster but decodes each token slower (6.3 vs 4.6 ms), and decoding dominates."""
    import torch

    return getattr(torch, torch_dtype_name(), torch.float32)


MODEL_META = "cmc.json"  # beside a model's weights: its prompt budget and training provenance


def read_model_meta(path: str | os.PathLike) -> dict:
    meta = Path(path) / MODEL_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def write_model_meta(path: str | os.PathLike, budget: Budget, **extra: Any) -> None:
    """The one writer of a model folder's ``cmc.json``."""
    from dataclasses import asdict

    data = {**extra, "budget": asdict(budget)}
    (Path(path) / MODEL_META).write_text(json.dumps(data, indent=2) + "\n")


def update_model_meta(path: str | os.PathLike, **changes: Any) -> None:
    """Change some keys of a model folder's ``cmc.json``, keeping the others and its budget."""
    meta = {k: v for k, v in read_model_meta(path).items() if k != "budget"}
    write_model_meta(path, read_budget(path), **{**meta, **changes})


def read_budget(path: str | os.PathLike) -> Budget:
    """The prompt budget a model was trained with (its ``cmc.json``), or the defaults."""
    data = read_model_meta(path).get("budget", {})
    return Budget(**{k: v for k, v in data.items() if k in Budget.__dataclass_fields__})


def read_chooser(path: str | os.PathLike) -> tuple[float, ...] | None:
    """The chooser's weights fitted to this model's scores (``chooser`` in its ``cmc.json``;
    `cmc.recalled.WEIGHTS` when absent): a model's log-probabilities are on its own scale, so a
    pretrained base is weighed against the memory by weights fitted to it."""
    from cmc.recalled import WEIGHTS

    found = read_model_meta(path).get("chooser")
    if found is None:
        return None
    if (not isinstance(found, list) or len(found) != len(WEIGHTS)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in found)):  # fmt: skip
        raise CmcError(f"model {path}: cmc.json's chooser must be {len(WEIGHTS)} numbers")
    return tuple(float(w) for w in found)


def check_model_spec(spec: str) -> Path:
    """Fail early, in one line, on a model folder that is missing or is not a model. A delta
    folder (`cmc.delta`) stands for the model built from it, built here on first use."""
    if not spec:
        raise CmcError(NO_MODEL_HELP)
    local = Path(spec).expanduser()
    from cmc.delta import delta_model, is_delta_dir

    if is_delta_dir(local):
        return delta_model(local)
    if local.exists() and not is_model_dir(local):
        raise CmcError(f"model folder {spec} has no config.json (is it a save_pretrained folder?)")
    if not local.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise CmcError(f"model {spec} not found")
    return local


def runtime_choice(runtime: str | None = None) -> str:
    """``runtime`` (a caller's choice), else ``CMC_RUNTIME``, else auto."""
    choice = (runtime or "").strip().lower() or runtime_env()
    if choice not in RUNTIMES:
        raise CmcError(f"runtime {choice!r}: use one of {', '.join(RUNTIMES)}")
    return choice


def lean_unsupported(local: Path) -> str | None:
    """Why the folder cannot run without transformers (None: it can)."""
    from cmc.runtime.llama import unsupported

    if not local.is_dir():
        return "not a local folder"
    if not (local / "tokenizer.json").is_file():
        return "no tokenizer.json"
    verdict = read_model_meta(local).get("runtime")
    if isinstance(verdict, dict) and verdict.get("name") == "transformers":
        return f"export check: {verdict.get('why', 'transformers only')}"
    try:
        config = json.loads((local / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"config.json: {one_line(exc)}"
    return unsupported(config)


def runtime_for(spec: str) -> str:
    """Which runtime `load_model` would use for ``spec``, and why (for `cmc hook status`)."""
    choice = runtime_choice()
    local = Path(spec).expanduser()
    reason = lean_unsupported(local) if choice != "transformers" else "CMC_RUNTIME=transformers"
    if reason is None:
        from cmc.runtime.linear import matmul_engine

        engine = matmul_engine()
        precision = precision_for(local) if engine == "onnxruntime" else "float32"
        return f"numpy (cmc's Llama runtime: no torch; weight products on {engine}, {precision})"
    return f"transformers ({reason})"


DEFAULT_PRECISION = "int8"


def precision_for(local: Path) -> str:
    """The precision of a model's weight products: ``CMC_PRECISION``, else the one its ``cmc.json``
    records (`cmc checkpoint export` writes float32 when int8 fails its check), else int8:
    measured on 300 held-out commits with the bundled model, int8 scores as float32 does
    (README, "Precision") and completes a beam-5 message ~1.5x sooner."""
    from cmc.settings import PRECISIONS

    chosen = precision_env()
    recorded = read_model_meta(local).get("precision")
    return chosen or (recorded if recorded in PRECISIONS else DEFAULT_PRECISION)


def _load_lean(spec: str, local: Path) -> LoadedModel:
    from cmc.runtime.llama import NumpyLlama
    from cmc.runtime.tokenizer import LeanTokenizer

    precision = precision_for(local)
    try:
        tokenizer = LeanTokenizer(local)
        model = NumpyLlama(local, precision)
    except Exception as exc:  # corrupt safetensors, a bad config: one line
        raise CmcError(f"cannot load model {spec}: {one_line(exc)}") from exc
    return LoadedModel(spec, model, tokenizer, read_budget(local), read_chooser(local))


def load_tokenizer(spec: str) -> tuple[Any, Budget]:
    """A model's tokenizer and prompt budget, without its weights (for `cmc prompt`)."""
    local = check_model_spec(spec)
    if runtime_choice() != "transformers" and (local / "tokenizer.json").is_file():
        from cmc.runtime.tokenizer import LeanTokenizer

        try:
            return LeanTokenizer(local), read_budget(local)
        except Exception as exc:
            raise CmcError(f"cannot load the tokenizer of {spec}: {one_line(exc)}") from exc
    _need_transformers(spec, "its tokenizer needs transformers")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else spec,
                                                  trust_remote_code=False)  # fmt: skip
    except Exception as exc:
        raise CmcError(f"cannot load the tokenizer of {spec}: {one_line(exc)}") from exc
    return tokenizer, read_budget(local) if local.exists() else DEFAULT_BUDGET


def load_model(spec: str, runtime: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer (cached for the life of the process) on the numpy
    runtime when it can run it, else (or with ``runtime="transformers"``) through transformers."""
    choice = runtime_choice(runtime)
    key = f"{choice}:{precision_env()}:{spec}"
    if key in _LOADED:
        return _LOADED[key]
    local = check_model_spec(spec)
    reason = None
    if choice != "transformers":
        reason = lean_unsupported(local)
        if reason is None:
            _LOADED[key] = _load_lean(spec, local)
            return _LOADED[key]
        if choice == "numpy":
            raise CmcError(f"model {spec} cannot run on the numpy runtime: {reason}")
    _LOADED[key] = _load_transformers(spec, local, reason)
    return _LOADED[key]


TRANSFORMERS_EXTRA = "pip install 'cmc[transformers]'"


def _need_transformers(spec: str, why: str | None) -> None:
    """A one-line error when the fallback runtime is not installed (it is an extra)."""
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        because = f" ({why})" if why else ""
        raise CmcError(f"model {spec} needs {' and '.join(missing)}{because}: {TRANSFORMERS_EXTRA}")


def _load_transformers(spec: str, local: Path, why: str | None = None) -> LoadedModel:
    _need_transformers(spec, why and f"the numpy runtime does not run it: {why}")
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(inference_threads())
    source = str(local) if local.exists() else spec
    try:
        # Never run a model folder's own Python (no interactive "trust this code?" either).
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        # The paper's released checkpoints are encoder-decoders (CodeT5): diff in the encoder,
        # history and message in the decoder (`cmc.prompt.build_seq2seq_prompt`).
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(
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
    from cmc.runtime.hf import TorchCausalLM, TorchSeq2Seq

    budget = read_budget(source) if local.exists() else DEFAULT_BUDGET
    chooser = read_chooser(local) if local.exists() else None
    if config.is_encoder_decoder:
        if tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
            raise CmcError(f"model {spec}: its tokenizer lacks the BOS/EOS tokens of the layout")
        return LoadedModel(spec, TorchSeq2Seq(model, tokenizer.eos_token_id), tokenizer, budget,
                           chooser)  # fmt: skip
    return LoadedModel(spec, TorchCausalLM(model), tokenizer, budget, chooser)
