"""Beam search on a transformers causal LM that completes typed text, healing a half-typed last word.

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
import copy
import inspect
import re
from functools import lru_cache
from typing import Any, ClassVar

import torch
from transformers import LogitsProcessor

from cmc.decoding import Candidate, DecodeSettings
from cmc.prompt import Prompt, eos_token_id, split_typed


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

    def newline_ids(self) -> frozenset[int]:
        if not hasattr(self, "_newline"):
            self._newline = frozenset(i for i, b in enumerate(self.bytes) if b and b"\n" in b)
        return self._newline

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


class PromptCache:
    """KV states of recent prompts, so a prompt that extends one of them only runs its new tokens.

    While the diff and history stay the same and the user keeps typing, each prompt extends the
    previous one (the typed text is at its end): only the new tokens go through the model. The
    context alone (up to ``<|msg|>``) is kept too, so deleting typed text still reuses it.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.entries: list[
            tuple[tuple[int, ...], Any, torch.Tensor]
        ] = []  # (ids, cache, last logits)
        self.reused_tokens = 0  # of the last prefill, for tests and benchmarks

    def _store(self, ids: tuple[int, ...], cache: Any, logits: torch.Tensor) -> None:
        self.entries = [e for e in self.entries if e[0] != ids]
        self.entries.insert(0, (ids, copy.deepcopy(cache), logits))
        del self.entries[self.keep :]

    def prefill(self, model: Any, ids: list[int], context_len: int) -> tuple[Any, torch.Tensor]:
        """A cache holding ``ids`` (a fresh copy, the caller may extend it) and the last logits."""
        key = tuple(ids)
        best = None
        for entry in self.entries:
            n = len(entry[0])
            if n <= len(key) and key[:n] == entry[0] and (best is None or n > len(best[0])):
                best = entry
        if best is not None and len(best[0]) == len(key):
            self.reused_tokens = len(key)
            return copy.deepcopy(best[1]), best[2]
        if best is None:
            from transformers import DynamicCache

            cache, done = DynamicCache(), 0
            self.reused_tokens = 0
            if 0 < context_len < len(key):  # the context first: it outlives any typed text
                logits = _forward(model, list(key[:context_len]), cache)
                self._store(key[:context_len], cache, logits)
                done = context_len
        else:
            cache, done = copy.deepcopy(best[1]), len(best[0])
            self.reused_tokens = done
        logits = _forward(model, list(key[done:]), cache)
        self._store(key, cache, logits)
        return cache, logits


@lru_cache(maxsize=8)
def _cache_argument(model_class: type) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _step(model: Any, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """Run ``ids`` through the model on top of ``cache``; float logits of the last position."""
    kw = {_cache_argument(type(model)): cache}
    return model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw).logits[:, -1].float()


def _forward(model: Any, ids: list[int], cache: Any) -> torch.Tensor:
    return _step(model, torch.tensor([ids], dtype=torch.long), cache)


