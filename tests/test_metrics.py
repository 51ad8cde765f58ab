"""The evaluation metrics against values computed by hand: every quality number in the README
rests on them (B-Norm = sentence BLEU, add-1 smoothing for n > 1, lowercased, as in the paper)."""

from __future__ import annotations

import pytest

pytest.importorskip("sacrebleu")

from cmc.training.evaluate import exact_match, score, typed_prefix


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
