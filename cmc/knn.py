"""kNN-LM over the repository's memory: the next tokens of the most alike earlier commits'
messages, mixed into the model's own next-token probabilities while it decodes.

Khandelwal et al.'s kNN-LM retrieves neighbours by the model's hidden state, which would mean
running the model over every message of the memory and keeping a vector per token (hundreds of MB
for 20,000 commits). Here the neighbours are the `NEIGHBOURS` commits whose *changes* are most
alike (`cmc.memory.Recall`, already looked up for every completion), each counting by how alike
its change is. A neighbour votes for its message's next token where its message starts with all
that is written so far (typed and decoded, compared as text), or else where its last 2 to `ORDER`
tokens are the same as the hypothesis' last ones. Per hypothesis and step, where some neighbour
votes::

    p = (1 - λ) · p_model + λ · p_neighbours

with λ `LAMBDA_WHOLE` for whole-message matches and `LAMBDA_TAIL` for matches of the last tokens;
elsewhere the model's probabilities stand. Neighbours never vote for a token with a digit (their
versions and numbers are not this change's). No training, nothing stored beyond one completion.

Measured (docs/memory.md): λ chosen on 20 repositories no model had seen, then the test
repositories: better than the memory's messages alone at every typed share.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

ON = True  # measured: docs/memory.md
NEIGHBOURS = 16  # most alike commits whose messages vote
ORDER = 4  # most preceding tokens matched
LAMBDA_WHOLE = 0.3  # the neighbour's message starts with all that is decoded so far
LAMBDA_TAIL = 0.4  # only the last tokens match (at least `MIN_TAIL`)
MIN_TAIL = 2


class NeighbourTokens:
    """A logits processor of `cmc.decoding.beam.beam_search`: the mix above, for the hypotheses'
    tokens from position ``start`` (the message's first token) on.

    The whole message so far is matched as text, not as tokens: typed text that ends inside a
    word is decoded with other token boundaries than the neighbour's own, and still matches. A
    neighbour's vote there is its own next token where its tokens have a boundary, else the
    longest token its remaining text starts with."""

    def __init__(self, table: Any, messages: list[tuple[list[int], float]], start: int,
                 eos_id: int, whole: float, tail: float) -> None:  # fmt: skip
        self.table, self.start, self.eos_id = table, start, eos_id
        self.whole, self.tail = whole, tail
        # A version, a number, an id belong to the neighbour's change, not to this one (measured:
        # the neighbours' votes turned `release v1.36.2` into the previous release's number).
        self.specific = table.digit_ids()
        self.neighbours: list[tuple[bytes, dict[int, int], float]] = []  # text, offset → token
        # the last tokens (MIN_TAIL..ORDER of them) → next token → weight
        self.ngrams: dict[tuple[int, ...], dict[int, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        for tokens, weight in messages:
            if weight <= 0:
                continue
            offsets, at = {}, 0
            for token in tokens:
                offsets[at] = token
                at += len(table.bytes[token] or b"") if token < len(table.bytes) else 0
            self.neighbours.append((table.text(tokens), offsets, weight))
            seq = [*tokens, eos_id]
            for j, token in enumerate(seq):
                if token in self.specific:
                    continue
                for n in range(MIN_TAIL, min(ORDER, j) + 1):
                    self.ngrams[tuple(seq[j - n : j])][token] += weight
        self.ngrams = dict(self.ngrams)

    def _votes(self, message: list[int]) -> tuple[dict[int, float], float]:
        produced = self.table.text(message)
        votes: dict[int, float] = defaultdict(float)
        for text, offsets, weight in self.neighbours:
            if not text.startswith(produced):
                continue
            if len(text) == len(produced):
                token: int | None = self.eos_id
            else:
                token = offsets.get(len(produced))
                if token is None:
                    token = self.table.longest_prefix(text[len(produced) :])
            if token is not None and token not in self.specific:
                votes[token] += weight
        if votes:
            return votes, self.whole
        for n in range(min(ORDER, len(message)), MIN_TAIL - 1, -1):
            found = self.ngrams.get(tuple(message[-n:]))
            if found:
                return found, self.tail
        return {}, 0.0

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        for row, seq in enumerate(seqs):
            votes, lam = self._votes(seq[self.start :])
            mix_votes(scores[row], votes, lam)
        return scores


def mix_votes(scores: np.ndarray, votes: dict[int, float], lam: float) -> None:
    """One hypothesis' next-token log-probabilities ``scores`` become, in place,
    log((1 - λ) p + λ v), v the ``votes`` normalized: the tokens without a vote only move by
    log(1 - λ). Nothing changes without votes or with λ 0. (Also `cmc.copying`'s mix.)"""
    if not votes or lam <= 0:
        return
    vocab = scores.shape[0]
    total = sum(votes.values())
    ids = np.fromiter((t for t in votes if t < vocab), dtype=np.int64)
    share = np.fromiter((votes[t] / total for t in votes if t < vocab), dtype=np.float64)
    voted = (1.0 - lam) * np.exp(scores[ids].astype(np.float64)) + lam * share
    with np.errstate(divide="ignore"):
        scores += np.float32(np.log1p(-lam)) if lam < 1 else -np.inf
        scores[ids] = np.log(voted).astype(scores.dtype)


def neighbour_tokens(recall: Any, tokenizer: Any, table: Any, typed: str, start: int,
                     eos_id: int, stop_at_newline: bool) -> NeighbourTokens | None:  # fmt: skip
    """The processor for one completion, or None when the memory offers nothing."""
    if recall is None or not len(recall) or (LAMBDA_WHOLE <= 0 and LAMBDA_TAIL <= 0):
        return None
    from cmc.recalled import subject_or_body

    messages = []
    for text, similarity in recall.nearest(NEIGHBOURS):
        if stop_at_newline:
            text = subject_or_body(text, typed)
        messages.append((tokenizer.encode(text, add_special_tokens=False), similarity))
    if not messages:
        return None
    return NeighbourTokens(table, messages, start, eos_id, LAMBDA_WHOLE, LAMBDA_TAIL)
