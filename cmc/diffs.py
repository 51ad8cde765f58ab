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

CHANGE_TYPES = ("ADD", "DELETE", "RENAME", "COPY", "MODIFY", "UNKNOWN")

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


@dataclass
class _FileSection:
    old_path: str | None
    new_path: str | None
    change_type: str = "MODIFY"
    hunks: list[str] = field(default_factory=list)
    chars: int = 0
    truncated: bool = False

    def to_mod(self) -> Mod:
        return Mod(
            self.change_type, self.old_path, self.new_path, "".join(self.hunks), self.truncated
        )


def parse_patch(lines: Iterable[str], max_chars_per_file: int | None = None) -> Iterator[Mod]:
    """Parse git's patch output (``git diff`` / one commit of ``git log -p``) into mods, streaming.

    ``lines`` keep their line endings. Hunks are kept whole: once a file's content would pass
    ``max_chars_per_file``, its remaining hunks are dropped and the mod is marked truncated, so
    memory stays bounded whatever the size of the diff.
    """
    cur: _FileSection | None = None
    in_hunks = False
    hunk: list[str] = []
    hunk_chars = 0

    def close_hunk() -> None:
        nonlocal hunk, hunk_chars
        if cur is not None and hunk:
            if max_chars_per_file is not None and cur.chars + hunk_chars > max_chars_per_file:
                cur.truncated = True
            else:
                cur.hunks.extend(hunk)
                cur.chars += hunk_chars
        hunk, hunk_chars = [], 0

    for line in lines:
        if line.startswith("diff --git "):
            close_hunk()
            if cur is not None:
                yield cur.to_mod()
            old, new = _split_diff_git_line(line[len("diff --git ") :].rstrip("\n"))
            cur, in_hunks = _FileSection(old, new), False
            continue
        if cur is None:
            continue
        if in_hunks:
            if line.startswith("@@"):
                close_hunk()
            if cur.truncated and max_chars_per_file is not None:
                continue  # skip the rest of an over-budget file without keeping it
            hunk.append(line)
            hunk_chars += len(line)
            if max_chars_per_file is not None and hunk_chars > max_chars_per_file:
                hunk, hunk_chars, cur.truncated = [], 0, True
            continue
        # Extended header lines, before the first hunk.
        text = line.rstrip("\n")
        if text.startswith("@@"):
            in_hunks = True
            hunk, hunk_chars = [line], len(line)
        elif text.startswith("new file mode"):
            cur.change_type, cur.old_path = "ADD", None
        elif text.startswith("deleted file mode"):
            cur.change_type, cur.new_path = "DELETE", None
        elif text.startswith("rename from "):
            cur.change_type, cur.old_path = "RENAME", unquote_path(text[12:])
        elif text.startswith("rename to "):
            cur.change_type, cur.new_path = "RENAME", unquote_path(text[10:])
        elif text.startswith("copy from "):
            cur.change_type, cur.old_path = "COPY", unquote_path(text[10:])
        elif text.startswith("copy to "):
            cur.change_type, cur.new_path = "COPY", unquote_path(text[8:])
        elif text.startswith(("Binary files ", "GIT binary patch")):
            cur.hunks.append(text + "\n")
            cur.chars += len(text) + 1
    close_hunk()
    if cur is not None:
        yield cur.to_mod()


def file_header(mod: Mod | dict) -> str:
    """The per-file header line(s) of the processed diff."""
    if isinstance(mod, dict):
        kind, old, new = mod.get("change_type"), mod.get("old_path"), mod.get("new_path")
    else:
        kind, old, new = mod.change_type, mod.old_path, mod.new_path
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
        body = process_file_diff(diff or "")
        parts.append(file_header(mod) + ("\n" + body if body else ""))
    return "\n".join(parts)
