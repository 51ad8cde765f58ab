"""Data packs: processed rows, tokenized and cut to a model's budget, small enough to travel.

GPU time comes in short trips to a machine that takes at most 64 MiB of everything, the project
included, so training data travels as packs (``NAME.cmcpack``, each at most ``--max-mib``): one
zstd-compressed ``.npz`` holding

* ``meta``: the format, the pack's name, the prompt budget, the marker ids and a fingerprint of the
  tokenizer (so a pack is never assembled for another one), its examples and where they came from;
* every row's diff, processed (`cmc.diffs.process_diff`) and tokenized, already cut to the budget;
* every distinct message once — a row's own, and those of its author history, file history and
  recall section, which repeat across rows — tokenized, and per row the indices of its message,
  its histories and its recalled messages.

`unpack` assembles the rows with `cmc.prompt.assemble_prompt` (the function `build_prompt` uses)
into the trainer's flat format (`cmc.training.tokens`), without a tokenizer and in seconds; a test
pins the result to `pretokenize_split` of the same rows, token for token.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cmc import CmcError
from cmc.diffs import process_diff
from cmc.prompt import Budget, Markers, assemble_prompt, encode_text

FORMAT = "cmcpack-1"
SUFFIX = ".cmcpack"
ZSTD_LEVEL = 19


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary and specials: packs are assembled only for it."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def _ragged(pieces: list[list[int]], dtype) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    flat = np.fromiter((t for p in pieces for t in p), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


def encode_pack(
    rows: list[dict], encoder: Any, budget: Budget, name: str, source: str = ""
) -> bytes:
    """One pack of ``rows`` (processed rows: ``mods``, ``message``, ``history``, ``file_history``,
    ``recalled``)."""
    import pyarrow as pa

    longest = max(budget.message_tokens, budget.history_message_tokens,
                  budget.file_history_message_tokens, budget.recall_message_tokens)  # fmt: skip
    most_history = budget.history_tokens // 2 + 1  # more can never fit (see build_prompt)
    most_files = budget.file_history_tokens // 2 + 1 if budget.file_history_tokens > 0 else 0
    most_alike = budget.recall_tokens // 2 + 1 if budget.recall_tokens > 0 else 0
    table: dict[str, int] = {}
    messages: list[list[int]] = []

    def ref(text: str) -> int:
        if text not in table:
            table[text] = len(messages)
            messages.append(encode_text(encoder, text, longest))
        return table[text]

    diffs, own, history, files, alike = [], [], [], [], []
    for row in rows:
        diffs.append(encode_text(encoder, process_diff(row["mods"]), budget.diff_tokens))
        own.append(ref(row["message"]))
        history.append([ref(t) for t in (row.get("history") or [])[-most_history:]])
        files.append([ref(t) for t in (row.get("file_history") or [])[-most_files:]] if most_files else [])  # fmt: skip
        alike.append([ref(t) for t in (row.get("recalled") or [])[-most_alike:]] if most_alike else [])  # fmt: skip
    meta = {
        "format": FORMAT,
        "name": name,
        "examples": len(rows),
        "budget": asdict(budget),
        "markers": Markers.of(encoder).to_json(),
        "tokenizer": tokenizer_fingerprint(encoder),
        "source": source,
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    arrays["diff_tokens"], arrays["diff_offsets"] = _ragged(diffs, np.uint16)
    arrays["msg_tokens"], arrays["msg_offsets"] = _ragged(messages, np.uint16)
    arrays["message"] = np.asarray(own, dtype=np.int32)
    arrays["history"], arrays["history_offsets"] = _ragged(history, np.int32)
    arrays["file_history"], arrays["file_history_offsets"] = _ragged(files, np.int32)
    arrays["recalled"], arrays["recalled_offsets"] = _ragged(alike, np.int32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    packed = pa.Codec("zstd", compression_level=ZSTD_LEVEL).compress(raw, asbytes=True)
    return len(raw).to_bytes(8, "little") + packed


def read_pack(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A pack's meta and arrays."""
    import pyarrow as pa

    data = Path(path).read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        raw = pa.Codec("zstd").decompress(data[8:], decompressed_size=size, asbytes=True)
        with np.load(io.BytesIO(raw)) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except Exception as exc:  # any damage is the same one-line error
        raise CmcError(f"{path}: not a readable cmc data pack ({type(exc).__name__})") from exc
    if meta.get("format") != FORMAT:
        raise CmcError(f"{path}: pack format {meta.get('format')!r}, expected {FORMAT}")
    return meta, arrays


