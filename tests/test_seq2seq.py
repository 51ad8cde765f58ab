"""The paper's encoder-decoders (CodeT5 with history) through the hook and the CLI, on a tiny
random T5 built and trained here in their input layout (`cmc.prompt.build_seq2seq_prompt`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import (
    LEARNED_DIFF_FILE,
    LEARNED_MESSAGE,
    PARSER_AFTER,
    PARSER_BEFORE,
    cmc_env,
    commit_file,
    git,
    init_repo,
    learned_diff,
)

from cmc.prompt import ENCODER_END, Seq2SeqLayout, build_seq2seq_prompt

HISTORY = ["Add a parser for configuration files"]


def t5_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tk.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A tiny T5 that learned LEARNED_MESSAGE for the learned diff, given the history."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    corpus = [LEARNED_MESSAGE, learned_diff(), PARSER_AFTER, *HISTORY] * 5
    tok = t5_tokenizer(corpus)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                   num_decoder_layers=2, num_heads=4, decoder_start_token_id=tok.pad_token_id,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg)
    full = build_seq2seq_prompt(tok, learned_diff(), HISTORY, LEARNED_MESSAGE)
    split = full.input_ids.index(ENCODER_END)
    encoder, decoder = full.input_ids[:split], [*full.input_ids[split + 1 :], tok.eos_token_id]
    start = full.message_start - split - 1
    labels = [t if i >= start else -100 for i, t in enumerate(decoder[1:], start=1)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        out = model(input_ids=torch.tensor([encoder]), decoder_input_ids=torch.tensor([decoder[:-1]]),
                    labels=torch.tensor([labels]))  # fmt: skip
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.05, f"tiny T5 did not learn its message ({out.loss.item():.3f})"
    path = tmp_path_factory.mktemp("models") / "t5"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_the_papers_layout():
    tok = t5_tokenizer(["Fix a bug", "Add tests", "parser.py diff text"] * 3)
    bos, eos, sep = tok.bos_token_id, tok.eos_token_id, tok.sep_token_id
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    history = ["Add tests", "Fix a bug"]
    p = build_seq2seq_prompt(tok, "parser.py diff text", history, "Fix")
    assert p.input_ids == [bos, *enc("parser.py diff text"), eos, ENCODER_END, bos,
                           *enc("Add tests"), sep, *enc("Fix a bug"), sep, *enc("Fix")]  # fmt: skip
    assert p.input_ids[p.message_start :] == enc("Fix") and p.history_used == 2
    # History is kept newest first while it fits beside the typed text and max_new_tokens.
    room = 1 + len(enc("Fix")) + 15 + len(enc("Fix a bug")) + 1
    tight = build_seq2seq_prompt(tok, "x", history, "Fix", Seq2SeqLayout(decoder_tokens=room))
    assert tight.history_used == 1 and enc("Add tests")[0] not in tight.input_ids[-8:-4]
    assert tight.input_ids[tight.input_ids.index(ENCODER_END) + 1 :] == [
        bos, *enc("Fix a bug"), sep, *enc("Fix")
    ]  # fmt: skip
    # The diff is cut to the encoder's 512 tokens, BOS and EOS included.
    long = build_seq2seq_prompt(tok, "parser.py diff text " * 400, [], "")
    assert long.input_ids.index(ENCODER_END) == 512


def staged(tmp_path: Path, model: Path) -> Path:
    repo = init_repo(tmp_path / "repo")
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, HISTORY[0])
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", ".")
    git(repo, "config", "cmc.model", str(model))
    git(repo, "config", "cmc.timeout", "120")
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("typed", ["", "Fix pa"])
def test_cli_completes_with_the_papers_model(tmp_path, tiny_t5, typed):
    repo = staged(tmp_path, tiny_t5)
    out = subprocess.run(["cmc", "complete", "--prefix", typed, "--json"], cwd=repo,
                         env=cmc_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["candidates"][0]["message"] == LEARNED_MESSAGE


@pytest.mark.slow
def test_hook_suggests_with_the_papers_model(tmp_path, tiny_t5):
    repo = staged(tmp_path, tiny_t5)
    subprocess.run(["cmc", "hook", "install"], cwd=repo, env=cmc_env(), check=True)
    seen = tmp_path / "seen.txt"
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\ncp "$1" "{seen}"\n')
    editor.chmod(0o755)
    done = git(repo, "commit", env={**cmc_env(), "GIT_EDITOR": str(editor)}, check=False)
    assert done.returncode == 0, done.stderr
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert git(repo, "log", "-1", "--format=%s").stdout.strip() == LEARNED_MESSAGE
