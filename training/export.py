"""Checkpoint → `save_pretrained` folder (safetensors + tokenizer) that `cmc complete` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cmc.base import carry_notice
from cmc.model import read_budget, read_model_meta, write_model_meta
from cmc.training.checkpoint import find_checkpoint


def check_runtime(folder: Path, probe: int = 48, atol: float = 1e-3) -> dict:
    """Which runtime completes with this exported folder: the numpy one when it runs the
    architecture and its logits agree with transformers' on a probe (recorded in ``cmc.json``;
    `cmc.model.load_model` honours a "transformers" verdict)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from cmc.model import lean_unsupported

    reason = lean_unsupported(folder)
    if reason is not None:
        return {"name": "transformers", "why": reason}
    from cmc.runtime.llama import NumpyLlama

    lean = NumpyLlama(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = probe_ids(folder, probe)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    exact = lean.prefill(None, ids)[1]
    diff = float(np.abs(exact - want).max())
    if diff > atol:
        return {"name": "transformers", "why": f"numpy logits differ by {diff:.2g}"}
    return {"name": "numpy", "max_logit_diff": diff, **check_int8(folder, ids, exact)}


PROBE_DIFF = """diff --git a/src/parser.py b/src/parser.py
--- a/src/parser.py
+++ b/src/parser.py
@@ -10,7 +10,9 @@ def parse_lines(text):
     rows = []
     for line in text.splitlines():
-        rows.append(line.split(","))
+        if line.startswith("#"):
+            continue
+        rows.append([cell.strip() for cell in line.split(",")])
     return rows
"""
PROBE_HISTORY = ["Add a CSV parser for the import command", "Fix the import of empty files"]


def probe_ids(folder: Path, length: int) -> list[int]:
    """The last ``length`` tokens of a real prompt (a small diff, two earlier messages and a typed
    start) as cmc builds it for this model: a model's precision is judged where it will run, on
    text (a sequence of arbitrary tokens gives flat logits whose top token is a coin toss)."""
    from cmc.model import load_tokenizer
    from cmc.prompt import build_prompt

    tokenizer, budget = load_tokenizer(str(folder))
    prompt = build_prompt(tokenizer, PROBE_DIFF, PROBE_HISTORY, "Skip comment", finished=False,
                          budget=budget)  # fmt: skip
    return prompt.input_ids[-length:]


def check_int8(folder: Path, ids: list[int], exact, min_corr: float = 0.995) -> dict:
    """The precision `load_model` uses: int8 weight products (`cmc.runtime.linear`) where they keep
    this model's answer on the probe (the same most likely next token, logits correlated
    ≥ ``min_corr`` with float32's; the bundled model: 0.9998), else int8 weights in blocks with
    float32 activations (``int8w``: the pretrained base, whose activations have outlier channels,
    0.9997 where int8 gives 0.94), else float32."""
    import numpy as np

    from cmc.runtime.linear import matmul_engine
    from cmc.runtime.llama import NumpyLlama

    if matmul_engine() != "onnxruntime":  # e.g. a GPU machine: the default (int8) stands
        return {"int8": "not checked: onnxruntime is not installed where this was exported"}
    out: dict = {"precision": "float32"}
    for precision in ("int8", "int8w"):
        got = NumpyLlama(folder, precision).prefill(None, ids)[1]
        corr = float(np.corrcoef(exact, got)[0, 1])
        same_top = bool(exact.argmax() == got.argmax())
        out[precision] = {"logit_corr": round(corr, 6), "same_top_token": same_top}
        if same_top and corr >= min_corr:
            out["precision"] = precision
            break
    return out


def export_checkpoint(
    path: str | Path, out: str | Path, dtype: str = "float32", max_shard_size: str = "15MB"
) -> Path:
    """Write the model weights of a checkpoint as a transformers folder at ``out``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder = find_checkpoint(path)
    info = json.loads((folder / "trainer.json").read_text())
    init = Path(info["model_init"])
    if not init.is_absolute() and not init.exists():
        init = folder.parent.parent / "model_init"
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    lora = int(info.get("config", {}).get("lora_rank") or 0)
    if lora:  # the adapters were trained: load them where they were, then fold them in
        from cmc.training.train import with_lora

        model = with_lora(model, lora)
    state = {"train": {"model": model.state_dict()}}
    dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state["train"]["model"])
    if lora:
        model = model.merge_and_unload()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(getattr(torch, dtype)).save_pretrained(tmp, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(init).save_pretrained(tmp)
    drop = ("budget", "runtime", "precision")
    meta = {k: v for k, v in read_model_meta(init).items() if k not in drop}
    meta.update(step=info.get("step"), consumed_samples=info.get("consumed"))
    meta["runtime"] = check_runtime(tmp)
    precision = meta["runtime"].pop("precision", None)
    if precision is not None:
        meta["precision"] = precision
    write_model_meta(tmp, read_budget(init), **meta)
    carry_notice(init, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
