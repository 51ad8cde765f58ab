"""cmc's own beam search is pinned to transformers' `generate` (same logits processors, beam 5,
length penalty 1, heuristic stopping): same hypotheses, same scores, on the transformers runtime and
on the numpy one. bench/bench_decode.py measures why it exists (it reuses the prompt's KV cache and
runs no per-step generation machinery)."""

from __future__ import annotations

import pytest
import torch
from conftest import LEARNED_MESSAGE, learned_diff
from generate_adapter import HFProcessor
from transformers import LogitsProcessorList

from cmc.decoding.beam import (
    MessageNoRepeatNGram,
    PromptCache,
    TokenTable,
    TypedTailConstraint,
    beam_search,
)
from cmc.model import load_model
from cmc.prompt import build_prompt, eos_token_id, split_typed


def hf_beams(model, ids, processors, beams, max_new, eos):
    processors = [HFProcessor(p) for p in processors]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), num_beams=beams, num_return_sequences=beams, max_new_tokens=max_new,
            logits_processor=LogitsProcessorList(processors), eos_token_id=eos, pad_token_id=eos,
            do_sample=False, length_penalty=1.0, early_stopping=False, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
    found = []
    for seq, score in zip(out.sequences, out.sequences_scores):
        new = seq[len(ids) :].tolist()
        found.append((new[: new.index(eos)] if eos in new else new, float(score)))
    return found


@pytest.mark.parametrize("runtime", ["numpy", "transformers"])
@pytest.mark.parametrize("typed", ["", "F", "Fix pa", "Fix parser crash on", "Add sup"])
@pytest.mark.parametrize("diff", ["learned", "other"])
def test_own_beam_search_equals_generate(tiny_model, typed, diff, runtime, monkeypatch):
    monkeypatch.setenv("CMC_PRECISION", "float32")  # equal to transformers; int8 is only close
    lm = load_model(str(tiny_model), runtime)
    hf = load_model(str(tiny_model), "transformers").model.hf
    text = learned_diff() if diff == "learned" else "docs/x.md\n+ a line about something else"
    head, tail = split_typed(typed)
    prompt = build_prompt(lm.tokenizer, text, ["Add tests for the tokenizer"], head, finished=False)
    ids, eos = prompt.input_ids, eos_token_id(lm.tokenizer)
    table = TokenTable.of(lm.tokenizer)

    def processors():
        return [
            TypedTailConstraint(table, tail, len(ids)),
            MessageNoRepeatNGram(3, prompt.message_start),
        ]

    max_new = 12 + len(tail.encode())
    ours = beam_search(
        lm.model, ids, prompt.message_start, processors(), 5, max_new, eos, PromptCache()
    )
    theirs = hf_beams(hf, ids, processors(), 5, max_new, eos)
    assert [t for t, _ in ours[:5]] == [t for t, _ in theirs]
    assert [s for _, s in ours[:5]] == pytest.approx([s for _, s in theirs], abs=1e-4)
    if diff == "learned" and LEARNED_MESSAGE.startswith(typed):
        assert eos not in ours[0][0] and lm.tokenizer.decode(ours[0][0])  # ended on its own


def test_whole_characters_never_lets_a_stray_byte_through(tiny_model):
    """Byte-level BPE can write half a character; decoded, the user saw a replacement character.
    Only tokens that keep the message valid UTF-8 may come next, and a character opened must be
    finished before anything else (the end included)."""
    import numpy as np

    from cmc.decoding.beam import TokenTable, WholeCharacters, _utf8_pending

    lm = load_model(str(tiny_model))
    table = TokenTable.of(lm.tokenizer)
    ids = {b: i for i, b in enumerate(table.bytes) if b is not None and len(b) == 1}
    quote = "\u2019".encode()  # three bytes: e2 80 99
    lead, cont = ids[quote[:1]], ids[quote[1:2]]
    assert _utf8_pending(b"ago" + quote[:1]) == 2 and _utf8_pending(b"ago" + quote) == 0
    scores = np.zeros((2, table.vocab_size), np.float32)
    start = 3
    out = WholeCharacters(table, start)([[7, 7, 7, ids[b"a"]], [7, 7, 7, lead]], scores)
    assert np.isneginf(out[0, cont]) and not np.isneginf(out[0, ids[b"b"]])  # no stray byte
    assert not np.isneginf(out[1, cont])  # finishing the open character is allowed
    assert np.isneginf(out[1, ids[b"b"]]) and np.isneginf(out[1, eos_token_id(lm.tokenizer)])


def test_a_huge_typed_word_ends_in_whole_characters(tiny_model):
    """The tiny model, asked to finish a 1,500-letter word, wrote a stray byte after it."""
    from cmc.complete import Context, complete_context
    from cmc.decoding import DecodeSettings

    lm = load_model(str(tiny_model))
    typed = "Fix " + "y" * 1500
    got = complete_context(lm, Context(learned_diff()), typed, DecodeSettings(num_candidates=3))
    assert got.candidates and all("\ufffd" not in c.message for c in got.candidates)
