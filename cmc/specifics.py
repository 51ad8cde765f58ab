"""What a suggestion may state, so that a user can accept it without checking.

A *specific* is a version (``3.0.0``, ``v1.2``), a file name with an extension (``ssl.md``, also at
the end of a path: ``src/parser.py``) or a backticked name (```parse_config```). A suggestion may only state one that
its context holds — the changed lines and paths of the diff, the author's history, the typed text —
because a made-up one is worse than a generic word: `bump to 3.0.0` when the diff bumps to 2.4.1.
Versions come from the lines the diff changes, not from its unchanged context lines.

*Degenerate* text: a word repeated (``typo typo``), a doubled suffix or path (``.php.php``,
``actions/actions/``), and a CI-control marker (``[skip ci]``) that the author never writes.

`Support` holds what a context allows; `problems` says what is wrong with a text (for `cmc eval`
and for choosing among candidates); `SpecificsConstraint` is the logits processor that keeps the
decoder from writing them at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONSTRAIN = True  # the decoder keeps to what the context holds (benchmarks switch it off)
VERSION = re.compile(r"(?<![\w.])v?\d+(?:\.\d+)+(?:-[0-9A-Za-z.]+)?(?![\w.]*\w)")
FILE_NAME = re.compile(r"(?<![\w./-])[\w-]+(?:\.[\w-]+)*\.[A-Za-z][A-Za-z0-9]{0,7}(?![\w])")
PATH = re.compile(r"(?<![\w./-])[\w.-]+(?:/[\w.-]+)+/?")
BACKTICKED = re.compile(r"`([^`\n]+)`")
# "from 5 to 6": a bump's bare numbers are versions too (VERSION needs a dot)
BUMP = re.compile(r"\bfrom\s+(v?\d+)\s+to\s+(v?\d+)(?![\w.])", re.IGNORECASE)
NUMBER = re.compile(r"(?:(?<![\w.])|(?<=@))v?(\d+)(?!\w|\.\d)")  # 3, v3, @v3; not 6 of 6.0.9
# a word repeated inside one compound: install-install, docs(docs), lib/lib:, run-build-build
REPEATED_PART = re.compile(r"(?<![A-Za-z])([A-Za-z]{2,})[-/_(]+\1s?(?![A-Za-z])", re.IGNORECASE)
REPLACEMENT = "\ufffd"  # a character cut or decoded wrongly
REPEATED_WORD = re.compile(r"(?<![\w-])([A-Za-z][\w-]*)\s+\1(?![\w-])", re.IGNORECASE)
DOUBLED = re.compile(r"(\.[A-Za-z]\w{0,7})\1(?!\w)|(?<![\w.-])([\w.-]+/)\2")
CI_MARKER = re.compile(
    r"\[(?:ci[ -]skip|skip[ -]ci|no[ -]ci|skip[ -]actions|actions[ -]skip|skip[ -]travis)\]"
    r"|\*\*\*NO_CI\*\*\*",
    re.IGNORECASE,
)
# Not file names, though they look like one: abbreviations and prose.
_NOT_FILES = {"e.g", "i.e", "etc", "vs", "a.k.a", "n.b"}
# A name of code: dotted, pathed or dashed ones whole (``App.Run``, ``src/app``, ``foo-bar``).
IDENTIFIER = re.compile(r"[A-Za-z_][\w]*(?:[.:/-][A-Za-z_][\w]*)*")
_PART = re.compile(r"[A-Za-z_]\w*")


def name_counts(names: Iterable[str]) -> Counter[str]:
    """How often each name is used, from its uses (`IDENTIFIER` matches): dotted or pathed ones
    (``App.Run``, ``src/app``) and each of their parts (``App``, ``Run``). What `cmc.copying`
    finishes a half-typed word with."""
    counts: Counter[str] = Counter()
    for name in names:
        counts[name] += 1
        parts = _PART.findall(name)
        if len(parts) > 1:
            counts.update(parts)
    return counts


def specifics(text: str) -> list[str]:
    """The specifics a text states, in order (a path's file name is the path's)."""
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []

    def add(m: re.Match, group: int = 0) -> None:
        start, end = m.span(group)
        if any(s < end and start < e for s, e in taken):
            return
        value = m.group(group).rstrip("/")
        taken.append((start, end))
        found.append((start, value))

    for m in BACKTICKED.finditer(text):
        add(m, 1)
    for m in PATH.finditer(text):  # a path counts for its file: src/x.py, not and/or or CI/CD
        if "." in m.group(0).rstrip("/").rsplit("/", 1)[-1].strip("."):
            add(m)
    for m in VERSION.finditer(text):
        add(m)
    for m in BUMP.finditer(text):
        add(m, 1)
        add(m, 2)
    for m in FILE_NAME.finditer(text):
        if m.group(0).lower().rstrip(".") not in _NOT_FILES and not VERSION.fullmatch(m.group(0)):
            add(m)
    return [v for _, v in sorted(found)]


def _names_in(text: str) -> set[str]:
    names: set[str] = set()
    for token in re.split(r"[\s,;:!?()\[\]{}<>\"'=]+", text):
        token = token.strip(".`")
        names.update(t for t in (token, *token.split("/")) if t)
    return names


def _versions(lines: Iterable[str]) -> set[str]:
    return {m.group(0).lstrip("v") for line in lines for m in VERSION.finditer(line)}


@dataclass
class Support:
    """What a context allows a suggestion to state."""

    text: str = ""  # lower-cased: the diff's changed lines and paths, the history, the typed text
    versions: set[str] = field(default_factory=set)  # from the diff's changed lines only, and typed
    old_versions: list[str] = field(default_factory=list)  # of removed lines, in order
    new_versions: list[str] = field(default_factory=list)  # of added lines, in order
    ci_markers: bool = False  # the author's own history uses them
    identifiers: set[str] = field(default_factory=set)  # of the diff, for half-typed words
    name_counts: dict[str, int] = field(default_factory=dict)  # `name_counts`
    numbers: set[str] = field(default_factory=set)  # bare numbers of the changed lines and typed
    _names: tuple[frozenset[str], list[str]] | None = field(default=None, compare=False, repr=False)
    _sorted_names: list[str] | None = field(default=None, compare=False, repr=False)

    def sorted_names(self) -> list[str]:
        """``name_counts``' names in order, sorted once per context (not per keystroke)."""
        if self._sorted_names is None:
            self._sorted_names = sorted(self.name_counts)
        return self._sorted_names

    def names(self) -> tuple[frozenset[str], list[str]]:
        """The whole names the context holds (words, paths and their parts, versions with and
        without a ``v``), as a set and sorted: made once per context, extended by typed text."""
        if self._names is None:
            found = _names_in(self.text) | {"v" + v for v in self.versions} | set(self.versions)
            self._names = (frozenset(found), sorted(found))
        return self._names

    @classmethod
    def of(cls, diff: str, history: Iterable[str], typed: str = "") -> Support:
        """From a processed diff (`cmc.diffs.process_diff`: header lines, then ``+``/``-``/context
        lines), the author's history and the typed text."""
        changed, kept_headers, added, removed = [], [], [], []
        for line in diff.split("\n"):
            if line.startswith("+"):
                changed.append(line[1:])
                added.append(line[1:])
            elif line.startswith("-"):
                changed.append(line[1:])
                removed.append(line[1:])
            elif line.startswith(("new file ", "deleted file ", "rename ", "copy ")):
                kept_headers.append(line.split(" ", 2)[-1])
            elif line and " " not in line.strip():  # a modified file's header: its path
                kept_headers.append(line)
        history = list(history)
        paths = "\n".join(kept_headers + [p.rsplit("/", 1)[-1] for p in kept_headers])
        text = "\n".join([*changed, paths, *history, typed]).lower()
        versions = _versions([*changed, *history, typed])
        uses = [name for line in changed + kept_headers for name in IDENTIFIER.findall(line)]
        return cls(
            text,
            versions,
            [
                v.lstrip("v")
                for line in removed
                for v in (m.group(0) for m in VERSION.finditer(line))
            ],
            [v.lstrip("v") for line in added for v in (m.group(0) for m in VERSION.finditer(line))],
            any(CI_MARKER.search(h) for h in history),
            set(uses),
            name_counts(uses),
            numbers={m.group(1) for line in [*changed, typed] for m in NUMBER.finditer(line)},
        )

    def with_typed(self, typed: str) -> Support:
        """This support with the typed text too (the user may state what they like)."""
        if not typed:
            return self
        versions = _versions([typed])
        extended = Support(self.text + "\n" + typed.lower(), self.versions | versions,
                           self.old_versions, self.new_versions, self.ci_markers or
                           bool(CI_MARKER.search(typed)), self.identifiers,
                           self.name_counts)  # fmt: skip
        added = _names_in(typed.lower()) | {"v" + v for v in versions} | versions
        base, ordered = self.names()  # (the context's, sorted once; a keystroke adds a few)
        if added - base:
            ordered = sorted(base | added)
        extended._names = (base | added, ordered)
        extended._sorted_names = self.sorted_names()
        return extended

    def allows(self, specific: str) -> bool:
        if VERSION.fullmatch(specific):
            return specific.lstrip("v") in self.versions
        if specific.lstrip("vV").isdigit():  # a bump's bare number: the changed lines hold it
            return specific.lstrip("vV") in self.numbers
        return specific.lower() in self.text


