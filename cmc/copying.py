"""Copying the change's own names: a word the message is in the middle of is finished as one of
the identifiers the diff changes, as often as the diff uses it.

A commit message names what it changes (``Fix PackTask.ShouldRun``, ``Add printDiff``), and a
user who has typed ``Fix PackTas`` means the diff's ``PackTask``. The model rarely spells such a
name out by itself (it never saw this repository's names), so while the message ends inside a
word, the diff's names that start with that word vote on the next token, each by how often the
changed lines and paths use it, and the model's next-token probabilities become::

    p = (1 - λ · s) · p_model + λ · s · p_names

where ``s`` is the share of those uses that run past the word (a name the word already is votes
for ending it: the model keeps its say). The word the user is typing counts once it has
`MIN_TYPED_WORD` letters, with `TYPED_LAMBDA`; a word the model started itself only with
`MODEL_LAMBDA` > 0 (off: measured, it cost B-Norm at every share).

A pointer network in the small: no training, a sorted list of names per completion and a bisect
per hypothesis and step (~0.1 ms a step for five beams). Chosen on 20 repositories no model had
seen, then measured on the test repositories (docs/results.md).
"""

from __future__ import annotations

import bisect
import re
from typing import Any

import numpy as np

from cmc.knn import mix_votes

TYPED_LAMBDA = 0.7  # the word the user is typing
MODEL_LAMBDA = 0.0  # a word the model started itself
MIN_MODEL_WORD = 3  # letters of a model-started word before names vote on it
MIN_TYPED_WORD = 3  # letters the typed word needs before names vote on it
MOST_NAMES = 256  # the most used names that vote for one word (a generated file has thousands)
WORD = re.compile(r"[A-Za-z0-9_]+$")


class CopyNames:
    """A logits processor of `cmc.decoding.beam.beam_search`: the mix above for the hypotheses'
    tokens from position ``start`` on; ``head`` is the typed text in the prompt and ``tail`` the
    typed text the search must still produce (`cmc.prompt.split_typed`)."""

    def __init__(self, table: Any, counts: dict[str, int], start: int, head: str, tail: str,
                 typed_lambda: float, model_lambda: float = 0.0,
                 min_model_word: int = MIN_MODEL_WORD,
                 min_typed_word: int = MIN_TYPED_WORD,
                 names: list[str] | None = None) -> None:  # fmt: skip
        self.table, self.start, self.head = table, start, head
        self.model_lambda = model_lambda
        self.min_model_word = min_model_word
        self.names = sorted(counts) if names is None else names  # sorted
        self.counts = counts
        typed = head + tail
        found = WORD.search(typed) if tail.strip() else None
        self.typed_word = found.group(0) if found else ""  # the half-typed word (tail's last)
        if len(self.typed_word) < min_typed_word:
            typed_lambda = 0.0
        self.typed_lambda = typed_lambda
        self.typed_at = found.start() if found else -1
        self.typed_len = len(typed)
        self._memo: dict[tuple[str, str], tuple[dict[int, float], float]] = {}

    def _with_prefix(self, word: str) -> list[str]:
        lo = bisect.bisect_left(self.names, word)
        hi = bisect.bisect_left(self.names, word + "\U0010ffff", lo)
        return self.names[lo:hi]

    def votes(self, text: str) -> tuple[dict[int, float], float]:
        """The names' votes and λ for a hypothesis whose message so far is ``text``."""
        found = WORD.search(text)
        if not found:
            return {}, 0.0
        word = found.group(0)
        if self.typed_word and found.start() == self.typed_at:  # the word the user is typing
            if not (self.typed_word.startswith(word) or word.startswith(self.typed_word)):
                return {}, 0.0
            lam, must = self.typed_lambda, max(word, self.typed_word, key=len)
        elif len(text) <= self.typed_len or len(word) < self.min_model_word:
            return {}, 0.0  # a word the user finished, or one the model has barely begun
        else:
            lam, must = self.model_lambda, word
        if lam <= 0:
            return {}, 0.0
        key = (word, must)
        if key not in self._memo:  # the beams share words; bounded for a diff of many names
            votes, share = self._votes(word, must)
            self._memo[key] = votes, share
        votes, share = self._memo[key]
        return votes, lam * share

    def _votes(self, word: str, must: str) -> tuple[dict[int, float], float]:
        """Votes of the (at most `MOST_NAMES` most used) names starting with ``must`` for what
        follows ``word``, and the share of their uses that run past it."""
        names = self._with_prefix(must)
        if len(names) > MOST_NAMES:
            names = sorted(names, key=lambda n: -self.counts[n])[:MOST_NAMES]
        votes: dict[int, float] = {}
        extending = ending = 0
        for name in names:
            n = self.counts[name]
            if name == word:
                ending += n
                continue
            token = self.table.longest_prefix(name[len(word) :].encode())
            if token is None:
                continue
            votes[token] = votes.get(token, 0.0) + n
            extending += n
        if not votes:
            return {}, 0.0
        return votes, extending / (extending + ending)

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        for row, seq in enumerate(seqs):
            produced = self.table.text(seq[self.start :])
            votes, lam = self.votes(self.head + produced.decode("utf-8", "replace"))
            mix_votes(scores[row], votes, lam)
        return scores
