"""Commit messages: the cleaning and the filters of CommitChronicle, shared by training and the hook.

`clean_message` removes what a model should not learn to write (emails, URLs, issue references,
trailers such as Signed-off-by, @mentions, commit SHAs); `rejection_reason` says why a message
would be dropped from the data (non-ASCII, one word, bot-like, Merge/Revert, squashed), or None.
The author history the hook shows the model goes through both, exactly like the training data.
"""

from __future__ import annotations

import re

from cmc.secrets import mask_secrets

TRAILER_KEYS = (
    "signed-off-by",
    "co-authored-by",
    "co-author",
    "change-id",
    "reviewed-by",
    "reviewed-on",
    "acked-by",
    "tested-by",
    "reported-by",
    "suggested-by",
    "helped-by",
    "cc",
    "fixes",
    "closes",
    "resolves",
    "refs",
    "see-also",
    "bug",
    "issue",
    "pr-url",
    "pr",
    "differential revision",
    "git-svn-id",
    "cherry-picked from",
    "ticket",
    "jira",
)
_TRAILER = re.compile(
    r"^\s*(?:" + "|".join(re.escape(k) for k in TRAILER_KEYS) + r")\s*:.*$", re.IGNORECASE | re.M
)
_CHERRY = re.compile(r"^\s*\(cherry picked from commit [0-9a-f]+\)\s*$", re.IGNORECASE | re.M)
_EMAIL = re.compile(r"<?[\w.+-]+@[\w-]+(?:\.[\w-]+)+>?")
_URL = re.compile(r"(?:https?|ftp|ssh|git)://\S+|www\.\S+", re.IGNORECASE)
# A markdown link or image: its text stays, the link syntax and the address go.
# (The address must look like one, with a slash or an anchor: `array[i](x)` in code stays.)
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\((?=[^()\s]*[/#])(?:[^()\s]|\([^()\s]*\))*\)")
_ISSUE = re.compile(
    r"(?<![\w/])(?:(?:GH|gh)-\d+|[A-Z][A-Z0-9]{1,9}-\d+|[\w.-]+/[\w.-]+#\d+|#\d+)\b"
)
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9][\w-]*")
_SHA = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|\[\s*[,;]?\s*\]")
_SPACES = re.compile(r"[ \t]+")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:)])")

_TRIVIAL = re.compile(
    r"^(?:(?:update|updated|fix|fixed|fixes|change|changed|edit|edited|modify|modified|"
    r"delete|deleted|remove|removed|add|added|create|created|upload|uploaded)\s+"
    r"(?:readme|readme\.md|changelog|changelog\.md|\.gitignore|gitignore|license|docs?|"
    r"version|files?|typo|typos|code|tests?|\S+\.(?:md|txt|rst|json|ya?ml|lock))"
    r"|(?:bump|bumped)\s+(?:the\s+)?(?:version|deps|dependencies)\b.*"
    r"|(?:initial commit|first commit|init|wip|update|updates|fix|fixes|minor|"
    r"minor (?:changes|fixes|update|updates)|small (?:fix|fixes|changes)|cleanup|typo|"
    r"version bump|release|changes|misc|stuff|test|testing|tmp|temp|save|sync)"
    r"|(?:bump|update) [\w@/.-]+ from [\w.-]+ to [\w.-]+.*"
    r"|(?:v|version\s*)?\d+(?:\.\d+)+\S*"
    r"|\[?(?:skip ci|ci skip)\]?"
    r"|auto[- ]?(?:generated|commit|update).*"
    r")[.!]*$",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*\*\s+\S", re.M)
_ORPHAN = re.compile(
    r"^(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?|refs?|references|see(?: also)?|related(?: to)?|"
    r"part of|re|cc|issue|pr)\s*[:.,]?$",
    re.IGNORECASE,
)

# Pull-request template leftovers that squash merges and bots leave in messages: CI switches,
# HTML comments, markdown headings and checklists. A model that learns them writes them.
_CI_SWITCH = re.compile(
    r"\[(?:ci[ -]skip|skip[ -]ci|no[ -]ci|skip[ -]actions|actions[ -]skip|skip[ -]travis)\]|\*\*\*NO_CI\*\*\*",
    re.IGNORECASE,
)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_TEMPLATE_LINE = re.compile(r"^\s*(?:#{1,6}\s+\S.*|[-*+]\s+\[[ xX]?\]\s*.*|-{3,}|\*{3,}|_{3,})\s*$")


def clean_message(message: str) -> str:
    """Strip what CommitChronicle strips from a message; keep its lines otherwise."""
    text = mask_secrets(message.replace("\r\n", "\n").replace("\r", "\n"))
    text = _HTML_COMMENT.sub("", _CI_SWITCH.sub("", text))
    text = _TRAILER.sub("", text)
    text = _CHERRY.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _EMAIL.sub("", text)
    text = _ISSUE.sub("", text)
    text = _MENTION.sub("", text)
    text = _SHA.sub("", text)
    text = _EMPTY_BRACKETS.sub("", text)
    lines = []
    for line in text.split("\n"):
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip()
        if _ORPHAN.match(line) or (lines and _TEMPLATE_LINE.match(line)):
            continue  # "Closes #12" once the reference is gone; template scaffolding (not a subject)
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip()


def rejection_reason(message: str) -> str | None:
    """Why a (cleaned) message is dropped by CommitChronicle's filters, or None to keep it."""
    text = message.strip()
    if not text:
        return "empty"
    if not text.isascii():
        return "non-ascii"
    if len(text.split()) < 2:
        return "single-word"
    first = text.split("\n", 1)[0]
    if re.match(r"^(?:merge|revert)\b", first, re.IGNORECASE):
        return "merge-or-revert"
    if _TRIVIAL.match(first.strip()) and "\n" not in text.strip():
        return "trivial"
    if len(_BULLET.findall(text)) >= 2:
        return "squashed"
    return None


def history_message(raw: str) -> str | None:
    """A raw message as it may appear in an author's history: cleaned, or None if filtered out."""
    cleaned = clean_message(raw)
    return None if rejection_reason(cleaned) else cleaned
