"""Suggestions from the repository's memory, and the choice between them and the model's.

Measured on 20 repositories no model had seen (the newest tenth of each, 0 / 25 / 50% typed), what
the memory offers (`cmc.memory.Recall`) beats the model where it is specific, and loses where it
is not:

* a message that **continues the typed text** exactly (an earlier commit's message starting with
  it: "prefix") scored far above the model's continuation at every similarity of the changes;
* with nothing typed, the subject of **the most alike earlier commit** ("nearest") scored above
  the model's when the changes are alike (TF-IDF cosine ≥ 0.6: 25.1 vs 11.9 B-Norm) and below it
  otherwise;
* where no message starts with the typed text, one that **contains its last words** continues
  from there ("infix"): better than the model with four or more typed words (its gains came mostly
  from one repository's automated messages), worse with fewer.

`candidates` lists what the memory offers for the typed text; `choose` ranks them with the
model's candidates by a linear estimate of each one's quality fitted on repositories no model had
seen (the model's own log-probability alone picks poorly: it prefers its own words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cmc.decoding import Candidate, Origin

OFFERED = frozenset({"nearest", "prefix", "infix"})  # what the memory offers (each measured)
INFIX_WORDS = 3  # typed words an infix match must share (the last one may be half-typed)
SCAN = 2_000  # most alike commits looked through for an infix match


@dataclass(frozen=True)
class Recalled:
    message: str  # the whole suggested message: typed text + continuation
    continuation: str
    similarity: float  # of the changes (TF-IDF cosine of their diff features)
    kind: str  # "prefix", "nearest" or "infix"
    origin: Origin | None = None  # the commit whose message it is


def subject_or_body(text: str, typed: str) -> str:
    """The subject line, unless the typed text is already past it."""
    return text if "\n" in typed else text.split("\n", 1)[0].rstrip()


def candidates(recall: Any, typed: str) -> list[Recalled]:
    """What the memory offers for ``typed``: messages continuing it exactly; with nothing typed the
    most alike commits' subjects; else messages continuing its last words."""
    if recall is None or not len(recall):
        return []
    found: list[Recalled] = []
    seen: set[str] = set()

    def add(message: str, similarity: float, kind: str) -> None:
        if message not in seen and len(message) > len(typed):
            seen.add(message)
            found.append(Recalled(message, message[len(typed) :], similarity, kind,
                                  origin_of(recall, message)))  # fmt: skip

    if not typed.strip():
        if "nearest" not in OFFERED:
            return []
        k = PER_KIND["nearest"]
        for text, similarity in recall.nearest(k * 3):
            add(subject_or_body(text, typed), similarity, "nearest")
            if len(found) == k:
                break
        return found
    k = PER_KIND["prefix"]
    for text, similarity in recall.continuing(typed, k * 3) if "prefix" in OFFERED else []:
        message = subject_or_body(text, typed)
        if message.startswith(typed):
            add(message, similarity, "prefix")
            if len(found) == k:
                return found
    if not found and "infix" in OFFERED:
        # as many as continue it would: `fitted` may drop some, `options` weighs the first few
        found += _infix(recall, typed, k)
    return found


_WORD = re.compile(r"\S+")


def _infix(recall: Any, typed: str, k: int) -> list[Recalled]:
    """Messages holding the typed text's last `INFIX_WORDS` words (the last perhaps half-typed),
    continued from there, the most alike commits' first."""
    words = _WORD.findall(typed)
    if len(words) < INFIX_WORDS or typed[-1:].isspace():
        tail_words = words[-INFIX_WORDS:]
        partial = ""
    else:
        tail_words, partial = words[-INFIX_WORDS:-1], words[-1]
    if len(tail_words) + bool(partial) < INFIX_WORDS:
        return []
    pattern = re.compile(
        r"(?<!\S)" + r"\s+".join(re.escape(w) for w in tail_words)
        + (r"\s+" + re.escape(partial) if partial else r"\s+"),
        re.IGNORECASE,
    )  # fmt: skip
    out: list[Recalled] = []
    seen: set[str] = set()
    memory = recall.memory
    for i in recall.order[:SCAN]:
        text = subject_or_body(memory.messages[i], typed)
        match = pattern.search(text)
        if match is None:
            continue
        rest = text[match.end() :]
        if not rest.strip() or rest in seen:
            continue
        seen.add(rest)
        out.append(Recalled(typed + rest, rest, float(recall.scores[i]), "infix",
                            _origin(memory, i)))  # fmt: skip
        if len(out) == k:
            break
    return out


def _origin(memory: Any, i: int) -> Origin:
    import time

    return Origin(memory.shas[i][:10], time.strftime("%Y-%m-%d", time.gmtime(int(memory.times[i]))))