def unsupported(text: str, support: Support) -> list[str]:
    return [s for s in specifics(text) if not support.allows(s)]


def _degenerate_at(text: str, support: Support | None, start: int = 0) -> list[tuple[str, int]]:
    """Each kind of degenerate text found from ``start`` on, with where it begins (of a repeated
    word, the repetition)."""
    found = []
    m = REPEATED_WORD.search(text, start)
    if m:
        found.append(("repeated word", m.end(1) + 1))
    m = DOUBLED.search(text, start)
    if m:
        found.append(("doubled suffix", m.start()))
    m = CI_MARKER.search(text, start)
    if m and not (support is not None and support.ci_markers):
        found.append(("CI marker", m.start()))
    for m in REPEATED_PART.finditer(text, max(0, text.rfind(" ", 0, start) + 1)):
        if DOUBLED.match(text, m.start()) or DOUBLED.match(text, m.start() - 1):
            continue  # a doubled path already says so
        if support is None or m.group(0).lower() not in support.text:
            found.append(("repeated part", m.start()))
            break
    at = text.find(REPLACEMENT, start)
    if at >= 0:
        found.append(("replacement character", at))
    return found


def degenerate(text: str, support: Support | None = None) -> list[str]:
    """What makes a text degenerate: a repeated word, a doubled suffix or path, a CI marker the
    author never uses."""
    return [kind for kind, _ in _degenerate_at(text, support)]


