"""kNN-LM over the repository memory (`cmc.knn`): the alike commits' next tokens mixed into the
model's, on exact arithmetic and end to end on a real memory and a real tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_memory import area_repo, build, staged_like

from cmc import knn, recalled
from cmc import memory as mem
from cmc.complete import Context, complete_context
from cmc.decoding import DecodeSettings
from cmc.model import load_model


@pytest.fixture(scope="module")
def table(tiny_model: Path):
    from cmc.decoding.beam import TokenTable

    tokenizer = load_model(str(tiny_model)).tokenizer
    return TokenTable.of(tokenizer), tokenizer


def uniform(rows: int, vocab: int) -> np.ndarray:
    return np.full((rows, vocab), np.log(1.0 / vocab), dtype=np.float32)


def test_the_mix_follows_the_neighbours_where_they_match_and_nothing_else(table):
    table, tokenizer = table
    vocab, u, eos = table.vocab_size, 1.0 / table.vocab_size, 0

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    a, b = enc("cache: evict"), enc("cache: drop")
    proc = knn.NeighbourTokens(table, [(a, 0.75), (b, 0.25)], 3, eos, whole=0.5, tail=0.2)
    prompt = [eos, eos, eos]  # the message starts at 3
    split = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)

    def mixed(*messages: list[int]) -> np.ndarray:
        seqs = [[*prompt, *m] for m in messages]
        out = np.exp(proc(seqs, uniform(len(seqs), vocab)).astype(np.float64))
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)  # still a distribution
        return out

    start, before_split, whole, nothing = mixed([], a[:split], a, enc("zzz"))
    assert start[a[0]] == pytest.approx(u / 2 + 0.5, abs=1e-6)  # both begin the same way
    assert before_split[a[split]] == pytest.approx(u / 2 + 0.5 * 0.75, abs=1e-6)
    assert before_split[b[split]] == pytest.approx(u / 2 + 0.5 * 0.25, abs=1e-6)
    assert whole[eos] == pytest.approx(u / 2 + 0.5, abs=1e-6)  # the message may end there
    assert np.allclose(nothing, u, atol=1e-9)  # nothing matches: the model's own
    # Decoded with other token boundaries (one byte a token): still matched, as text.
    bytewise = [table.longest_prefix(bytes([c])) for c in b"cache: ev"]
    (mid,) = mixed(bytewise)
    voted = int(np.argmax(mid))
    assert mid[voted] == pytest.approx(u / 2 + 0.5, abs=1e-6)
    assert b"ict".startswith(table.bytes[voted])
    # Not the message's start, but its last tokens are a neighbour's: the smaller tail weight.
    (tail,) = mixed([*enc("zzz"), *a[split : split + 2]])
    assert tail[a[split + 2]] == pytest.approx(0.8 * u + 0.2, abs=1e-6)


def test_neighbours_do_not_vote_for_their_numbers(table):
    """An earlier release's version is not this change's: digits come from the model (and the
    diff), never from a neighbour's message."""
    table, tokenizer = table
    ids = tokenizer.encode("release v1.36.1", add_special_tokens=False)
    at = len(tokenizer.encode("release v", add_special_tokens=False))
    assert any(b in table.bytes[ids[at]] for b in b"0123456789")
    proc = knn.NeighbourTokens(table, [(ids, 1.0)], 0, 0, 0.5, 0.2)
    scores = uniform(2, table.vocab_size)
    out = proc([ids[:at], ids[: at - 1]], scores.copy())
    assert np.array_equal(out[0], scores[0])  # a number next: no vote
    assert not np.array_equal(out[1], scores[1])  # the word before it: voted


def test_no_neighbour_with_weight_votes(table):
    table, tokenizer = table
    ids = tokenizer.encode("cache: evict", add_special_tokens=False)
    proc = knn.NeighbourTokens(table, [(ids, 0.0)], 0, 0, 0.5, 0.2)
    scores = uniform(1, table.vocab_size)
    assert np.array_equal(proc([[]], scores.copy()), scores)


def test_the_model_writes_the_alike_commits_message(tmp_path: Path, tiny_model: Path, monkeypatch):
    """A tiny model that knows none of the repository's words, with the memory's votes weighing
    all: it writes the most alike earlier commit's subject; without them it does not."""
    b, _ = area_repo(tmp_path / "repo")
    build(b.path)
    memory = mem.load_cached(b.path / ".git")
    recall = mem.recall(memory, mem.diff_features(staged_like("cache")), None)
    nearest = recall.nearest(1)[0][0]
    assert nearest.startswith("cache: evict entries in round ")
    lm = load_model(str(tiny_model))
    name, text = staged_like("cache")[0].new_path, staged_like("cache")[0].diff
    settings = DecodeSettings(num_beams=3, max_new_tokens=40, num_candidates=3)
    monkeypatch.setattr(recalled, "OFFERED", frozenset())  # the model's candidates only
    monkeypatch.setattr(knn, "ON", False)
    plain = complete_context(lm, Context(f"{name}\n{text}"), "", settings).candidates
    assert not any(c.message.startswith("cache: evict") for c in plain)
    monkeypatch.setattr(knn, "ON", True)
    monkeypatch.setattr(knn, "LAMBDA_WHOLE", 1.0)
    context = Context(f"{name}\n{text}", recall=recall)
    voted = [c.message for c in complete_context(lm, context, "", settings).candidates]
    assert voted[0].startswith("cache: evict entries in round "), voted
    # The typed text steers which neighbours still match.
    typed = "cache: evict entries in "
    assert (
        complete_context(lm, context, typed, settings)
        .candidates[0]
        .message.startswith(typed + "round ")
    )
