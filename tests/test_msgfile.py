"""The commit message file as git writes it, and positions as an LSP editor sends them."""

from __future__ import annotations

import pytest

from cmc import msgfile


def test_parse_keeps_typed_text_and_git_lines_and_stops_at_scissors():
    text = (
        "Fix the parser\n\nBody line\n# Please enter the commit message\n#\n"
        "# ------------------------ >8 ------------------------\ndiff --git a/x b/x\n+# not a comment\n"
    )
    parsed = msgfile.parse(text, "#")
    assert parsed.typed == "Fix the parser\n\nBody line"
    assert parsed.rest[0] == "# Please enter the commit message"
    assert parsed.rest[-1] == "+# not a comment"  # everything after the scissors is git's


@pytest.mark.parametrize(
    "text, configured, expected",
    [
        ("Fix\n\n# Please enter\n", "#", "#"),
        ("Fix\n\n; Please enter\n", ";", ";"),
        ("Fix\n\n# Please enter\n#\n", "auto", "#"),
        ("#42 Fix\n\n; Please enter\n;\n", "auto", ";"),  # '#' starts a message line: git took ';'
        ("#42 Fix\n#43 too\n\n; Please enter\n", "auto", ";"),
        ("Fix it\n", "auto", None),  # no comment block: cannot tell
    ],
)
def test_comment_char(text: str, configured: str, expected: str | None):
    assert msgfile.resolve_comment_char(configured, text) == expected


def test_render_says_which_suggestions_are_earlier_messages():
    parsed = msgfile.parse("\n# Please enter the commit message\n", "#")
    text = msgfile.render(parsed, "Fix it", ["Fix that", "Fix more"], editor_opens=True,
                          cleanup="default", origins=["commit 1a2b3c4d5e of 2024-05-01", None,
                                                      "commit 9f8e7d6c5b of 2023-01-02"])  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "Fix it" and lines[1] == ""  # the message itself is untouched
    assert (
        "# cmc: the message above is an earlier one of this repository's (commit 1a2b3c4d5e of 2024-05-01)"
        in lines
    )
    at = lines.index("#   Fix more")
    assert lines[at + 1] == "#     (an earlier message: commit 9f8e7d6c5b of 2023-01-02)"
    assert lines[lines.index("#   Fix that") + 1] == "#   Fix more"  # the model's: nothing added


def test_render_never_writes_comments_git_would_keep():
    parsed = msgfile.parse("Fix\n\n# Please enter\n", "#")
    full = msgfile.render(parsed, "Fix it", ["Fix that"], editor_opens=True, cleanup="default")
    assert (
        full
        == "Fix it\n\n# cmc: other suggestions (copy one above to use it):\n#   Fix that\n# Please enter\n"
    )
    kept = msgfile.render(parsed, "Fix it", ["Fix that"], editor_opens=True, cleanup="scissors")
    assert "cmc:" not in kept and kept.endswith("# Please enter\n")
    assert (
        msgfile.render(parsed, "Fix it", ["x"], editor_opens=False, cleanup="strip") == "Fix it\n"
    )
    unknown = msgfile.parse("Fix\n", "auto")
    assert "cmc:" not in msgfile.render(
        unknown, "Fix it", ["x"], editor_opens=True, cleanup="default"
    )


def test_lsp_positions_in_utf16_around_an_emoji():
    pytest.importorskip("pygls")
    from lsprotocol import types as lsp
    from pygls.workspace import TextDocument

    from cmc.lsp import replace_range, typed_at

    source = "Fix 🎉 parser cr\n# Please enter the commit message\n"
    doc = TextDocument("file:///r/.git/COMMIT_EDITMSG", source)
    # The editor counts the emoji as two UTF-16 units: the end of "cr" is column 16, not 15.
    position = lsp.Position(0, len("Fix ") + 2 + len(" parser cr"))
    assert typed_at(doc, position) == "Fix 🎉 parser cr"
    word_range = replace_range(doc, position, "cr")
    assert (word_range.start.character, word_range.end.character) == (14, 16)
    emoji_word = TextDocument("file:///r/.git/COMMIT_EDITMSG", "Add 🎉x\n")
    end = lsp.Position(0, 7)
    assert typed_at(emoji_word, end) == "Add 🎉x"
    assert replace_range(emoji_word, end, "🎉x").start.character == 4
