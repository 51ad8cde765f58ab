"""Decoding: what a completion asks for (`DecodeSettings`) and what it yields (`Candidate`).

These types are cheap to import (no torch): the daemon's wire format and the CLI use them. The
search itself, on a model, is `cmc.decoding.beam`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Origin:
    """An earlier commit of the repository whose message a suggestion is (recalled, fitted)."""

    commit: str  # its short hash
    date: str  # its author date, YYYY-MM-DD

    def describe(self) -> str:
        return f"commit {self.commit} of {self.date}"


@dataclass(frozen=True)
class Candidate:
    message: str  # the whole message: typed text + continuation
    continuation: str  # what to append to the typed text
    score: float
    origin: Origin | None = None  # None: the model wrote it

    @property
    def source(self) -> str:
        return "model" if self.origin is None else "memory"

    def to_json(self) -> dict:
        out = {
            "message": self.message,
            "continuation": self.continuation,
            "score": round(self.score, 4),
            "source": self.source,
        }
        if self.origin is not None:
            out.update(commit=self.origin.commit, date=self.origin.date)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Candidate:
        if not isinstance(data, dict):
            raise ValueError("a candidate must be an object")
        origin = None
        if data.get("source") == "memory":
            origin = Origin(_typed(data, "commit", str), _typed(data, "date", str))
        return cls(
            _typed(data, "message", str),
            _typed(data, "continuation", str),
            float(_typed(data, "score", (int, float))),
            origin,
        )


@dataclass(frozen=True)
class DecodeSettings:
    num_beams: int = 5
    max_new_tokens: int = 24  # a subject line and a bit; the median message is ~12 tokens
    no_repeat_ngram_size: int = 3
    stop_at_newline: bool = False  # one line at a time: keystroke and ghost-text completions
    num_candidates: int = 3  # distinct messages returned, best first

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DecodeSettings:
        if not isinstance(data, dict):
            raise ValueError("settings must be an object")
        values = {}
        for f in fields(cls):
            if f.name in data:
                kind = bool if f.type in ("bool", bool) else int
                values[f.name] = _typed(data, f.name, kind)
        settings = cls(**values)
        if not (1 <= settings.num_beams <= 64 and 1 <= settings.max_new_tokens <= 512):
            raise ValueError("num_beams must be 1..64 and max_new_tokens 1..512")
        if not (0 <= settings.no_repeat_ngram_size <= 16 and 1 <= settings.num_candidates <= 32):
            raise ValueError("no_repeat_ngram_size must be 0..16 and num_candidates 1..32")
        return settings

    def with_candidates(self, n: int) -> DecodeSettings:
        return replace(self, num_candidates=n)


# Keystroke completions (language server, editors): one line, greedy, short.
KEYSTROKE = DecodeSettings(num_beams=1, max_new_tokens=12, stop_at_newline=True, num_candidates=1)


def _typed(data: dict, key: str, kind: Any) -> Any:
    value = data.get(key)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise ValueError(f"{key} must be a {name}")
    return value
