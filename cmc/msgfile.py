"""The commit message file: what the user typed, git's comment lines, and what cmc writes back.

Used by the hook (``$GIT_DIR/COMMIT_EDITMSG``), ``cmc complete --message-file`` and the language
server. Git's rules, as in ``builtin/commit.c`` and ``sequencer.c``:

* comment lines start with ``core.commentChar`` (``#`` by default). With ``auto``, git picks the
  first of ``#;@!$%^&|:`` that starts no line of the message it is about to write, and writes its
  status block with it; cmc finds that character again in the file (`resolve_comment_char`).
* the scissors line (``<c> ------------------------ >8 ------------------------``) cuts the file:
  everything from it on is git's (e.g. ``commit -v``'s diff).
* only ``commit.cleanup`` ``strip`` — and ``default`` when an editor opens — removes comment lines.
  Anywhere else cmc's alternatives, written as comments, would be committed, so none are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCISSORS = "------------------------ >8 ------------------------"
AUTO_COMMENT_CHARS = "#;@!$%^&|:"


def resolve_comment_char(configured: str | None, text: str) -> str | None:
    """The comment character git used in ``text``; None when ``auto`` leaves it unclear."""
    if configured and configured.strip().lower() != "auto":
        return configured
    if not configured:
        return "#"
    lines = text.split("\n")
    for char in AUTO_COMMENT_CHARS:
        starts = [i for i, line in enumerate(lines) if line.startswith(char)]
        if not starts:
            continue
        # Git's block is the file's tail: after its first line, every non-blank line is a comment.
        tail = [ln for ln in lines[starts[0] :] if ln.strip()]
        if all(ln.startswith(char) for ln in tail):
            return char
    return None


@dataclass
class MessageFile:
    typed: str  # the message the user typed (comment lines and the scissors part left out)
    rest: list[str] = field(
        default_factory=list
    )  # git's comment lines etc., leading blanks dropped
    comment: str | None = "#"  # resolved comment character; None when unknown


def is_comment(line: str, comment: str | None) -> bool:
    return comment is not None and line.startswith(comment)


def parse(text: str, configured_comment: str | None = "#") -> MessageFile:
    """Split a message file into what the user typed and what git put there."""
    comment = resolve_comment_char(configured_comment, text)
    typed: list[str] = []
    rest: list[str] = []
    cut = False
    for line in text.split("\n"):
        if not cut and is_comment(line, comment) and SCISSORS in line:
            cut = True
        if cut or is_comment(line, comment):
            rest.append(line)
        else:
            typed.append(line)
    while rest and not rest[-1].strip():
        rest.pop()
    return MessageFile("\n".join(typed).strip("\n"), rest, comment)


def typed_before(text: str, offset: int, configured_comment: str | None = "#") -> str:
    """The message typed before the cursor at ``offset`` (a index into ``text``)."""
    comment = resolve_comment_char(configured_comment, text)
    kept: list[str] = []
    for ln in text[:offset].split("\n"):
        if is_comment(ln, comment):
            if SCISSORS in ln:
                break
            continue
        kept.append(ln)
    return "\n".join(kept).lstrip("\n")


def comments_stripped(cleanup: str, editor_opens: bool) -> bool:
    """Whether git removes comment lines from the message (``git help commit``, --cleanup)."""
    return cleanup == "strip" or (cleanup == "default" and editor_opens)


def render(
    parsed: MessageFile,
    best: str,
    alternatives: list[str],
    *,
    editor_opens: bool,
    cleanup: str,
    note: str | None = None,
    origins: list[str | None] | None = None,
) -> str:
    """The file cmc writes: the best message; then, where git will strip them, where it came from
    (``origins[0]``: an earlier commit, when the memory offered it), the alternatives (each with
    its origin) and ``note`` as comments; then git's own lines, as they were. With no editor, only
    the message."""
    if not editor_opens:
        return best.rstrip("\n") + "\n"
    lines = [best.rstrip("\n"), ""]
    comment = parsed.comment
    stripped = comment is not None and comments_stripped(cleanup, editor_opens)
    origins = list(origins or []) + [None] * (1 + len(alternatives))
    if origins[0] and stripped:
        lines.append(f"{comment} cmc: the message above is an earlier one of this repository's "
                     f"({origins[0]})")  # fmt: skip
    if alternatives and stripped:
        lines.append(f"{comment} cmc: other suggestions (copy one above to use it):")
        for alt, origin in zip(alternatives, origins[1:]):
            lines += [f"{comment}   {piece}" for piece in alt.split("\n")]
            if origin:
                lines.append(f"{comment}     (an earlier message: {origin})")
    if note and stripped:
        lines.append(f"{comment} {note}")
    lines += parsed.rest
    return "\n".join(lines).rstrip("\n") + "\n"


def render_note(parsed: MessageFile, note: str, *, editor_opens: bool, cleanup: str) -> str | None:
    """The file with a comment line saying why there is no suggestion, above git's own lines, the
    typed text kept as it was; None where git would keep the line (it would be committed)."""
    if parsed.comment is None or not comments_stripped(cleanup, editor_opens):
        return None
    lines = [parsed.typed, ""] if parsed.typed else [""]
    lines += [f"{parsed.comment} {note}", *parsed.rest]
    return "\n".join(lines).rstrip("\n") + "\n"
