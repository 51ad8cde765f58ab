"""Completion: context (diff + history + typed text) → candidate messages. The one code path.

The hook, `cmc complete`, `cmc complete --batch` (evaluation) and the editor server all call
`complete_context`; only where the context comes from differs (`context_from_repo`,
`context_from_row`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cmc.diffs import process_diff
from cmc.messages import history_message
from cmc.prompt import build_prompt, eos_token_id, split_typed


@dataclass
class Candidate:
    message: str  # the whole message: typed text + continuation
    continuation: str  # what to append to the typed text
    score: float


@dataclass
class DecodeSettings:
    num_beams: int = 5
    max_new_tokens: int = 24  # a subject line and a bit; the median message is ~12 tokens
    no_repeat_ngram_size: int = 3
    stop_at_newline: bool = False  # one line at a time: keystroke and ghost-text completions


KEYSTROKE = DecodeSettings(num_beams=1, max_new_tokens=12, stop_at_newline=True)


@dataclass
class Context:
    diff: str  # processed diff text
    history: list[str] = field(default_factory=list)  # oldest → newest, cleaned


@dataclass
class Completion:
    typed: str
    candidates: list[Any]  # cmc.decoding.Candidate
    model: str
    latency_ms: float
    served_by: str = "in-process"

    @property
    def best(self) -> str | None:
        return self.candidates[0].message if self.candidates else None

    def as_json(self) -> dict:
        return {
            "prefix": self.typed,
            "model": self.model,
            "latency_ms": round(self.latency_ms, 1),
            "served_by": self.served_by,
            "candidates": [
                {"message": c.message, "continuation": c.continuation, "score": round(c.score, 4)}
                for c in self.candidates
            ],
        }


def context_from_repo(repo: Any, use_history: bool = True, max_diff_chars: int = 24_000) -> Context:
    """The staged change and the author's history of a `cmc.gitctx.GitRepo`."""
    mods = repo.staged_mods(max_chars=max_diff_chars)
    history = repo.author_history() if use_history else []
    return Context(process_diff(mods), history)


def context_from_row(row: dict, use_history: bool = True) -> Context:
    """A CommitChronicle-schema row: ``mods`` (raw hunks or processed) or ``diff``, ``history``."""
    diff = process_diff(row["mods"]) if row.get("mods") is not None else row.get("diff") or ""
    history: list[str] = []
    if use_history:
        for past in row.get("history") or []:
            cleaned = history_message(past)
            if cleaned:
                history.append(cleaned)
    return Context(diff, history)


def complete_context(
    lm: Any, context: Context, typed: str, n: int = 3, settings: Any = None, cache: Any = None
) -> Completion:
    """Up to ``n`` distinct completions of ``typed`` for this context, best first."""
    from cmc.decoding import generate_candidates

    settings = settings or DecodeSettings()
    started = time.perf_counter()
    head, tail = split_typed(typed)
    prompt = build_prompt(
        lm.tokenizer, context.diff, context.history, head, finished=False, budget=lm.budget
    )
    candidates = generate_candidates(
        lm.model,
        lm.tokenizer,
        prompt.input_ids,
        prompt.message_start,
        typed,
        head,
        tail,
        n,
        settings,
        eos_token_id(lm.tokenizer),
        cache,
    )
    return Completion(typed, candidates, lm.name, (time.perf_counter() - started) * 1000)


def complete_rows(
    lm: Any, rows: Iterable[dict], n: int = 3, use_history: bool = True, settings: Any = None
) -> Iterable[dict]:
    """``cmc complete --batch``: one output record per input row (see the README for the schema)."""
    for i, row in enumerate(rows):
        typed = row.get("prefix") or ""
        result = complete_context(lm, context_from_row(row, use_history), typed, n, settings)
        best = result.candidates[0].continuation if result.candidates else ""
        yield {
            "id": row.get("id", row.get("hash", i)),
            "prefix": typed,
            "continuation": best,
            "candidates": [c.continuation for c in result.candidates],
            "latency_ms": round(result.latency_ms, 1),
        }


def read_jsonl(path: str) -> Iterable[dict]:
    from cmc import CmcError

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise CmcError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from exc
