"""Decoding: beam search that completes typed text, healing a half-typed last word.

`split_typed` (in `cmc.prompt`) leaves the typed tail (``" bu"`` of ``"Fix the bu"``) out of the
prompt. `TypedTailConstraint` then allows, at each step, only tokens whose bytes agree with what is
still missing of that tail: a token may be a prefix of it (``" b"``) or run past it (``" bug"``).
Once the tail is produced, decoding is free. This works in bytes, so any byte-level BPE split of
the finished word is reachable, whatever split the typed part alone would have had.

`MessageNoRepeatNGram` is no_repeat_ngram_size applied to the message only: the diff and history in
the prompt must not ban the n-grams a message legitimately repeats from them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from transformers import LogitsProcessor, LogitsProcessorList


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's printable-unicode ↔ byte table, as used by byte-level BPE vocabularies.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenTable:
    """The bytes each token id stands for, indexed for prefix queries."""

    _cache: ClassVar[dict[int, TokenTable]] = {}

    def __init__(self, tokenizer: Any):
        vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        special = set(tokenizer.all_special_ids)
        added = {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
        decoder = _byte_decoder()
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        byte_level = all(t is None or all(ch in decoder for ch in t) for t in tokens[:2000] if t)
        self.bytes: list[bytes | None] = []
        for i, tok in enumerate(tokens):
            if tok is None or i in special or i in added:
                self.bytes.append(None)
            elif byte_level and all(ch in decoder for ch in tok):
                self.bytes.append(bytes(decoder[ch] for ch in tok))
            else:
                self.bytes.append(tokenizer.convert_tokens_to_string([tok]).encode())
        self.vocab_size = vocab_size
        entries = sorted((b, i) for i, b in enumerate(self.bytes) if b)
        self._sorted = [b for b, _ in entries]
        self._ids = [i for _, i in entries]
        self._exact: dict[bytes, list[int]] = {}
        for b, i in entries:
            self._exact.setdefault(b, []).append(i)
        self._allowed: dict[bytes, torch.Tensor] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> TokenTable:
        key = id(tokenizer)
        if key not in cls._cache:
            cls._cache[key] = cls(tokenizer)
        return cls._cache[key]

    def text(self, ids: list[int]) -> bytes:
        return b"".join(self.bytes[i] or b"" for i in ids if i < len(self.bytes))

    def allowed(self, remaining: bytes) -> torch.Tensor:
        """Bool mask of tokens consistent with ``remaining`` (its prefix, or running past it)."""
        mask = self._allowed.get(remaining)
        if mask is None:
            ok = []
            lo = bisect.bisect_left(self._sorted, remaining)
            hi = lo
            while hi < len(self._sorted) and self._sorted[hi].startswith(remaining):
                hi += 1
            ok.extend(self._ids[lo:hi])
            for k in range(1, len(remaining)):
                ok.extend(self._exact.get(remaining[:k], ()))
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[ok] = True
            if len(self._allowed) > 4096:
                self._allowed.clear()
            self._allowed[remaining] = mask
        return mask


class TypedTailConstraint(LogitsProcessor):
    """Force generation (from position ``start``) to begin with the bytes of ``tail``."""

    def __init__(self, table: TokenTable, tail: str, start: int):
        self.table, self.tail, self.start = table, tail.encode(), start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.tail:
            return scores
        for row in range(input_ids.shape[0]):
            produced = self.table.text(input_ids[row, self.start :].tolist())
            if len(produced) >= len(self.tail):
                continue
            mask = self.table.allowed(self.tail[len(produced) :])
            width = min(mask.shape[0], scores.shape[1])
            blocked = torch.ones(scores.shape[1], dtype=torch.bool)
            blocked[:width] = ~mask[:width]
            scores[row, blocked] = -float("inf")
        return scores


class MessageNoRepeatNGram(LogitsProcessor):
    """no_repeat_ngram_size over the message tokens only (from position ``start``)."""

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.n
        for row in range(input_ids.shape[0]):
            toks = input_ids[row, self.start :].tolist()
            if len(toks) < n:
                continue
            prev = tuple(toks[len(toks) - n + 1 :])
            banned = [
                toks[i + n - 1]
                for i in range(len(toks) - n + 1)
                if tuple(toks[i : i + n - 1]) == prev
            ]
            if banned:
                scores[row, banned] = -float("inf")
        return scores


@dataclass
class Candidate:
    message: str  # the whole message: typed text + continuation
    continuation: str  # what to append to the typed text
    score: float


@dataclass
class DecodeSettings:
    num_beams: int = 5
    max_new_tokens: int = 32
    no_repeat_ngram_size: int = 3


def generate_candidates(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    message_start: int,
    typed: str,
    head: str,
    tail: str,
    n: int,
    settings: DecodeSettings,
    eos_id: int,
) -> list[Candidate]:
    """Beam search from a prompt; return up to ``n`` distinct completions of ``typed``."""
    table = TokenTable.of(tokenizer)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    start = len(prompt_ids)
    processors = LogitsProcessorList([TypedTailConstraint(table, tail, start)])
    if settings.no_repeat_ngram_size:
        processors.append(MessageNoRepeatNGram(settings.no_repeat_ngram_size, message_start))
    beams = max(settings.num_beams, n)
    # Room for the tail itself: a constrained token can be as short as one byte.
    max_new = settings.max_new_tokens + len(tail.encode())
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=max_new,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            logits_processor=processors,
            output_scores=True,
            return_dict_in_generate=True,
        )
    scores = getattr(out, "sequences_scores", None)
    seen: set[str] = set()
    result: list[Candidate] = []
    for i, seq in enumerate(out.sequences.tolist()):
        new = seq[start:]
        if eos_id in new:
            new = new[: new.index(eos_id)]
        generated = table.text(new).decode("utf-8", "replace")
        if not generated.startswith(tail):
            continue  # cannot happen unless max_new ran out inside the tail
        message = (head + generated).rstrip()
        continuation = (
            message[len(typed) :] if message.startswith(typed) else generated[len(tail) :]
        )
        key = message.strip()
        if not key or key in seen:
            continue
        seen.add(key)
        score = float(scores[i]) if scores is not None else 0.0
        result.append(Candidate(message, continuation, score))
        if len(result) == n:
            break
    return result