def problems(text: str, support: Support) -> list[str]:
    """Everything that keeps a suggestion from being accepted unchecked ([] when nothing)."""
    return [f"unsupported {s!r}" for s in unsupported(text, support)] + degenerate(text, support)


def version_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` states versions: VERSION's, and a bump's bare numbers (``from 5 to 6``)."""
    spans = {m.span() for m in VERSION.finditer(text)}
    spans |= {m.span(g) for m in BUMP.finditer(text) for g in (1, 2)}
    return sorted(spans)


def repair(message: str, typed: str, support: Support) -> str | None:
    """A message recalled from an earlier commit, fitted to this change: its versions replaced by
    the ones the diff changes (a bump: the removed version, then the added one), in order; None
    when it states something else this change does not support."""
    rest = message[len(typed) :]
    versions = [(a, b) for a, b in version_spans(rest) if not support.allows(rest[a:b])]
    if versions:
        pool = (support.old_versions[:1] + support.new_versions[-1:]) if len(versions) >= 2 else support.new_versions[-1:]  # fmt: skip
        if len(pool) < min(len(versions), 2):
            return None
        out, last = [], 0
        for (a, b), new in zip(versions, pool[-len(versions) :] if len(versions) == 1 else pool):
            keep_v = rest[a:b].startswith("v") and not new.startswith("v")
            out += [rest[last:a], ("v" if keep_v else "") + new]
            last = b
        if len(versions) > len(pool):
            return None
        rest = "".join(out) + rest[last:]
    fitted = typed + rest
    return None if problems(fitted, support) else fitted


def _first_problem(text: str, start: int, support: Support) -> int | None:
    """Where the first problem of ``text`` after ``start`` (the typed text's end) begins, the
    word ``start`` falls in included (None: there is none)."""
    start = text.rfind(" ", 0, start) + 1
    found = [at for _, at in _degenerate_at(text, support, start)]
    for s in unsupported(text[start:], support):
        at = text.find(s, start)
        found.append(at if at >= 0 else start)
    return min(found) if found else None


def cut_before_problem(message: str, typed: str, support: Support) -> str | None:
    """``message`` up to the word before its first problem (a search that ran out of tokens in
    the middle of a version, say); None when that adds no word to the typed text."""
    at = _first_problem(message, len(typed), support)
    if at is None:
        return message
    kept = message[:at]
    kept = (
        kept[: kept.rfind(" ") + 1]
        if not kept[-1:].isspace() and " " in kept[len(typed) :]
        else kept
    )
    kept = kept.rstrip(" ,;(`'\"")  # ("release:" before an invented version is still a start)
    return kept if len(kept) > len(typed) and kept[len(typed) :].strip() else None


