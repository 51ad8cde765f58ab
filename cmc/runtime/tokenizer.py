"""A model folder's `tokenizer.json` through the `tokenizers` library alone (no transformers import).

It answers the part of the transformers tokenizer API cmc uses (prompt building, the token table of
the typed-tail constraint, `cmc prompt`), with the same ids: transformers' fast tokenizers are this
library underneath. Markers and special tokens come from ``tokenizer_config.json`` as transformers
reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


def _content(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken written out
        return value.get("content")
    return value if isinstance(value, str) else None


class LeanTokenizer:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self._tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.eos_token = _content(cfg.get("eos_token"))
        self.bos_token = _content(cfg.get("bos_token"))
        self.unk_token = _content(cfg.get("unk_token"))
        self.pad_token = _content(cfg.get("pad_token"))
        self.added_tokens_decoder = self._tk.get_added_tokens_decoder()
        special = {t.content for t in self.added_tokens_decoder.values() if t.special}
        for name in ("eos_token", "bos_token", "unk_token", "pad_token"):
            if getattr(self, name):
                special.add(getattr(self, name))
        self.all_special_ids = sorted(
            i for i in (self._tk.token_to_id(t) for t in special) if i is not None
        )
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=False)

    @property
    def eos_token_id(self) -> int | None:
        return self._tk.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def unk_token_id(self) -> int | None:
        return self._tk.token_to_id(self.unk_token) if self.unk_token else None

    def __len__(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tk.decoder
        return decoder.decode(tokens) if decoder is not None else "".join(tokens)