def pack_examples(meta: dict, arrays: dict[str, np.ndarray]):
    """(token ids, message start) of each row of one pack, assembled as `build_prompt` would."""
    budget = Budget(**meta["budget"])
    markers = Markers.from_json(meta["markers"])
    msg_tok, msg_off = arrays["msg_tokens"], arrays["msg_offsets"]
    messages = [msg_tok[msg_off[i] : msg_off[i + 1]].tolist() for i in range(len(msg_off) - 1)]
    d_tok, d_off = arrays["diff_tokens"], arrays["diff_offsets"]
    h, h_off = arrays["history"], arrays["history_offsets"]
    f, f_off = arrays["file_history"], arrays["file_history_offsets"]
    no_recall = (np.zeros(0, np.int32), np.zeros(meta["examples"] + 1, np.int64))  # older packs
    r, r_off = arrays.get("recalled", no_recall[0]), arrays.get("recalled_offsets", no_recall[1])
    for i in range(meta["examples"]):
        files = f[f_off[i] : f_off[i + 1]]
        prompt = assemble_prompt(
            markers,
            d_tok[d_off[i] : d_off[i + 1]].tolist(),
            [messages[j][: budget.history_message_tokens] for j in h[h_off[i] : h_off[i + 1]]],
            messages[arrays["message"][i]][: budget.message_tokens],
            finished=True,
            budget=budget,
            file_history=[messages[j][: budget.file_history_message_tokens] for j in files],
            recalled=[
                messages[j][: budget.recall_message_tokens] for j in r[r_off[i] : r_off[i + 1]]
            ],
        )
        yield prompt.input_ids, prompt.message_start


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unpack(packs: list[str | Path], out_dir: str | Path, split: str = "train") -> dict:
    """Assemble ``packs`` into ``OUT/SPLIT.tokens.u16`` + ``SPLIT.index.npy`` + ``SPLIT.meta.json``
    (`cmc.training.tokens`); the meta lists the packs (name, sha256, examples) for the ledger."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: list[tuple[int, int, int]] = []
    offset, first, used = 0, None, []
    tokens_path = out / f"{split}.tokens.u16"
    with open(str(tokens_path) + ".tmp", "wb") as f:
        for path in packs:
            meta, arrays = read_pack(path)
            key = (meta["budget"], meta["markers"], meta["tokenizer"])
            if first is None:
                first = key
            elif key != first:
                raise CmcError(f"{path}: built for another tokenizer or budget than {packs[0]}")
            for ids, start in pack_examples(meta, arrays):
                f.write(np.asarray(ids, dtype=np.uint16).tobytes())
                index.append((offset, len(ids), start))
                offset += len(ids)
            used.append({"name": meta["name"], "sha256": file_sha256(path),
                         "examples": meta["examples"], "source": meta.get("source", "")})  # fmt: skip
    if first is None:
        raise CmcError("no packs to unpack")
    os.replace(str(tokens_path) + ".tmp", tokens_path)
    np.save(out / f"{split}.index.npy", np.asarray(index, dtype=np.int64).reshape(-1, 3))
    meta_out = {"examples": len(index), "tokens": int(offset), "budget": first[0],
                "tokenizer": first[2], "packs": used}  # fmt: skip
    tmp = out / f"{split}.meta.json.tmp"
    tmp.write_text(json.dumps(meta_out))
    os.replace(tmp, out / f"{split}.meta.json")  # last: its presence says the split is complete
    return meta_out


def write_packs(
    rows: list[dict],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    prefix: str,
    budget: Budget,
    max_mib: float = 40.0,
    seed: int = 0,
    source: str = "",
    progress: bool = True,
) -> list[dict]:
    """Shuffle ``rows`` (seeded: every pack a sample of all repositories) and write them as packs
    of at most ``max_mib`` each, ``PREFIX-0000.cmcpack``, …; returns name, examples, bytes each."""
    from transformers import AutoTokenizer

    from cmc.training.tokens import CachedEncoder

    encoder = CachedEncoder(AutoTokenizer.from_pretrained(tokenizer_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    limit = int(max_mib * 2**20)
    probe = [rows[i] for i in order[:2000]]
    per_byte = len(probe) / max(1, len(encode_pack(probe, encoder, budget, "probe")))
    per_pack = max(1, int(limit * 0.9 * per_byte))
    written: list[dict] = []
    todo = [order[i : i + per_pack] for i in range(0, len(order), per_pack)]
    while todo:
        chunk = todo.pop(0)
        name = f"{prefix}-{len(written):04d}"
        data = encode_pack([rows[i] for i in chunk], encoder, budget, name, source)
        if len(data) > limit and len(chunk) > 1:  # the probe's estimate was off: halve it
            todo[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
            continue
        target = out / f"{name}{SUFFIX}"
        tmp = out / f"{name}{SUFFIX}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append({"name": name, "examples": len(chunk), "bytes": len(data)})
        if progress:
            mib = len(data) / 2**20
            print(f"{target}: {len(chunk)} examples, {mib:.1f} MiB, "
                  f"{len(chunk) / mib:,.0f} examples/MiB", flush=True)  # fmt: skip
    return written