@torch.inference_mode()
def beam_search(
    model: Any,
    prompt_ids: list[int],
    message_start: int,
    processors: list[LogitsProcessor],
    beams: int,
    max_new: int,
    eos_id: int,
    cache: PromptCache | None = None,
    length_penalty: float = 1.0,
    stops: Any = None,
    cancelled: Any = None,
) -> list[tuple[list[int], float]]:
    """Beam search on the model's KV cache; ``beams=1`` is greedy. Returns (tokens, score), best first.

    Scores are summed log-probabilities divided by length ** length_penalty (as in transformers).
    ``stops(tokens, token)`` may end a hypothesis on other tokens than ``eos_id`` (without them).
    ``cancelled()``, checked before each step, abandons the search (`Cancelled`).
    """
    from transformers import DynamicCache

    if cache is not None:
        kv, logits = cache.prefill(model, prompt_ids, message_start)
    else:
        kv = DynamicCache()
        logits = _forward(model, prompt_ids, kv)
    seqs = torch.tensor([prompt_ids], dtype=torch.long)
    running = torch.zeros(1)
    finished: list[tuple[list[int], float]] = []
    start = len(prompt_ids)
    for step in range(max_new):
        if cancelled is not None and cancelled():
            raise Cancelled("the request was abandoned")
        logp = torch.log_softmax(logits, dim=-1)
        for proc in processors:
            logp = proc(seqs, logp)
        cand = (running[:, None] + logp).view(-1)
        top_scores, top_idx = cand.topk(min(2 * beams, cand.numel()))
        vocab = logp.shape[-1]
        last = step + 1 == max_new
        keep_rows, keep_tokens, keep_scores = [], [], []
        for rank, (score, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            if score == -float("inf"):
                break
            row, token = divmod(idx, vocab)
            if token == eos_id or (stops is not None and stops(seqs[row, start:].tolist(), token)):
                if rank < beams:  # as in transformers: an end only counts among the top `beams`
                    tokens = seqs[row, start:].tolist()
                    finished.append((tokens, score / (len(tokens) + 1) ** length_penalty))
            else:
                if last and rank < beams:  # out of room: the top beams end here, as in transformers
                    tokens = [*seqs[row, start:].tolist(), token]
                    finished.append((tokens, score / len(tokens) ** length_penalty))
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
            if len(keep_rows) == beams:
                break
        if not keep_rows or last:
            break
        if len(finished) >= beams:
            # Done when no running beam can beat the worst of the best `beams` finished ones, its
            # score divided by its length now (transformers' early_stopping=False heuristic).
            worst = sorted(h[1] for h in finished)[-beams]
            if worst >= max(keep_scores) / (step + 1) ** length_penalty:
                break
        order = torch.tensor(keep_rows, dtype=torch.long)
        toks = torch.tensor(keep_tokens, dtype=torch.long)
        running = torch.tensor(keep_scores)
        seqs = torch.cat([seqs[order], toks[:, None]], dim=1)
        kv.reorder_cache(order)
        logits = _step(model, toks[:, None], kv)
    finished.sort(key=lambda item: -item[1])
    return finished


_NOT_SUBSTANCE = re.compile(r"[\W\d_]+")


def substance(message: str) -> str:
    """What makes two candidates different: their words, not case, digits or punctuation."""
    return " ".join(_NOT_SUBSTANCE.sub(" ", message.lower()).split())


class Cancelled(Exception):
    """A search abandoned because its client has gone or its deadline passed."""


def generate_candidates(
    model: Any,
    tokenizer: Any,
    prompt: Prompt,
    typed: str,
    settings: DecodeSettings,
    cache: PromptCache | None = None,
    cancelled: Any = None,
) -> list[Candidate]:
    """Up to ``settings.num_candidates`` distinct completions of ``typed``, best first.

    ``prompt`` was built (`cmc.prompt.build_prompt`) from the head of ``typed`` (`split_typed`).
    """
    head, tail = split_typed(typed)
    n = settings.num_candidates
    prompt_ids, message_start = prompt.input_ids, prompt.message_start
    eos_id = eos_token_id(tokenizer)
    table = TokenTable.of(tokenizer)
    start = len(prompt_ids)
    processors: list[LogitsProcessor] = [TypedTailConstraint(table, tail, start)]
    if settings.no_repeat_ngram_size:
        processors.append(MessageNoRepeatNGram(settings.no_repeat_ngram_size, message_start))
    beams = max(settings.num_beams, n)
    # Room for the tail itself: a constrained token can be as short as one byte.
    max_new = settings.max_new_tokens + len(tail.encode())
    stops = None
    if settings.stop_at_newline:
        tail_bytes = len(tail.encode())
        newline = table.newline_ids()

        def stops(tokens: list[int], token: int) -> bool:
            return token in newline and len(table.text(tokens)) >= tail_bytes

    hypotheses = beam_search(
        model, prompt_ids, message_start, processors, beams, max_new, eos_id, cache, stops=stops,
        cancelled=cancelled,
    )  # fmt: skip
    seen: set[str] = set()
    result: list[Candidate] = []
    for new, score in hypotheses:
        generated = table.text(new).decode("utf-8", "replace")
        if not generated.startswith(tail):
            continue  # cannot happen unless max_new ran out inside the tail
        message = (head + generated).rstrip()
        continuation = (
            message[len(typed) :] if message.startswith(typed) else generated[len(tail) :]
        )
        key = substance(message)
        if not message.strip() or key in seen:
            continue
        seen.add(key)
        result.append(Candidate(message, continuation, score))
        if len(result) == n:
            break
    return result
