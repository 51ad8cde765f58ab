"""Data packs: what travels to a GPU machine assembles into exactly the trainer's own data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cmc import CmcError
from cmc.prompt import Budget
from cmc.training.pack import read_pack, unpack, write_packs
from cmc.training.tokens import TokenDataset, pretokenize_split

WORDS = ["parser", "cache", "client", "server", "logger", "config", "handler", "request"]


def rows(n: int) -> list[dict]:
    """Rows as processing leaves them: histories that repeat messages, long and short texts."""
    out: list[dict] = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        body = "".join(
            f"+    {w}_{i}_{k} = make_{w}({k}, '{'x' * (i % 13)}')\n" for k in range(3 + i % 40)
        )
        message = f"Fix {w} handling for case {i}" + (" with a long tail" * (i % 30))
        out.append({
            "mods": [{"change_type": "MODIFY", "old_path": f"src/{w}.py", "new_path": f"src/{w}.py", "diff": body}],
            "message": message,
            "history": [r["message"] for r in out[-(i % 37):]] if i % 37 else [],
            "file_history": [r["message"] for r in out if r["mods"][0]["new_path"] == f"src/{w}.py"][-8:],
            "recalled": [r["message"] for r in out[-(i % 11):]][::-1] if i % 11 else [],
        })  # fmt: skip
    return out


@pytest.mark.parametrize(("file_history_tokens", "recall_tokens"), [(0, 0), (48, 0), (0, 40)])
def test_unpacked_packs_equal_the_pretokenized_rows_token_for_token(
    token_data, tmp_path: Path, file_history_tokens: int, recall_tokens: int
):
    _, tok = token_data
    budget = replace(Budget(diff_tokens=96, history_tokens=64, history_message_tokens=16,
                            message_tokens=24), file_history_tokens=file_history_tokens,
                     file_history_message_tokens=12, recall_tokens=recall_tokens,
                     recall_message_tokens=10)  # fmt: skip
    data = rows(150)
    written = write_packs(data, tok, tmp_path / "packs", "t", budget, max_mib=0.002, progress=False)
    assert len(written) > 1 and all(w["bytes"] <= 0.002 * 2**20 for w in written)
    assert sum(w["examples"] for w in written) == 150
    packs = sorted((tmp_path / "packs").glob("*.cmcpack"))
    meta = unpack(packs, tmp_path / "unpacked", "train")
    assert [p["name"] for p in meta["packs"]] == [w["name"] for w in written]
    for p in packs:
        m, arrays = read_pack(p)
        refs = m["examples"] + len(arrays["history"]) + len(arrays["file_history"])
        assert len(arrays["msg_offsets"]) - 1 < refs  # a repeated message is stored once
    pretokenize_split(data, tok, tmp_path / "reference", "train", budget, progress=False)
    ref = TokenDataset(tmp_path / "reference", "train")
    got = TokenDataset(tmp_path / "unpacked", "train")
    assert len(got) == len(ref) == 150
    # The packs hold the rows shuffled: compare as multisets of examples.
    want = sorted((tuple(ref[i][0].tolist()), ref[i][1]) for i in range(len(ref)))
    have = sorted((tuple(got[i][0].tolist()), got[i][1]) for i in range(len(got)))
    assert have == want
    files_marker = m["markers"]["files"][0]
    assert any(files_marker in ids for ids, _ in have) == (file_history_tokens > 0)
    recall_marker = m["markers"]["recall"][0]
    assert any(recall_marker in ids for ids, _ in have) == (recall_tokens > 0)


def test_a_pack_made_before_the_recall_section_still_unpacks(token_data, tmp_path: Path):
    """Packs written before the section existed have no recalled arrays and no recall marker."""
    import io

    import pyarrow as pa

    from cmc.training.pack import FORMAT

    _, tok = token_data
    write_packs(rows(30), tok, tmp_path / "new", "t", Budget(diff_tokens=64), progress=False)
    (new,) = (tmp_path / "new").glob("*.cmcpack")
    meta, arrays = read_pack(new)
    assert meta["format"] == FORMAT and "recalled" in arrays
    del arrays["recalled"], arrays["recalled_offsets"], meta["markers"]["recall"]
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    old = tmp_path / "old" / new.name
    old.parent.mkdir()
    old.write_bytes(len(buf.getvalue()).to_bytes(8, "little")
                    + pa.Codec("zstd").compress(buf.getvalue(), asbytes=True))  # fmt: skip
    unpack([new], tmp_path / "from-new")
    unpack([old], tmp_path / "from-old")
    a, b = TokenDataset(tmp_path / "from-new"), TokenDataset(tmp_path / "from-old")
    assert len(a) == len(b) == 30
    assert all(a[i][0].tolist() == b[i][0].tolist() for i in range(30))


def test_damaged_or_mismatched_packs_are_one_line_errors(token_data, tmp_path: Path):
    _, tok = token_data
    write_packs(rows(20), tok, tmp_path / "a", "a", Budget(), progress=False)
    write_packs(rows(20), tok, tmp_path / "b", "b", Budget(diff_tokens=64), progress=False)
    a, b = next((tmp_path / "a").glob("*.cmcpack")), next((tmp_path / "b").glob("*.cmcpack"))
    with pytest.raises(CmcError, match="another tokenizer or budget"):
        unpack([a, b], tmp_path / "out")
    broken = tmp_path / "broken.cmcpack"
    broken.write_bytes(a.read_bytes()[:-100])
    with pytest.raises(CmcError, match="not a readable cmc data pack") as err:
        unpack([broken], tmp_path / "out2")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out2" / "train.meta.json").exists()  # nothing half-written looks done
    meta = json.loads(json.dumps(unpack([a], tmp_path / "out3")))
    assert meta["examples"] == 20 and np.load(tmp_path / "out3" / "train.index.npy").shape == (
        20,
        3,
    )
