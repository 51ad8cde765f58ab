"""Diffs: git's patch text → CommitChronicle mods → the processed diff text the model sees.

Both sides use this module: the hook and `cmc complete` on a staged diff, and `training` on mined
history. `process_diff` is the only place raw hunks become model text (CommitChronicle rules):

* per file a header line: ``new file X``, ``deleted file X``, ``rename from A`` / ``rename to B``,
  ``copy from A`` / ``copy to B``, or just the path for a modification;
* then the file's hunks with ``@@ ... @@`` lines removed, every line stripped (the ``+``/``-``
  markers stay), runs of whitespace squeezed to one space;
* a file whose diff is not ASCII keeps its header and loses its content;
* files joined with newlines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cmc.secrets import mask_secrets

_WS = re.compile(r"\s+")
_C_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f"}


@dataclass
class Mod:
    """One changed file, in CommitChronicle's schema."""

    change_type: str
    old_path: str | None
    new_path: str | None
    diff: str = ""
    # Not part of the schema: set when the content was cut to fit a budget or left out on purpose.
    truncated: bool = field(default=False, compare=False)

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else (self.old_path or "")

    def as_row(self) -> dict:
        return {
            "change_type": self.change_type,
            "old_path": self.old_path,
            "new_path": self.new_path,
            "diff": self.diff,
        }


