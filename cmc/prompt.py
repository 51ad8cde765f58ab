"""The prompt format: (processed diff, author history, message) → token ids, for training and inference.

One function, `build_prompt`, builds every model input cmc uses, so training and completion can
never drift apart (the paper's reference code had exactly that bug). The layout is::

    <|endoftext|> <|diff|> DIFF [<|files|> F1 <|sep|> ... Fj] <|history|> H1 <|sep|> ... Hk [<|recall|> R1 <|sep|> ... Rm] <|msg|> MESSAGE <|endoftext|>

* DIFF is the processed diff (`cmc.diffs.process_diff`), cut to ``budget.diff_tokens`` tokens.
* F1..Fj (only for a model whose ``budget.file_history_tokens`` is above 0) are the messages of earlier
  commits, by anyone, that touched the same files, oldest → newest; the newest that fit
  ``budget.file_history_tokens`` are kept, each cut to ``budget.file_history_message_tokens``. The
  section carries the repository's scopes and words ("docs(readme):", a component's name).
* H1..Hk are the author's earlier messages in this repository, oldest → newest; when they do not
  fit ``budget.history_tokens``, the newest are kept. Each is cut to ``budget.history_message_tokens``.
  (Both histories are cleaned as the training messages are and never hold the commit itself.)
  Without history the ``<|history|>`` marker is followed directly by ``<|msg|>``.
* R1..Rm (only for a model whose ``budget.recall_tokens`` is above 0) are the messages of the
  repository's earlier commits whose changes are most like this one (`cmc.memory.Recall`, only
  ancestors of the commit's parent), least alike → most alike, distinct; the most alike that fit
  ``budget.recall_tokens`` are kept, each cut to ``budget.recall_message_tokens``. Last before the
  message, so the closest precedent sits next to what the model writes.
* MESSAGE is the whole message in training (loss mask 1 on its tokens and the closing
  ``<|endoftext|>``, 0 on everything before), or the typed text at inference (no closing token).
* The diff and history come before the message, so while a user keeps typing the prompt only grows
  at its end: a cached prefix stays valid (the daemon relies on that).

Typed text that ends inside a word is split by `split_typed` at its last whitespace run: the head
goes into the prompt (it tokenizes exactly as in training, since byte-level BPE attaches a space to
the word after it), and the tail, e.g. ``" bu"`` of ``"Fix the bu"``, is left for constrained
decoding (`cmc.decoding`) to regenerate, so the word can finish as the tokenizer would split it.

Markers are single special tokens in cmc's own tokenizers; with a tokenizer that lacks them they are
encoded as plain text, so any causal LM can be prompted (and fine-tuned) the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

BOS = "<|endoftext|>"
EOS = "<|endoftext|>"
DIFF = "<|diff|>"
HISTORY = "<|history|>"
SEP = "<|sep|>"
MSG = "<|msg|>"
FILES = "<|files|>"
RECALL = "<|recall|>"  # not in the bundled tokenizer's specials: encoded as text there
SPECIAL_TOKENS = [EOS, DIFF, HISTORY, SEP, MSG, FILES, RECALL]

# Characters of raw text tokenized at most per allowed token: a cheap cut before tokenizing, so a
# huge diff never reaches the tokenizer whole.
_CHARS_PER_TOKEN_CAP = 12
_LAST_WS = re.compile(r"\s+\S*$")
MAX_TAIL_CHARS = 48  # longest half-typed word healed by constrained decoding
FILE_HISTORY_KEEP = 8  # file-history messages gathered per commit (hook and training data alike)


@dataclass(frozen=True)
class Budget:
    """Token budgets of the prompt's parts."""

    diff_tokens: int = 512
    history_tokens: int = 192
    history_message_tokens: int = 48
    message_tokens: int = 96
    file_history_tokens: int = 0  # 0: no file-history section (the models trained without one)
    file_history_message_tokens: int = 32
    recall_tokens: int = 0  # 0: no recall section (every model before the repository memory)
    recall_message_tokens: int = 32


DEFAULT_BUDGET = Budget()


@dataclass
class Prompt:
    input_ids: list[int]
    loss_mask: list[int]
    message_start: int  # index of the first message token (just after <|msg|>)
    history_used: int = 0
    file_history_used: int = 0
    recall_used: int = 0


