"""The evaluation metrics against values computed by hand: every quality number in the README
rests on them (B-Norm = sentence BLEU, add-1 smoothing for n > 1, lowercased, as in the paper)."""

from __future__ import annotations

import pytest

pytest.importorskip("sacrebleu")

from cmc.training.evaluate import (
    added_text,
    code_tokens,
    exact_match,
    score,
    specificity,
    typed_prefix,
)


def test_one_pair_by_hand():
    got = score(["a b c d"], ["a x y z"])
    # 1 of 4 unigrams match; bigrams..4-grams 0 of 3/2/1, smoothed to 1/4, 1/3, 1/2; no brevity penalty
    assert got["B-Norm"] == pytest.approx(100 * (1 / 4 * 1 / 4 * 1 / 3 * 1 / 2) ** 0.25)
    assert got["EditSim"] == pytest.approx(100 * (1 - 3 / 7))  # 3 substitutions in 7 characters
    assert got["ROUGE-L"] == pytest.approx(25.0)  # LCS 1 of 4 words each way
    assert (got["EM@1"], got["EM@2"]) == (100.0, 0.0)
    assert got["count"] == 1


def test_case_counts_for_exact_match_but_not_for_b_norm():
    got = score(["Fix the bug", "abc"], ["fix the bug", "abd"])
    assert got["B-Norm"] == pytest.approx((100 + 0) / 2)  # lowercased: identical; one word: p1 = 0
    assert got["EditSim"] == pytest.approx((100 * (1 - 1 / 11) + 100 * (1 - 1 / 3)) / 2)
    assert got["EM@1"] == 0.0  # "Fix" != "fix", "abc" != "abd"
    assert got["EM@2"] == 0.0  # only the first target has two words


def test_empty_targets_are_skipped_and_short_targets_leave_em_at_k():
    assert score(["anything"], [" "])["B-Norm"] == 0.0
    assert exact_match("Fix it now", "Fix", 2) is None
    assert exact_match("Fix it now", "Fix it later", 2) == 1.0
    assert typed_prefix("Fix the parser", 0.5) == "Fix the"
    assert typed_prefix("Fix the parser", 0.0) == ""


def test_code_tokens_are_identifiers_and_versions_not_words():
    text = (
        "Fix parse_config in ConfigLoader.read for os.path and v2 API; bump to 1.4.2 (the parser)"
    )
    assert code_tokens(text) == {"parse_config", "ConfigLoader.read", "os.path", "1.4.2"}
    assert code_tokens("__init__ and _x and getHTTPResponse and sha256") == {
        "getHTTPResponse", "sha256"
    }  # fmt: skip


def test_copy_rate_and_distinct_suggestions_by_hand():
    added = {
        1: code_tokens(added_text("a.py\n+def parse_config(path):\n-old_name = 1\n context")),
        2: code_tokens(added_text("b.py\n+version = '1.4.2'")),
        3: code_tokens(added_text("c.py\n+x = 1")),
    }
    assert added[1] == {"parse_config"}  # removed and context lines do not count
    records = [
        {"id": 1, "prefix": "Add ", "target": "parse_config helper", "prediction": "parse_config"},
        {"id": 2, "prefix": "Bump to ", "target": "1.4.2", "prediction": "the next version"},
        {"id": 3, "prefix": "Add ", "target": "old_name", "prediction": "parse_config"},
        {"id": 3, "prefix": "Add ", "target": "x", "prediction": "parse_config"},
    ]
    got = specificity(records, added)
    # eligible: 1 and 2 (3's target names nothing its diff adds); hit: 1 only
    assert (got["Copy-n"], got["Copy"]) == (2, 50.0)
    assert (
        got["Distinct"] == 50.0
    )  # 2 distinct of 4: "Add parse_config" (3x), "Bump to the next version"


def test_an_interrupted_evaluation_resumes_with_what_it_had(tmp_path, tiny_model):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import LEARNED_DIFF_FILE, LEARNED_MESSAGE

    from cmc.training.evaluate import run_eval

    raw = "@@ -1,2 +1,4 @@\n def parse(text):\n+    if not text:\n+        return []\n     return text.split()\n"
    mods = [
        {
            "change_type": "MODIFY",
            "old_path": LEARNED_DIFF_FILE,
            "new_path": LEARNED_DIFF_FILE,
            "diff": raw,
        }
    ]
    rows = [
        {"hash": f"h{i}", "mods": mods, "message": LEARNED_MESSAGE, "history": []} for i in range(4)
    ]
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    full = run_eval(
        str(data), str(tiny_model), [0.0, 0.5], [True], None, tmp_path / "full", progress=False
    )
    out = tmp_path / "resumed"
    out.mkdir()
    kept = (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()[:4]
    marked = [
        json.dumps({**json.loads(line), "prediction": json.loads(line)["prediction"] + " KEPT"})
        for line in kept
    ]
    (out / "predictions.jsonl").write_text(
        "\n".join(marked) + '\n{"ratio": 0.5, "hist'
    )  # torn line
    again = run_eval(
        str(data), str(tiny_model), [0.0, 0.5], [True], None, out, progress=False, resume=True
    )
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and sum(x["prediction"].endswith(" KEPT") for x in lines) == 4
    assert full["scores"]["history@0"]["B-Norm"] > 99  # the tiny model knows its message
    assert full["scores"]["history@0"]["Distinct"] == 25.0  # 4 commits, one message
    assert full["scores"]["history@0"]["Copy-n"] == 0  # it names no identifier
    assert again["scores"]["history@0"]["B-Norm"] < 99  # the kept predictions were used, not redone
    assert again["scores"]["history@0.5"] == full["scores"]["history@0.5"]  # the rest computed


def test_trust_columns_count_what_the_suggestion_adds():
    from cmc.complete import Context
    from cmc.training.evaluate import trust

    diff = "setup.cfg\n-version = 2.3.0\n+version = 2.4.1"
    contexts = {1: Context(diff), 2: Context(diff), 3: Context(diff), 4: Context(diff)}
    records = [
        {"id": 1, "prefix": "Bump to ", "prediction": "3.0.0", "target": "2.4.1"},  # invented
        {"id": 2, "prefix": "Bump to ", "prediction": "2.4.1", "target": "2.4.1 in setup.cfg"},
        {"id": 3, "prefix": "Fix the the", "prediction": " parser", "target": " tests"},  # typed
        {
            "id": 4,
            "prefix": "",
            "prediction": "Fix typo typo in Composer.php.php [skip ci]",
            "target": "x",
        },
    ]
    shares = trust(records, contexts)
    assert shares["Unsupported"] == 50.0  # 3.0.0; Composer.php.php
    assert shares["Repeated"] == 25.0  # record 4 only: record 3's repetition was typed
    assert shares["Doubled"] == 25.0 and shares["CI-marker"] == 25.0
    assert shares["Unsupported-real"] == 0.0