def unquote_path(text: str) -> str:
    """Undo git's C-style quoting of a path (used for names with quotes, tabs, newlines, bytes)."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\" or i + 1 == len(body):
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _C_ESCAPES:
            out += _C_ESCAPES[nxt].encode()
            i += 2
        elif nxt.isdigit() and i + 3 < len(body) + 1:
            out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out += nxt.encode()
            i += 2
    return out.decode("utf-8", "replace")


def _split_diff_git_line(rest: str) -> tuple[str, str]:
    """Paths from ``diff --git a/X b/Y`` (X == Y unless renamed; renames also have explicit lines)."""
    if rest.startswith('"'):
        end = rest.index('"', 1)
        while rest[end - 1] == "\\":
            end = rest.index('"', end + 1)
        a, b = rest[: end + 1], rest[end + 2 :]
        return unquote_path(a)[2:], unquote_path(b)[2:]
    if rest.endswith('"'):
        start = rest.rindex(' "')
        return rest[:start][2:], unquote_path(rest[start + 1 :])[2:]
    # Unquoted: "a/P b/P" for an unrenamed file, so the halves are equal.
    half = (len(rest) - 5) // 2
    if half > 0 and rest[2 : 2 + half] == rest[-half:]:
        return rest[2 : 2 + half], rest[-half:]
    a, _, b = rest.partition(" b/")
    return a[2:], b


_HUNK_START = re.compile(r"(?m)^(?=@@)")
CUT_HUNK_CHARS = 2_000  # of a hunk too big for the budget: about the model's whole diff budget
_FILE_START = re.compile(r"(?m)^(?=diff --git )")


def keep_hunks(hunks: str, budget: int | None, cut: bool = False) -> tuple[str, bool]:
    """The leading whole hunks of one file that fit ``budget`` characters (all when None); with
    ``cut``, when not even the first one fits, its leading whole lines (a 20,000-line new file
    shows the model its start, and a generated file its marker line, rather than nothing; mining
    leaves such a file out instead, so the outlier rules see the commit's real size)."""
    if budget is None or len(hunks) <= budget:
        return hunks, False
    kept, size = [], 0
    pieces = [h for h in _HUNK_START.split(hunks) if h]
    for hunk in pieces:
        if size + len(hunk) > budget:
            break
        kept.append(hunk)
        size += len(hunk)
    if cut and not kept and pieces and budget > 0:  # its start, in a share leaving others room
        cut = pieces[0][: min(budget, CUT_HUNK_CHARS)]
        kept.append(cut[: cut.rfind("\n") + 1] if "\n" in cut else "")
    return "".join(kept), True


def parse_file_section(
    section: str, max_chars: int | None = None, truncated: bool = False, cut: bool = False
) -> Mod:
    """One file's part of a patch (from its ``diff --git`` line) → a mod, hunks cut to ``max_chars``
    (`keep_hunks`)."""
    first_hunk = section.find("\n@@")
    head = section if first_hunk < 0 else section[: first_hunk + 1]
    hunks = "" if first_hunk < 0 else section[first_hunk + 1 :]
    lines = head.split("\n")
    old, new = _split_diff_git_line(lines[0][len("diff --git ") :])
    kind = "MODIFY"
    for text in lines[1:]:
        if text.startswith("new file mode"):
            kind, old = "ADD", None
        elif text.startswith("deleted file mode"):
            kind, new = "DELETE", None
        elif text.startswith("rename from "):
            kind, old = "RENAME", unquote_path(text[12:])
        elif text.startswith("rename to "):
            kind, new = "RENAME", unquote_path(text[10:])
        elif text.startswith("copy from "):
            kind, old = "COPY", unquote_path(text[10:])
        elif text.startswith("copy to "):
            kind, new = "COPY", unquote_path(text[8:])
        elif text.startswith(("Binary files ", "GIT binary patch")):
            hunks = text + "\n"
    diff, was_cut = keep_hunks(hunks, max_chars, cut)
    return Mod(kind, old, new, diff, truncated or was_cut)


def parse_patch_text(text: str, max_chars_per_file: int | None = None) -> list[Mod]:
    """A whole patch held in memory (one commit of ``git log -p``) → mods."""
    return [
        parse_file_section(section, max_chars_per_file)
        for section in _FILE_START.split(text)
        if section.startswith("diff --git ")
    ]


def parse_patch(
    lines: Iterable[str], max_chars_per_file: int | None = None, cut: bool = False
) -> Iterator[Mod]:
    """Parse a streamed patch (``git diff``, line by line, endings kept) into mods.

    Memory stays bounded whatever the size of the diff: a file's lines past ``max_chars_per_file``
    (plus room for its header) are not kept, and its mod is marked truncated (``cut``: see
    `keep_hunks`).
    """
    cap = None if max_chars_per_file is None else max_chars_per_file + 4096
    section: list[str] = []
    size, dropped = 0, False
    for line in lines:
        if line.startswith("diff --git "):
            if section:
                yield parse_file_section("".join(section), max_chars_per_file, dropped, cut)
            section, size, dropped = [line], len(line), False
        elif section:
            if cap is not None and size + len(line) > cap:
                dropped = True
                continue
            section.append(line)
            size += len(line)
    if section:
        yield parse_file_section("".join(section), max_chars_per_file, dropped, cut)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTED = {"\n": "\\n", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def quote_path(path: str | None) -> str | None:
    """A path as one line of the model's text: a name holding a newline or another control
    character is quoted as git quotes it (``"new\\nline.py"``), so that no file name can write
    lines of its own into the diff the model reads; other names stay as they are."""
    if path is None or not _CONTROL.search(path):
        return path
    body = "".join(_QUOTED.get(c) or (f"\\{ord(c):03o}" if _CONTROL.match(c) else c) for c in path)
    return f'"{body}"'


def file_header(mod: Mod | dict) -> str:
    """The per-file header line(s) of the processed diff."""
    if isinstance(mod, dict):
        kind, old, new = mod.get("change_type"), mod.get("old_path"), mod.get("new_path")
    else:
        kind, old, new = mod.change_type, mod.old_path, mod.new_path
    old, new = quote_path(old), quote_path(new)
    if kind == "ADD":
        return f"new file {new}"
    if kind == "DELETE":
        return f"deleted file {old}"
    if kind == "RENAME":
        return f"rename from {old}\nrename to {new}"
    if kind == "COPY":
        return f"copy from {old}\ncopy to {new}"
    return str(new if new is not None else old)


def process_file_diff(diff: str) -> str:
    """One file's raw hunks → processed lines (no ``@@`` lines, stripped, whitespace squeezed)."""
    if not diff.isascii():
        return ""
    out = []
    for line in diff.splitlines():
        if line.startswith("@@") or line.startswith("\\ No newline"):
            continue
        line = _WS.sub(" ", line.strip())
        if line:
            out.append(line)
    return "\n".join(out)


def process_diff(mods: Iterable[Mod | dict]) -> str:
    """CommitChronicle mods → the processed diff text the model sees (see the module docstring)."""
    parts = []
    for mod in mods:
        diff = mod.get("diff") if isinstance(mod, dict) else mod.diff
        body = process_file_diff(mask_secrets(diff or ""))
        parts.append(file_header(mod) + ("\n" + body if body else ""))
    return "\n".join(parts)