def without_problems(candidates: list[Any], typed: str, support: Support) -> list[Any]:
    """The candidates (`cmc.decoding.Candidate`) whose continuation has no problem (`problems`);
    when none is left, each cut before its first problem (`cut_before_problem`): a suggestion
    that stops early is better than none, and than one that invents."""
    from cmc.decoding import Candidate

    clean = [c for c in candidates if _first_problem(c.message, len(typed), support) is None]
    if clean or not candidates:
        return clean
    out, seen = [], set()
    for c in candidates:
        cut = cut_before_problem(c.message, typed, support)
        if cut is not None and cut not in seen:
            seen.add(cut)
            out.append(Candidate(cut, cut[len(typed) :], c.score))
    return out


# --- while decoding ---------------------------------------------------------------------------------

_LEAD = "`'\"([{<"
_TRAIL = "`'\".,;:!?)]}>"
_WORD_END = re.compile(r"\s")


def looks_specific(word: str) -> bool:
    """Whether a word (being) written is a specific: backticked, a version under way (``3.``
    then a digit), a name with an extension (``ssl.md``; also the garbled ``2..0`` a model may try),
    or a path (``src/x``, not ``and/or`` or ``CI/CD``: a file at its end, two slashes, or a root)."""
    core = word.strip(_LEAD + _TRAIL)
    if not core:
        return False
    if word.startswith("`"):
        return True
    if re.match(r"v?\d+\.", core) and len(core) > 2:
        return True
    if "/" in core:
        last = core.rstrip("/").rsplit("/", 1)[-1]
        return core.count("/") >= 2 or core.startswith(("./", "../", "~/", "/")) or "." in last
    return bool(re.search(r"\w\.+\w", core)) and core.lower() not in _NOT_FILES


def _norm(word: str) -> str:
    return re.sub(r"\W", "", word.lower())


