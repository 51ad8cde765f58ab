"""Beam search that completes typed text, healing a half-typed last word, on any `cmc.runtime`.

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
import re
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

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
        vocab = tokenizer.get_vocab()
        vocab_size = max(len(tokenizer), max(vocab.values()) + 1)
        skip = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        decoder = _byte_decoder()
        tokens: list[str | None] = [None] * vocab_size
        for tok, i in vocab.items():
            if i not in skip:
                tokens[i] = tok
        alphabet = set(decoder)
        byte_level = all(set(t) <= alphabet for t in tokens[:2000] if t)
        # This runs on the cold path of every completion: one str.translate per token (a loop
        # per character took ~150 ms for 16k tokens here), the prefix index only when needed.
        to_latin1 = {ord(ch): b for ch, b in decoder.items()}

        def as_bytes(tok: str | None) -> bytes | None:
            if tok is None:
                return None
            if byte_level:
                try:
                    return tok.translate(to_latin1).encode("latin-1")
                except UnicodeEncodeError:  # a symbol outside the byte alphabet
                    pass
            return tokenizer.convert_tokens_to_string([tok]).encode()

        self.bytes: list[bytes | None] = [as_bytes(t) for t in tokens]
        self.vocab_size = vocab_size
        self._index: tuple[list[bytes], list[int], dict[bytes, list[int]]] | None = None
        self._allowed: dict[bytes, np.ndarray] = {}

    def _prefix_index(self) -> tuple[list[bytes], list[int], dict[bytes, list[int]]]:
        if self._index is None:
            ids = [i for i, b in enumerate(self.bytes) if b]
            ids.sort(key=self.bytes.__getitem__)  # stable: equal bytes keep id order
            ordered = [self.bytes[i] for i in ids]
            exact: dict[bytes, list[int]] = {}
            for b, i in zip(ordered, ids):
                exact.setdefault(b, []).append(i)
            self._index = (ordered, ids, exact)
        return self._index

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

    def digit_ids(self) -> frozenset[int]:
        if not hasattr(self, "_digits"):
            self._digits = frozenset(
                i for i, b in enumerate(self.bytes) if b and any(48 <= c <= 57 for c in b)
            )
        return self._digits

    def utf8_masks(self) -> list[np.ndarray]:
        """Per number of continuation bytes the text waits for (0–3), the tokens that may come
        next: those starting with exactly that many continuation bytes, the rest of whose bytes
        decode (a character left open at their end is fine), or made of fewer continuation bytes
        only (the character stays open). Tokens without bytes (the end, other specials) only where
        no character is open."""
        if not hasattr(self, "_utf8"):
            import codecs

            lead = np.zeros(self.vocab_size, np.int8)
            only = np.zeros(self.vocab_size, bool)  # continuation bytes and nothing else
            for i, b in enumerate(self.bytes):
                if not b:
                    continue
                c = 0
                while c < len(b) and b[c] & 0xC0 == 0x80:
                    c += 1
                try:
                    codecs.getincrementaldecoder("utf-8")().decode(b[c:], final=False)
                except UnicodeDecodeError:
                    c = 9  # never valid
                lead[i] = min(c, 9)
                only[i] = c == len(b)
            self._utf8 = [(lead == p) | (only & (lead < p)) for p in range(4)]
        return self._utf8

    def longest_prefix(self, rest: bytes, most: int = 32) -> int | None:
        """The token of the longest bytes (up to ``most``) that ``rest`` starts with."""
        exact = self._prefix_index()[2]
        for k in range(min(len(rest), most), 0, -1):
            ids = exact.get(rest[:k])
            if ids:
                return ids[0]
        return None

    def text(self, ids: list[int]) -> bytes:
        return b"".join(self.bytes[i] or b"" for i in ids if i < len(self.bytes))

    def allowed(self, remaining: bytes) -> np.ndarray:
        """Bool mask of tokens consistent with ``remaining`` (its prefix, or running past it)."""
        mask = self._allowed.get(remaining)
        if mask is None:
            ordered, ids, exact = self._prefix_index()
            ok = []
            lo = bisect.bisect_left(ordered, remaining)
            hi = lo
            while hi < len(ordered) and ordered[hi].startswith(remaining):
                hi += 1
            ok.extend(ids[lo:hi])
            for k in range(1, len(remaining)):
                ok.extend(exact.get(remaining[:k], ()))
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[ok] = True
            if len(self._allowed) > 4096:
                self._allowed.clear()
            self._allowed[remaining] = mask
        return mask


class TypedTailConstraint:
    """Force generation (from position ``start``) to begin with the bytes of ``tail``.

    Logits processors here take the hypotheses (each the whole sequence, prompt included) and
    their log-probabilities (hypotheses, vocab), and return the scores to use."""

    def __init__(self, table: TokenTable, tail: str, start: int):
        self.table, self.tail, self.start = table, tail.encode(), start

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        if not self.tail:
            return scores
        for row, seq in enumerate(seqs):
            produced = self.table.text(seq[self.start :])
            if len(produced) >= len(self.tail):
                continue
            mask = self.table.allowed(self.tail[len(produced) :])
            width = min(mask.shape[0], scores.shape[1])
            blocked = np.ones(scores.shape[1], dtype=bool)
            blocked[:width] = ~mask[:width]
            scores[row, blocked] = -np.inf
        return scores


def _utf8_pending(data: bytes) -> int:
    """How many continuation bytes the end of ``data`` still waits for (0: it ends a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        size = (
            2
            if byte & 0xE0 == 0xC0
            else 3
            if byte & 0xF0 == 0xE0
            else 4
            if byte & 0xF8 == 0xF0
            else 1
        )
        return max(0, size - back)
    return 0


class WholeCharacters:
    """Only tokens that keep the message valid UTF-8: a token may start with continuation bytes
    only to finish the character the text ends inside, and the end (or a stop) never comes in the
    middle of one. Byte-level BPE can write a lone or stray byte; decoded, it became the
    replacement character a user saw (`+ 'ago\ufffd`)."""

    def __init__(self, table: TokenTable, start: int):
        self.table, self.start = table, start
        self.masks = table.utf8_masks()

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        for row, seq in enumerate(seqs):
            pending = _utf8_pending(self.table.text(seq[self.start :])[-4:])
            mask = self.masks[pending]
            width = min(mask.shape[0], scores.shape[1])
            scores[row, :width][~mask[:width]] = -np.inf
        return scores


class MessageNoRepeatNGram:
    """no_repeat_ngram_size over the message tokens only (from position ``start``)."""

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        n = self.n
        for row, seq in enumerate(seqs):
            toks = seq[self.start :]
            if len(toks) < n:
                continue
            prev = tuple(toks[len(toks) - n + 1 :])
            banned = [
                toks[i + n - 1]
                for i in range(len(toks) - n + 1)
                if tuple(toks[i : i + n - 1]) == prev
            ]
            if banned:
                scores[row, banned] = -np.inf
        return scores


class PromptCache:
    """Prompt states of recent prompts, so a prompt that extends one of them only runs its new
    tokens.

    While the diff and history stay the same and the user keeps typing, each prompt extends the
    previous one (the typed text is at its end): only the new tokens go through the model. The
    context alone (up to ``<|msg|>``) is kept too, so deleting typed text still reuses it. A
    runtime's `prefill` never changes the state it extends, so entries are kept as they are.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.entries: list[tuple[tuple[int, ...], Any, np.ndarray]] = []  # (ids, state, logits)
        self.reused_tokens = 0  # of the last prefill, for tests and benchmarks

    def _store(self, ids: tuple[int, ...], state: Any, logits: np.ndarray) -> None:
        self.entries = [e for e in self.entries if e[0] != ids]
        self.entries.insert(0, (ids, state, logits))
        del self.entries[self.keep :]

    def prefill(self, runtime: Any, ids: list[int], context_len: int) -> tuple[Any, np.ndarray]:
        """The prompt state holding ``ids`` and its last logits."""
        key = tuple(ids)
        best = None
        for entry in self.entries:
            n = len(entry[0])
            if n <= len(key) and key[:n] == entry[0] and (best is None or n > len(best[0])):
                best = entry
        if best is not None and len(best[0]) == len(key):
            self.reused_tokens = len(key)
            return best[1], best[2]
        if best is None:
            state, done = None, 0
            self.reused_tokens = 0
            if 0 < context_len < len(key):  # the context first: it outlives any typed text
                state, logits = runtime.prefill(None, list(key[:context_len]))
                self._store(key[:context_len], state, logits)
                done = context_len
        else:
            state, done = best[1], len(best[0])
            self.reused_tokens = done
        state, logits = runtime.prefill(state, list(key[done:]))
        self._store(key, state, logits)
        return state, logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    part = np.argpartition(-values, k - 1)[:k] if k < values.size else np.arange(values.size)
    return part[np.lexsort((part, -values[part]))]


def beam_search(
    runtime: Any,
    prompt_ids: list[int],
    message_start: int,
    processors: list[Any],
    beams: int,
    max_new: int,
    eos_id: int,
    cache: PromptCache | None = None,
    length_penalty: float = 1.0,
    stops: Any = None,
    cancelled: Any = None,
) -> list[tuple[list[int], float]]:
    """Beam search on a runtime (`cmc.runtime`); ``beams=1`` is greedy. Returns (tokens, score),
    best first; pinned to transformers' `generate` (tests/test_beam.py).

    Scores are summed log-probabilities divided by length ** length_penalty (as in transformers).
    ``stops(tokens, token)`` may end a hypothesis on other tokens than ``eos_id`` (without them).
    ``cancelled()``, checked before each step, abandons the search (`Cancelled`).
    """
    if cache is not None:
        state, logits = cache.prefill(runtime, prompt_ids, message_start)
    else:
        state, logits = runtime.prefill(None, prompt_ids)
    search = runtime.beams(state, max_new)
    logits = logits[None, :]
    seqs: list[list[int]] = [list(prompt_ids)]
    running = np.zeros(1, dtype=np.float32)
    finished: list[tuple[list[int], float]] = []
    start = len(prompt_ids)
    for step in range(max_new):
        if cancelled is not None and cancelled():
            raise Cancelled("the request was abandoned")
        logp = _log_softmax(np.asarray(logits, dtype=np.float32))
        for proc in processors:
            logp = proc(seqs, logp)
        cand = (running[:, None] + logp).reshape(-1)
        top_idx = _top(cand, min(2 * beams, cand.size))
        vocab = logp.shape[-1]
        last = step + 1 == max_new
        keep_rows, keep_tokens, keep_scores = [], [], []
        for rank, idx in enumerate(top_idx.tolist()):
            score = float(cand[idx])
            if score == -float("inf"):
                break
            row, token = divmod(idx, vocab)
            if token == eos_id or (stops is not None and stops(seqs[row][start:], token)):
                if rank < beams:  # as in transformers: an end only counts among the top `beams`
                    tokens = seqs[row][start:]
                    finished.append((tokens, score / (len(tokens) + 1) ** length_penalty))
            else:
                if last and rank < beams:  # out of room: the top beams end here, as in transformers
                    tokens = [*seqs[row][start:], token]
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
        running = np.asarray(keep_scores, dtype=np.float32)
        seqs = [[*seqs[r], t] for r, t in zip(keep_rows, keep_tokens)]
        logits = runtime.step(search, np.asarray(keep_rows), np.asarray(keep_tokens))
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
    support: Any = None,
    recall: Any = None,
) -> list[Candidate]:
    """Up to ``settings.num_candidates`` distinct completions of ``typed``, best first.

    ``prompt`` was built (`cmc.prompt.build_prompt`) from the head of ``typed`` (`split_typed`).
    With ``support`` (`cmc.specifics.Support`), `cmc.specifics.SpecificsConstraint` keeps the
    search from stating what the context does not hold and from degenerate text. With ``recall``
    (`cmc.memory.Recall`), the most alike earlier commits' messages vote on the next tokens
    (`cmc.knn`).
    """
    head, tail = split_typed(typed)
    n = settings.num_candidates
    prompt_ids, message_start = prompt.input_ids, prompt.message_start
    eos_id = getattr(model, "eos_id", None)
    if eos_id is None:
        eos_id = eos_token_id(tokenizer)
    table = TokenTable.of(tokenizer)
    start = len(prompt_ids)
    processors: list[Any] = []
    if recall is not None:  # first: it mixes probabilities, the others only rule tokens out
        from cmc.knn import neighbour_tokens

        knn = neighbour_tokens(recall, tokenizer, table, typed, message_start, eos_id,
                               settings.stop_at_newline)  # fmt: skip
        if knn is not None:
            processors.append(knn)
    if support is not None and support.name_counts:
        from cmc import copying

        if copying.TYPED_LAMBDA > 0 or copying.MODEL_LAMBDA > 0:
            processors.append(copying.CopyNames(table, support.name_counts, start, head, tail,
                                                copying.TYPED_LAMBDA, copying.MODEL_LAMBDA,
                                                copying.MIN_MODEL_WORD,
                                                copying.MIN_TYPED_WORD,
                                                support.sorted_names()))  # fmt: skip
    processors.append(TypedTailConstraint(table, tail, start))
    processors.append(WholeCharacters(table, start))
    if settings.no_repeat_ngram_size:
        processors.append(MessageNoRepeatNGram(settings.no_repeat_ngram_size, message_start))
    if support is not None:
        from cmc.specifics import SpecificsConstraint

        processors.append(SpecificsConstraint(table, support, start, head, tail))
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