def _marker_ids(tokenizer: Any, marker: str) -> list[int]:
    tid = tokenizer.convert_tokens_to_ids(marker)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
        return [tid]
    return tokenizer.encode(marker, add_special_tokens=False)


@dataclass(frozen=True)
class Markers:
    """Token ids of the markers for one tokenizer (looked up once per tokenizer; plain lists, so a
    data pack can carry them and be assembled without the tokenizer)."""

    bos: list[int]
    eos: list[int]
    diff: list[int]
    history: list[int]
    sep: list[int]
    msg: list[int]
    files: list[int]
    recall: list[int] = ()

    _cache: ClassVar[dict[int, Markers]] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> Markers:
        key = id(tokenizer)
        if key not in cls._cache:
            cls._cache[key] = cls(*(_marker_ids(tokenizer, t) for t in (BOS, EOS, DIFF, HISTORY, SEP, MSG, FILES, RECALL)))  # fmt: skip
        return cls._cache[key]

    def to_json(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict) -> Markers:  # packs made before the recall section lack it
        return cls(
            **{f.name: [int(i) for i in data[f.name]] for f in fields(cls) if f.name in data}
        )


def encode_text(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """Tokenize plain text (no special tokens added), cut to ``max_tokens``."""
    if not text or max_tokens <= 0:
        return []
    text = text[: max_tokens * _CHARS_PER_TOKEN_CAP]
    return tokenizer.encode(text, add_special_tokens=False)[:max_tokens]


def eos_token_id(tokenizer: Any) -> int:
    return Markers.of(tokenizer).eos[-1]


def split_typed(typed: str) -> tuple[str, str]:
    """Split typed text into the head that goes in the prompt and the tail decoding must regenerate.

    >>> split_typed("Fix the bu")
    ('Fix the', ' bu')
    >>> split_typed("Fix ")
    ('Fix', ' ')
    >>> split_typed("Fi")
    ('', 'Fi')
    """
    match = _LAST_WS.search(typed)
    head, tail = ("", typed) if match is None else (typed[: match.start()], typed[match.start() :])
    if len(tail) > MAX_TAIL_CHARS:  # no word is that long: not worth regenerating byte by byte
        return typed, ""
    return head, tail


def _newest_that_fit(pieces: list[list[int]], room: int, sep: list[int]) -> tuple[list[int], int]:
    """The newest ``pieces`` (oldest → newest, each already cut) that fit ``room`` tokens, joined
    by ``sep``, the oldest kept one first; and how many were kept."""
    kept: list[list[int]] = []
    for piece in reversed(pieces):
        cost = len(piece) + len(sep)
        if not piece or cost > room:
            break
        kept.append(piece)
        room -= cost
    ids: list[int] = []
    for i, piece in enumerate(reversed(kept)):
        ids += (sep if i else []) + piece
    return ids, len(kept)


def build_prompt(
    tokenizer: Any,
    diff: str,
    history: list[str] | None,
    message: str,
    *,
    finished: bool,
    budget: Budget = DEFAULT_BUDGET,
    file_history: list[str] | None = None,
    recalled: list[str] | None = None,
) -> Prompt:
    """Token ids and loss mask for one example (see the module docstring for the layout).

    ``finished`` is True in training (``message`` is the whole message and gets the closing token)
    and False at inference (``message`` is the head of the typed text, see `split_typed`).
    ``file_history`` is read only when ``budget.file_history_tokens`` is above 0, ``recalled``
    (least alike → most alike) only when ``budget.recall_tokens`` is.
    """

    def newest(texts: list[str] | None, each: int, room: int) -> list[list[int]]:
        # Only the newest that can fit are worth tokenizing (each costs at least 2 tokens).
        return [encode_text(tokenizer, t, each) for t in (texts or [])[-(room // 2 + 1) :]]

    files = []
    if budget.file_history_tokens > 0:
        files = newest(file_history, budget.file_history_message_tokens, budget.file_history_tokens)
    alike = []
    if budget.recall_tokens > 0:
        alike = newest(recalled, budget.recall_message_tokens, budget.recall_tokens)
    return assemble_prompt(
        Markers.of(tokenizer),
        encode_text(tokenizer, diff, budget.diff_tokens),
        newest(history, budget.history_message_tokens, budget.history_tokens),
        encode_text(tokenizer, message, budget.message_tokens),
        finished=finished,
        budget=budget,
        file_history=files,
        recalled=alike,
    )


def assemble_prompt(
    m: Markers,
    diff: list[int],
    history: list[list[int]],
    message: list[int],
    *,
    finished: bool,
    budget: Budget,
    file_history: list[list[int]] = (),
    recalled: list[list[int]] = (),
) -> Prompt:
    """`build_prompt` on text already tokenized and cut to its budget (each piece by its own: diff,
    history, file-history and recalled messages, message). Data packs are assembled with it."""
    ids = m.bos + m.diff + list(diff)
    files_used = 0
    if budget.file_history_tokens > 0:
        piece, files_used = _newest_that_fit(list(file_history), budget.file_history_tokens, m.sep)
        ids += m.files + piece
    piece, used = _newest_that_fit(history, budget.history_tokens, m.sep)
    ids += m.history + piece
    recall_used = 0
    if budget.recall_tokens > 0:
        if not m.recall:
            raise ValueError(
                "these markers have no <|recall|> (a data pack made before the section)"
            )
        piece, recall_used = _newest_that_fit(list(recalled), budget.recall_tokens, m.sep)
        ids += m.recall + piece
    ids += m.msg
    context_len = len(ids)
    ids += message
    if finished and len(message) < budget.message_tokens:
        ids += m.eos
    mask = [0] * context_len + [1] * (len(ids) - context_len) if finished else [0] * len(ids)
    return Prompt(ids, mask, context_len, history_used=used, file_history_used=files_used,
                  recall_used=recall_used)  # fmt: skip


# --- the paper's encoder-decoder layout -----------------------------------------------------------

ENCODER_END = -1  # in a seq2seq prompt's ids: encoder ids, ENCODER_END, decoder ids


@dataclass(frozen=True)
class Seq2SeqLayout:
    """The CommitChronicle paper's input layout for its released encoder-decoders
    (`JetBrains-Research/cmg-codet5-with-history` and siblings), from their evaluation collator:

    * encoder: ``[BOS] diff [EOS]``, the diff cut to ``encoder_tokens - 2``;
    * decoder: ``[BOS] history_1 [SEP] ... history_k [SEP] typed``, history oldest → newest, the
      newest messages that fit ``decoder_tokens`` together with the typed text, one token and
      ``max_new_tokens`` (each whole or not at all).
    """

    encoder_tokens: int = 512
    decoder_tokens: int = 512
    max_new_tokens: int = 15


def _special_id(tokenizer: Any, *names: str) -> int:
    for name in names:
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(tid, int):
            return tid
    raise ValueError(f"the tokenizer has no {' or '.join(names)} token")


def build_seq2seq_prompt(
    tokenizer: Any,
    diff: str,
    history: list[str] | None,
    message: str,
    layout: Seq2SeqLayout = Seq2SeqLayout(),
) -> Prompt:
    """Encoder and decoder ids of one completion in the paper's layout, as one `Prompt` whose ids
    are ``encoder + [ENCODER_END] + decoder`` (so a prompt cache keyed by ids stays correct)."""
    bos = _special_id(tokenizer, "bos", "cls")
    eos = _special_id(tokenizer, "eos")
    sep = _special_id(tokenizer, "sep", "eos")
    diff_ids = encode_text(tokenizer, diff, layout.encoder_tokens - 2)
    encoder = [bos, *diff_ids, eos]
    typed = encode_text(tokenizer, message, layout.decoder_tokens - 1)
    used = len(typed) + 1 + layout.max_new_tokens
    kept: list[list[int]] = []
    for past in reversed(history or []):
        piece = tokenizer.encode(past, add_special_tokens=False)
        if used + len(piece) + 1 > layout.decoder_tokens:
            break
        used += len(piece) + 1
        kept.append([*piece, sep])
    decoder = [bos] + [t for piece in reversed(kept) for t in piece]
    ids = [*encoder, ENCODER_END, *decoder, *typed]
    start = len(encoder) + 1 + len(decoder)
    return Prompt(ids, [0] * len(ids), start, history_used=len(kept))