class SpecificsConstraint:
    """A logits processor (as `cmc.decoding.beam`'s): in the message, a token may not

    * make the word being written a specific the context does not hold, nor the start of one
      (``3.`` then ``0`` when no version 3.0… is in the changed lines);
    * end a specific word before it is one the context holds (``Function`` when the diff adds
      ``FunctionAuth``);
    * repeat the word before it, double a suffix or a path, or write a CI marker the author
      never writes.

    Only each hypothesis' ``top`` most likely tokens are checked (a beam search keeps at most
    twice the beams): a few string operations each. While the half-typed word (``tail``) is being
    finished, tokens toward an identifier or version of the diff that starts with it get
    ``bonus`` (``Func`` becomes the diff's ``FunctionAuth`` first)."""

    def __init__(self, table: Any, support: Support, start: int, head: str, tail: str = "",
                 top: int = 16, bonus: float = 5.0):  # fmt: skip
        self.table, self.support, self.start = table, support, start
        self.head, self.tail = head, tail
        self.top, self.bonus = top, bonus
        self.words, self.allowed = support.names()
        self._prefixes: dict[str, bool] = {}
        stem = tail.strip()
        # Only a half-typed *name* (backticked, or shaped like code: ``parse_co``, ``getUs``,
        # ``v1.``): a half-typed word finished as a diff's identifier ("Environ" → the diff's
        # "EnvironmentVariablesTests") cost B-Norm on the test repositories.
        code = stem.startswith("`") or re.search(r"[_./\d]|[a-z][A-Z]", stem)
        stem = stem.lstrip("`")
        names = support.identifiers | support.versions
        near = [n for n in names if code and len(stem) > 1 and n.startswith(stem) and n != stem]
        self.half = sorted(near)[:3]

    def _is_prefix(self, core: str) -> bool:
        import bisect

        key = core.lower()
        if key not in self._prefixes:
            i = bisect.bisect_left(self.allowed, key)
            self._prefixes[key] = i < len(self.allowed) and self.allowed[i].startswith(key)
        return self._prefixes[key]

    def _complete_ok(self, word: str) -> bool:
        if not looks_specific(word):
            return True
        core = word.strip(_LEAD + _TRAIL)
        if DOUBLED.search(core):
            return False
        if VERSION.fullmatch(core):
            return core.lstrip("v") in self.support.versions
        return core.lower() in self.words  # a whole name of the context, not a part of one

    def allows(self, text: str, piece: str | None) -> bool:
        """Whether ``piece`` (a token's text; None: the end) may follow ``text``, the message so
        far."""
        end = piece is None
        new = text + (piece or "")
        words = new.split()
        completed_before = len(text.split()) - (0 if not text or text[-1:].isspace() else 1)
        completed = words if (end or new[-1:].isspace()) else words[:-1]
        for i in range(max(0, completed_before), len(completed)):
            word = completed[i]
            if not self._complete_ok(word):
                return False
            if i and _norm(word) and _norm(word) == _norm(completed[i - 1]):
                return False  # a repeated word
        if not end and words and not new[-1:].isspace() and looks_specific(words[-1]):
            core = words[-1].strip(_LEAD).rstrip(_TRAIL)
            if DOUBLED.search(core) or not self._is_prefix(core):
                return False
        return self.support.ci_markers or not CI_MARKER.search(new[-40:])

    def __call__(self, seqs: list[list[int]], scores: np.ndarray) -> np.ndarray:
        for row, seq in enumerate(seqs):
            produced = self.table.text(seq[self.start :]).decode("utf-8", "replace")
            text = self.head + produced
            top = min(self.top, scores.shape[1] - 1)
            for token in np.argpartition(-scores[row], top)[:top].tolist():
                if scores[row, token] == -np.inf:
                    continue
                raw = self.table.bytes[token] if token < len(self.table.bytes) else None
                piece = None if raw is None else raw.decode("utf-8", "replace")
                if not self.allows(text, piece):
                    scores[row, token] = -np.inf
            if self.half and len(produced.encode()) >= len(self.tail.encode()):
                word = text.split()[-1] if text.split() and not text[-1:].isspace() else ""
                word = word.lstrip(_LEAD)
                for ident in self.half:
                    if word and ident.startswith(word) and ident != word:
                        mask = self.table.allowed(ident[len(word) :].encode())
                        width = min(mask.shape[0], scores.shape[1])
                        scores[row, :width][mask[:width]] += self.bonus
        return scores
