"""Copying the change's own names (`cmc.copying`): a word the message is in the middle of is
finished as one of the diff's identifiers, on exact arithmetic and end to end with a real tiny
model that never saw the name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmc import copying, specifics
from cmc.complete import Context, complete_context
from cmc.decoding import DecodeSettings
from cmc.model import load_model
from cmc.prompt import split_typed


@pytest.fixture(scope="module")
def lm(tiny_model: Path):
    return load_model(str(tiny_model))


@pytest.fixture(scope="module")
def table(lm):
    from cmc.decoding.beam import TokenTable

    return TokenTable.of(lm.tokenizer)


def test_names_and_their_parts_are_counted():
    lines = ["x = App.RunTask(run_task)", "src/app/run.py", "App.RunTask()"]
    counts = specifics.name_counts(n for line in lines for n in specifics.IDENTIFIER.findall(line))
    assert counts["App.RunTask"] == 2
    assert counts["RunTask"] == 2 and counts["App"] == 2
    assert counts["run_task"] == 1 and counts["src/app/run.py"] == 1 and counts["py"] == 1


def mix(table, counts, typed: str, produced: bytes, **kw) -> np.ndarray:
    """The processor's distribution after ``produced`` (uniform model), as probabilities."""
    head, tail = split_typed(typed)
    proc = copying.CopyNames(
        table, counts, 2, head, tail, **{"typed_lambda": 0.5, "min_typed_word": 1, **kw}
    )
    ids = [table.longest_prefix(bytes([c])) for c in produced]  # one byte a token
    vocab = table.vocab_size
    scores = np.full((1, vocab), np.log(1.0 / vocab), dtype=np.float32)
    out = np.exp(proc([[0, 0, *ids]], scores).astype(np.float64))[0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # still a distribution
    return out


def test_the_half_typed_word_leans_to_the_names_that_start_with_it(table):
    u = 1.0 / table.vocab_size
    counts = {"PackTask": 3, "PackTaskRunner": 1, "Parser": 5, "Other": 9}
    # Typed "Fix PackTa", decoded so far " Pack": the names through "PackTa" vote, by their uses.
    out = mix(table, counts, "Fix PackTa", b" Pack", typed_lambda=0.5)
    voted = {t: p for t, p in enumerate(out) if p > 2 * u}
    assert voted, "nothing voted"
    for token in voted:  # toward PackTask / PackTaskRunner only: not Parser, nor Other
        assert b"TaskRunner".startswith(table.bytes[token])
    assert sum(voted.values()) == pytest.approx(0.5 + 0.5 * u * len(voted), abs=1e-6)
    assert min(out) == pytest.approx(0.5 * u, abs=1e-9)  # the rest: the model's, times 1 - λ


def test_a_name_the_word_already_is_keeps_the_model_in_play(table):
    """``Pack`` itself is a name, used as often as ``PackTask``: half the weight goes to ending
    the word, that is to the model."""
    u = 1.0 / table.vocab_size
    out = mix(table, {"Pack": 1, "PackTask": 1}, "Fix Pack", b" Pack", typed_lambda=0.5)
    token = table.longest_prefix(b"Task")
    assert out[token] == pytest.approx(0.75 * u + 0.25, abs=1e-6)


@pytest.mark.parametrize(
    "typed, produced, kw",
    [
        ("Fix Pack ", b" ", {}),  # the user finished the word: theirs, not the names'
        ("Fix ", b" Pa", {"model_lambda": 0.5, "min_model_word": 3}),  # too short a start
        ("Fix ", b" Pack", {"model_lambda": 0.0}),  # the model's own words are left alone
        ("Fix Zz", b" Zz", {}),  # no name starts with it
        ("Fix Pa", b" Pa", {"min_typed_word": 3}),  # too few letters typed to tell
    ],
)
def test_no_vote(table, typed: str, produced: bytes, kw: dict):
    counts = {"PackTask": 3, "Fix": 2, "Fixture": 2}
    out = mix(table, counts, typed, produced, **kw)
    assert np.allclose(out, 1.0 / table.vocab_size, atol=1e-9)


def test_a_word_the_model_started_is_finished_when_asked(table):
    out = mix(table, {"PackTask": 3}, "Fix ", b" Pack", model_lambda=0.5, min_model_word=3)
    assert out[table.longest_prefix(b"Task")] > 0.5


def test_the_model_finishes_the_typed_word_as_the_diffs_name(lm, monkeypatch):
    """The tiny model never saw ``evictionPolicy``; typed ``Add evi`` it writes something else,
    and with the names weighing all it finishes the word as the diff's name."""
    diff = "src/cache.py\n@@ -1 +1,3 @@\n+evictionPolicy = 1\n+use(evictionPolicy)\n"
    settings = DecodeSettings(num_beams=3, max_new_tokens=12, num_candidates=1)
    monkeypatch.setattr(specifics.SpecificsConstraint.__init__, "__defaults__", ("", 16, 0.0))
    monkeypatch.setattr(copying, "TYPED_LAMBDA", 0.0)
    plain = complete_context(lm, Context(diff), "Add evi", settings).candidates[0].message
    assert not plain.startswith("Add evictionPolicy"), plain
    monkeypatch.setattr(copying, "TYPED_LAMBDA", 1.0)
    copied = complete_context(lm, Context(diff), "Add evi", settings).candidates[0].message
    assert copied.startswith("Add evictionPolicy"), copied


def test_the_names_are_counted_and_sorted_once_per_change():
    """A keystroke does not sort the change's names again (`Support.with_typed` shares them)."""
    support = specifics.Support.of("src/a.py\n+fooBar = baz.qux(fooBar)\n", [])
    assert support.name_counts["fooBar"] == 2 and support.name_counts["baz.qux"] == 1
    first, second = support.with_typed("Fix f"), support.with_typed("Fix foo")
    assert first.sorted_names() is second.sorted_names() is support.sorted_names()
    assert support.sorted_names() == sorted(support.name_counts)


def test_only_the_most_used_names_vote(table, monkeypatch):
    """A generated file can hold thousands of names with one start: the most used vote, and
    each word's votes are worked out once for all beams."""
    monkeypatch.setattr(copying, "MOST_NAMES", 2)
    u = 1.0 / table.vocab_size
    counts = {"getAlpha": 5, "getBeta": 3, "getGamma": 1}
    out = mix(table, counts, "Fix get", b" get")
    voted = {bytes(table.bytes[t]) for t, p in enumerate(out) if p > 2 * u}
    assert voted and all(b"Alpha".startswith(v) or b"Beta".startswith(v) for v in voted)
    assert sum(out[t] for t, p in enumerate(out) if p > 2 * u) == pytest.approx(
        0.5 + 0.5 * u * len(voted), abs=1e-6
    )
