"""Pre-tokenized training data: every example through `cmc.prompt.build_prompt`, stored flat.

A split becomes two files: ``SPLIT.tokens.u16`` (all examples' token ids back to back, uint16) and
``SPLIT.index.npy`` (int64 rows of ``offset, length, message_start``). The loss covers tokens from
``message_start`` on, which is exactly the loss mask `build_prompt` returns. Small, memory-mapped,
and free of any tokenizer at training time, so it travels to a GPU machine as is.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cmc.diffs import process_diff
from cmc.prompt import DEFAULT_BUDGET, Budget, build_prompt


class CachedEncoder:
    """A tokenizer whose `encode` remembers short texts (history messages repeat across examples)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.unk_token_id = tokenizer.unk_token_id
        self._encode = lru_cache(maxsize=200_000)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if len(text) > 400:
            return self.tokenizer.encode(text, add_special_tokens=False)
        return list(self._encode(text))

    def convert_tokens_to_ids(self, token: str):
        return self.tokenizer.convert_tokens_to_ids(token)

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()


def example_ids(
    encoder: Any, row: dict, budget: Budget, use_history: bool = True
) -> tuple[list[int], int]:
    """Token ids and message start of one processed row (CommitChronicle schema + ``history``)."""
    prompt = build_prompt(
        encoder,
        process_diff(row["mods"]),
        row.get("history") if use_history else [],
        row["message"],
        finished=True,
        budget=budget,
        file_history=row.get("file_history") if use_history else [],
        recalled=row.get("recalled") if use_history else [],
    )
    return prompt.input_ids, prompt.message_start


_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, budget: dict) -> None:
    from transformers import AutoTokenizer

    _WORKER["encoder"] = CachedEncoder(AutoTokenizer.from_pretrained(tokenizer_dir))
    _WORKER["budget"] = Budget(**budget)


def _encode_chunk(rows: list[dict]) -> list[tuple[list[int], int]]:
    return [example_ids(_WORKER["encoder"], row, _WORKER["budget"]) for row in rows]


def pretokenize_split(
    rows: Any,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    split: str,
    budget: Budget = DEFAULT_BUDGET,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write ``SPLIT.tokens.u16`` and ``SPLIT.index.npy`` for ``rows`` (a list or a Dataset)."""
    from dataclasses import asdict
    from multiprocessing import get_context

    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    chunk = 512
    chunks = (rows[i : i + chunk] for i in range(0, n, chunk))
    if not isinstance(rows, list):  # a datasets.Dataset slice is a dict of columns
        chunks = ([dict(zip(c, vals)) for vals in zip(*c.values())] for c in chunks)
    tokens_path = out / f"{split}.tokens.u16"
    index = np.zeros((n, 3), dtype=np.int64)
    offset, i = 0, 0
    bar = tqdm(total=n, desc=f"tokenize {split}", disable=not progress, unit="ex")
    with tokens_path.open("wb") as f:
        if workers > 1:
            pool = get_context("spawn").Pool(
                workers, _init_worker, (str(tokenizer_dir), asdict(budget))
            )
            results = pool.imap(_encode_chunk, chunks)
        else:
            _init_worker(str(tokenizer_dir), asdict(budget))
            pool, results = None, map(_encode_chunk, chunks)
        for batch in results:
            for ids, msg_start in batch:
                arr = np.asarray(ids, dtype=np.uint16)
                f.write(arr.tobytes())
                index[i] = (offset, len(arr), msg_start)
                offset += len(arr)
                i += 1
            bar.update(len(batch))
        if pool is not None:
            pool.close()
            pool.join()
    bar.close()
    np.save(out / f"{split}.index.npy", index)
    meta = {"examples": n, "tokens": int(offset), "budget": asdict(budget)}
    # Written last, atomically: its presence says the split is complete (a crash before it is redone).
    tmp = out / f"{split}.meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / f"{split}.meta.json")
    return meta


class TokenDataset:
    """Read side: example ``i`` → (token ids, message start), memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str = "train"):
        data_dir = Path(data_dir)
        self.index = np.load(data_dir / f"{split}.index.npy")
        self.tokens = np.memmap(data_dir / f"{split}.tokens.u16", dtype=np.uint16, mode="r")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        offset, length, msg_start = self.index[i]
        return np.asarray(self.tokens[offset : offset + length], dtype=np.int64), int(msg_start)

    def lengths(self) -> np.ndarray:
        return self.index[:, 1]