def origin_of(recall: Any, message: str) -> Origin | None:
    """The most alike commit whose message (or its subject) is ``message``: every message offered
    is found (a prefix match may lie past the first `SCAN`)."""
    memory = recall.memory
    for i in recall.order:
        if memory.messages[i].startswith(message):
            return _origin(memory, int(i))
    return None


def fitted(offered: list[Recalled], typed: str, support: Any) -> list[Recalled]:
    """The recalled messages fitted to this change (`cmc.specifics.repair`: an earlier bump's
    versions become this diff's), without those stating what this change does not support."""
    from cmc.specifics import repair

    out = []
    for r in offered:
        message = repair(r.message, typed, support)
        if message is not None:
            out.append(Recalled(message, message[len(typed) :], r.similarity, r.kind, r.origin))
    return out


KINDS = ("model", "nearest", "prefix", "infix")
# The memory's suggestions of each kind the chooser weighs (measured: docs/memory.md).
PER_KIND = {"nearest": 3, "prefix": 8, "infix": 2}
INFIX_MIN_TYPED_WORDS = 4  # measured: shorter typed text matched by chance (see the docstring)
_WORDS = re.compile(r"\w+")

# A linear estimate of a candidate's B-Norm against the real message, fitted (ridge, λ = 1) on
# 20 repositories no model had seen, 0 / 25 / 50 % typed, 865 completions; left-one-repository-out
# it picked 14.6 / 15.0 / 20.6 B-Norm where the model's first candidate had 10.2 / 10.7 / 12.6.
# Features: `_features`. How it was fitted: bench/bench_memory.py --fit.
WEIGHTS = (8.982, -4.584, -0.907, 1.558, 0.051, 35.981, 1.653, 26.111, 15.753, -6.135, -19.091,
           -7.513, 62.585, -20.782, 24.139, 29.395, -6.641, 5.049)  # fmt: skip


@dataclass(frozen=True)
class Option:
    """One candidate the chooser weighs: from the model or from the memory."""

    candidate: Candidate
    kind: str  # one of KINDS
    rank: int  # within its kind
    similarity: float = 0.0  # the memory's: of the changes
    score: float = 0.0  # the model's


def _words(text: str) -> set[str]:
    return set(_WORDS.findall(text.lower()))


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def _features(options: list[Option], history: list[str]) -> list[list[float]]:
    """Per option: its kind, rank, similarity, model score, agreement with the other options
    (mean word overlap), likeness to the author's last messages, length; and interactions."""
    words = [_words(o.candidate.message) for o in options]
    past = [_words(h) for h in history[-10:]]
    rows = []
    for i, o in enumerate(options):
        others = [_overlap(words[i], w) for j, w in enumerate(words) if j != i]
        agree = sum(others) / len(others) if others else 0.0
        like = max((_overlap(words[i], p) for p in past), default=0.0)
        kind = [float(o.kind == k) for k in KINDS]
        length = min(len(o.candidate.message.split()), 30) / 10
        rows.append([*kind, float(o.rank), o.similarity, o.score, agree, like, length,
                     *(k * o.similarity for k in kind[1:]), *(k * agree for k in kind), 1.0])  # fmt: skip
    return rows


def options(model: list[Candidate], recalled: list[Recalled], typed: str) -> list[Option]:
    """What the chooser weighs: the model's first three and the memory's first of each kind
    (`PER_KIND`; infix suggestions only where nothing continues the typed text and it has enough
    words)."""
    out = [Option(c, "model", i, score=c.score) for i, c in enumerate(model[:3])]
    rank: dict[str, int] = {}
    for r in recalled:
        if r.kind == "infix" and len(_WORD.findall(typed)) < INFIX_MIN_TYPED_WORDS:
            continue
        rank[r.kind] = rank.get(r.kind, -1) + 1
        if rank[r.kind] < PER_KIND[r.kind]:
            out.append(Option(Candidate(r.message, r.continuation, r.similarity, r.origin), r.kind,
                              rank[r.kind], similarity=r.similarity))  # fmt: skip
    return out


def choose(model: list[Candidate], recalled: list[Recalled], typed: str, history: list[str],
           n: int, weights: tuple[float, ...] | None = None) -> list[Candidate]:  # fmt: skip
    """At most ``n`` distinct candidates, best first by the fitted estimate (``weights``: the
    model's own, `cmc.model.read_chooser`, else `WEIGHTS`); the model's beyond its first three
    follow in its own order."""
    opts = options(model, recalled, typed)
    if not any(o.kind != "model" for o in opts):
        return model[:n]
    weights = weights or WEIGHTS
    estimate = [sum(w * x for w, x in zip(weights, row)) for row in _features(opts, history)]
    ranked = [opts[i].candidate for i in sorted(range(len(opts)), key=lambda i: -estimate[i])]
    out: list[Candidate] = []
    seen: set[str] = set()
    for c in [*ranked, *model[3:]]:
        key = c.message.strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:n]
