"""Message cleaning and filters, diff processing, and the prompt format."""

from __future__ import annotations

import pytest

from cmc.diffs import Mod, process_diff
from cmc.messages import clean_message, rejection_reason
from cmc.prompt import DIFF, FILES, HISTORY, MSG, RECALL, SEP, Budget, build_prompt, split_typed


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Fix crash (#123)", "Fix crash"),
        ("Fix crash\n\nSigned-off-by: A B <a@b.c>\nCo-authored-by: C <c@d.e>", "Fix crash"),
        ("Fix login, see https://example.com/x for details", "Fix login, see for details"),
        ("Thanks @octocat for the report on JIRA-42", "Thanks for the report on"),
        ("Revert to 3f2a9bc1d4 behaviour", "Revert to behaviour"),
        ("Mail admin@example.org about GH-7", "Mail about"),
        ("Add version alias\n\nCloses #12\nSee https://example.com/x", "Add version alias"),
        ("chore: deploy on Node 16 [ci skip]", "chore: deploy on Node 16"),
        (
            "Fix lock\n\n## Motivation\n\nIt leaked.\n\n- [x] Tests added\n<!-- describe -->\n---",
            "Fix lock\n\nIt leaked.",
        ),
        ("## Release 2.0", "## Release 2.0"),  # a subject stays, whatever it looks like
        # A markdown link keeps its text, not `](` where the address was (dependabot's bumps).
        (
            "Bumps [github/codeql-action](https://github.com/github/codeql-action) from 4.35.1 to 4.35.2.",
            "Bumps github/codeql-action from 4.35.1 to 4.35.2.",
        ),
        ("See [the guide](docs/guide.md#proxy) first", "See the guide first"),
        ("Index with array[i](x) in the loop", "Index with array[i](x) in the loop"),  # code stays
    ],
)
def test_clean_message(raw: str, clean: str):
    assert clean_message(raw) == clean


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Merge branch 'main' into dev", "merge-or-revert"),
        ('Revert "Add feature"', "merge-or-revert"),
        ("Update README.md", "trivial"),
        ("bump version", "trivial"),
        ("Refactoring", "single-word"),
        ("Fix the café parser", "non-ascii"),
        ("Squashed:\n* Add a\n* Fix b\n* Fix c", "squashed"),
        ("Fix race in the scheduler when the queue is empty", None),
    ],
)
def test_rejection_reason(message: str, reason: str | None):
    assert rejection_reason(message) == reason


def test_process_diff_rules():
    mods = [
        Mod(
            "MODIFY",
            "a.py",
            "a.py",
            "@@ -1,2 +1,2 @@ def f():\n-    x  =   1\n+    x = 2\n     return x\n",
        ),
        Mod("RENAME", "old.py", "new.py", ""),
        Mod("ADD", None, "n.txt", "@@ -0,0 +1 @@\n+h\u00e9llo\n"),
    ]
    assert (
        process_diff(mods)
        == "a.py\n- x = 1\n+ x = 2\nreturn x\nrename from old.py\nrename to new.py\nnew file n.txt"
    )


class _Tok:
    """A whitespace tokenizer with the markers as single tokens: enough to check the layout."""

    unk_token_id = 0

    def __init__(self):
        self.vocab = {"<unk>": 0, "<|endoftext|>": 1, DIFF: 2, HISTORY: 3, SEP: 4, MSG: 5}

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, 0)

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]


def test_prompt_layout_and_loss_mask():
    tok = _Tok()
    p = build_prompt(tok, "a.py + x", ["first old", "second"], "Fix x", finished=True)
    words = {v: k for k, v in tok.vocab.items()}
    assert [words[i] for i in p.input_ids] == [
        "<|endoftext|>", DIFF, "a.py", "+", "x", HISTORY, "first", "old", SEP, "second", MSG, "Fix", "x", "<|endoftext|>",
    ]  # fmt: skip
    assert p.loss_mask == [0] * 11 + [1, 1, 1]
    assert p.message_start == 11


def test_prompt_keeps_newest_history_within_budget_and_inference_has_no_end():
    tok = _Tok()
    history = [f"message number {i}" for i in range(10)]
    p = build_prompt(tok, "d", history, "Fix", finished=False, budget=Budget(history_tokens=8))
    assert p.history_used == 2
    text = [k for i in p.input_ids for k, v in tok.vocab.items() if v == i]
    assert text[-1] == "Fix" and "8" in text and "9" in text and "7" not in text
    assert sum(p.loss_mask) == 0


def test_file_history_section_sits_between_diff_and_history_only_when_budgeted():
    tok = _Tok()
    files = ["docs: old", "core: newer", "core: newest"]
    budget = Budget(file_history_tokens=6, file_history_message_tokens=2)
    p = build_prompt(tok, "d", ["mine"], "Fix", finished=True, budget=budget, file_history=files)
    words = {v: k for k, v in tok.vocab.items()}
    assert [words[i] for i in p.input_ids] == [
        "<|endoftext|>", DIFF, "d", FILES, "core:", "newer", SEP, "core:", "newest", HISTORY, "mine", MSG, "Fix", "<|endoftext|>",
    ]  # fmt: skip
    assert p.file_history_used == 2 and p.history_used == 1 and p.message_start == 12
    # A model trained without the section (budget 0, the shipped one) gets exactly the old layout.
    plain = build_prompt(tok, "d", ["mine"], "Fix", finished=True, file_history=files)
    assert FILES not in [words.get(i) for i in plain.input_ids] and plain.file_history_used == 0
    assert plain.input_ids == build_prompt(tok, "d", ["mine"], "Fix", finished=True).input_ids


def test_recall_section_sits_just_before_the_message_with_the_most_alike_kept():
    tok = _Tok()
    alike = ["release: 1.0", "core: less alike", "core: most alike"]  # least → most alike
    budget = Budget(recall_tokens=6, recall_message_tokens=2)
    p = build_prompt(tok, "d", ["mine"], "Fix", finished=False, budget=budget, recalled=alike)
    words = {v: k for k, v in tok.vocab.items()}
    assert [words[i] for i in p.input_ids] == [
        "<|endoftext|>", DIFF, "d", HISTORY, "mine", RECALL, "core:", "less", SEP, "core:", "most", MSG, "Fix",
    ]  # fmt: skip
    assert p.recall_used == 2 and p.history_used == 1 and p.message_start == 12
    # Typing only grows the prompt at its end (the daemon's prefix cache relies on it).
    longer = build_prompt(
        tok, "d", ["mine"], "Fix the", finished=False, budget=budget, recalled=alike
    )
    assert longer.input_ids[: len(p.input_ids)] == p.input_ids
    # A model trained without the section (budget 0, the shipped one) gets exactly the old layout.
    plain = build_prompt(tok, "d", ["mine"], "Fix", finished=True, recalled=alike)
    assert plain.recall_used == 0
    assert plain.input_ids == build_prompt(tok, "d", ["mine"], "Fix", finished=True).input_ids


@pytest.mark.parametrize(
    ("typed", "head", "tail"),
    [
        ("Fix the bu", "Fix the", " bu"),
        ("Fix ", "Fix", " "),
        ("Fi", "", "Fi"),
        ("", "", ""),
        ("a\n\nbo", "a", "\n\nbo"),
        ("Fix " + "x" * 1500, "Fix " + "x" * 1500, ""),  # no word is that long: nothing to heal
    ],
)
def test_split_typed(typed, head, tail):
    assert split_typed(typed) == (head, tail)
    assert head + tail == typed
