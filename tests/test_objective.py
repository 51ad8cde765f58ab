"""The training objective: message-token loss, plus a weighted loss on the context (diff, history)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import cmc_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_and_data(token_data):
    from transformers import AutoTokenizer

    from cmc.training.modeling import new_model
    from cmc.training.tokens import TokenDataset

    data_dir, tok_dir = token_data
    model = new_model(AutoTokenizer.from_pretrained(tok_dir), "tiny", seed=3).eval()
    return model, TokenDataset(data_dir, "train")


def oracle_sums(model, data, examples, weight: float) -> tuple[float, float]:
    """Per example, a whole forward pass and the cross-entropy of every next token, split by hand."""
    message, context = 0.0, 0.0
    for i in examples:
        ids, start = data[i]
        ids = torch.from_numpy(ids)[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        message += float(ce[start - 1 :].sum())  # positions that predict message tokens
        context += weight * float(ce[: start - 1].sum())
    return message, context


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_the_loss_sums_match_a_whole_forward_pass_split_by_hand(model_and_data, weight):
    from cmc.training.train import forward_loss_sums, make_batch

    model, data = model_and_data
    examples = [0, 5, 11, 17]  # different lengths: padding must score nothing
    batch = make_batch(data, examples, 0, torch.device("cpu"), weight)
    with torch.no_grad():
        message, context = forward_loss_sums(model, batch, False, torch.device("cpu"))
    want_message, want_context = oracle_sums(model, data, examples, weight)
    assert float(message) == pytest.approx(want_message, rel=1e-5)
    assert float(context) == pytest.approx(want_context, rel=1e-5, abs=1e-6)
    assert int(batch.message.sum()) == sum(len(data[i][0]) - data[i][1] for i in examples)
    if weight == 0:  # only the message positions go through the head
        assert batch.positions.numel() < batch.ids.shape[1] - 1
    else:
        assert want_context > 0


@pytest.mark.slow
def test_context_weight_changes_training_but_not_what_the_loss_reports(token_data, tmp_path):
    """Same seed, same first batch: step 1 reports the same message loss; the updates differ."""
    data, tok = token_data
    losses = {}
    for weight in ("0", "0.5"):
        out = tmp_path / f"w{weight}"
        cmd = [sys.executable, "-m", "cmc.training.train", "--data", str(data), "--out", str(out),
               "--config", "tiny", "--tokenizer", str(tok), "--max-steps", "3",
               "--global-batch-size", "6", "--micro-batch-size", "3", "--warmup-steps", "1",
               "--no-progress", "--seed", "7", "--context-loss-weight", weight]  # fmt: skip
        env = {**cmc_env(), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[weight] = [x["loss"] for x in lines]
        saved = json.loads(next((out / "checkpoints").glob("step-*/trainer.json")).read_text())
        assert saved["config"]["context_loss_weight"] == float(weight)
    assert losses["0"][0] == pytest.approx(losses["0.5"][0], rel=1e-6)
    assert losses["0"][1:] != pytest.approx(losses["0.5"][1:], rel=1e-4)
