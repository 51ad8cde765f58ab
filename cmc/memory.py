"""The repository as memory: its earlier commits, as retrieval needs them, and the lookup.

A local tool can read the whole history of the repository it works in; a repository repeats itself
(release and dependency commits, per-area prefixes, a subsystem's wording). The memory holds, for
the newest `DEFAULT_LIMIT` non-merge commits reachable from HEAD: the commit's hash, author (the
sha1 of the e-mail, as the corpus stores it), date, its message cleaned as the training data is
(`cmc.messages.clean_message`, secrets masked), and features of its diff: hashed words of the
changed lines (masked first) and of the paths. Nothing of the repository is executed; the diffs
come from one streamed ``git log`` (`cmc.gitlog`).

It lives in ``$GIT_COMMON_DIR/cmc/memory.npz`` (one file, replaced atomically), and is brought up to
date incrementally: only commits not in it yet are read, in batches saved as they finish, so a
build that is stopped keeps its work and the next one goes on. Bounded: at most ``limit`` commits,
at most `MAX_FEATURES` features and `MAX_DIFF_CHARS` of changed lines per commit, every batch
within a deadline. The daemon builds it in the background; `cmc memory` does it by hand.

Lookup (`Memory.nearest`): TF-IDF cosine between the staged change's features and every commit's,
over an inverted index made at load; ``allowed`` limits it to some commits (evaluation: only the
ancestors of the commit being completed, which is what its author had).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmc import CmcError
from cmc.gitcmd import git_argv

FORMAT = 1
DEFAULT_LIMIT = 20_000
MAX_FEATURES = 256  # the most frequent features kept per commit
MAX_DIFF_CHARS = 16_000  # of one commit's changed lines, featurized
BATCH = 500  # commits read per git log and saved together
BUCKETS = 1 << 22  # hashed feature space
MAX_MESSAGE_CHARS = 1_000  # of a message kept (no suggestion is longer; a hostile one is)
RECALL_KEEP = 8  # messages of alike commits gathered for the prompt (hook and training data alike)
FILE = "memory.npz"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def memory_path(common_dir: str | os.PathLike) -> Path:
    return Path(common_dir) / "cmc" / FILE


def email_key(email: str | None) -> str:
    """How an author is kept: the sha1 of the lower-cased e-mail (as the corpus stores authors)."""
    return hashlib.sha1((email or "").strip().lower().encode()).hexdigest()


def _bucket(token: str) -> int:
    return zlib.crc32(token.encode("utf-8", "replace")) & (BUCKETS - 1)


def diff_features(mods: Iterable[Any]) -> Counter:
    """Hashed features of a change: its paths (name, folders, extension) and the words of its
    changed lines (whole identifiers and their camelCase/snake_case parts), secrets masked first.
    ``mods``: `cmc.diffs.Mod`s or CommitChronicle mod dicts, with raw hunks."""
    from cmc.secrets import mask_secrets

    counts: Counter = Counter()
    budget = MAX_DIFF_CHARS
    for mod in mods:
        get = mod.get if isinstance(mod, dict) else lambda k, m=mod: getattr(m, k)
        for path in {get("old_path"), get("new_path")} - {None}:
            parts = path.split("/")
            counts["p:" + parts[-1].lower()] += 2
            for folder in parts[:-1][-3:]:
                counts["d:" + folder.lower()] += 1
            if "." in parts[-1]:
                counts["x:" + parts[-1].rsplit(".", 1)[1].lower()] += 1
        counts["c:" + str(get("change_type"))] += 1
        diff = get("diff") or ""
        if budget <= 0 or not diff:
            continue
        changed = "\n".join(
            line[1:]
            for line in diff.split("\n")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        )[:budget]
        budget -= len(changed)
        for ident in _IDENT.findall(mask_secrets(changed)):
            counts["w:" + ident.lower()] += 1
            parts = _PART.findall(ident)
            if len(parts) > 1 or "_" in ident:
                for part in parts or ident.split("_"):
                    if len(part) > 1:
                        counts["s:" + part.lower()] += 1
    hashed: Counter = Counter()
    for token, n in counts.most_common(MAX_FEATURES):
        hashed[_bucket(token)] += n
    return hashed


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, without the loop."""
    lengths = np.asarray(lengths, np.int64)
    if not len(lengths):
        return np.zeros(0, np.int64)
    offsets = np.asarray(starts, np.int64) - np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


@dataclass
class Hit:
    index: int
    score: float


@dataclass
class Memory:
    """The arrays of ``memory.npz``: one row per commit, oldest first."""

    shas: list[str] = field(default_factory=list)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    authors: list[str] = field(default_factory=list)  # email_key per commit
    messages: list[str] = field(default_factory=list)  # cleaned, masked
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    meta: dict = field(default_factory=dict)
    _index: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.shas)

    # --- storage ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> Memory | None:
        """The memory in ``path``; None when there is none or it is unreadable (rebuilt then)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta.get("format") != FORMAT:
                    return None
                text = bytes(data["text"]).decode("utf-8")
                offsets = data["text_offsets"]
                strings = [text[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
                n = len(data["times"])
                return cls(strings[:n], data["times"].astype(np.int64), strings[n : 2 * n],
                           strings[2 * n : 3 * n], data["indptr"].astype(np.int64),
                           data["features"], data["counts"], meta)  # fmt: skip
        except (OSError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def save(self, path: str | os.PathLike) -> None:
        """One file, written beside and renamed over: a reader sees the old memory or the new."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        strings = [*self.shas, *self.authors, *self.messages]
        offsets = np.zeros(len(strings) + 1, np.int64)
        offsets[1:] = np.cumsum([len(s) for s in strings])
        meta = {**self.meta, "format": FORMAT, "commits": len(self)}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     text=np.frombuffer("".join(strings).encode("utf-8"), np.uint8),
                     text_offsets=offsets, times=self.times, indptr=self.indptr,
                     features=self.features, counts=self.counts)  # fmt: skip
        os.replace(tmp, path)
        self.meta = meta

    def keep(self, rows: np.ndarray) -> Memory:
        """A memory of the commits at ``rows`` (in that order)."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        take = _ranges(starts, ends - starts)
        indptr = np.zeros(len(rows) + 1, np.int64)
        indptr[1:] = np.cumsum(ends - starts)
        return Memory([self.shas[i] for i in rows], self.times[rows],
                      [self.authors[i] for i in rows], [self.messages[i] for i in rows], indptr,
                      self.features[take], self.counts[take], dict(self.meta))  # fmt: skip

    def extend(self, rows: list[tuple[str, int, str, str, Counter]]) -> Memory:
        """This memory with ``rows`` (sha, time, author, message, features) after its own."""
        feats, counts, lengths = [], [], []
        for *_, features in rows:
            items = sorted(features.items())
            feats += [k for k, _ in items]
            counts += [min(v, 65535) for _, v in items]
            lengths.append(len(items))
        indptr = np.concatenate([self.indptr, self.indptr[-1] + np.cumsum(lengths, dtype=np.int64)])
        return Memory(
            self.shas + [r[0] for r in rows],
            np.concatenate([self.times, np.asarray([r[1] for r in rows], np.int64)]),
            self.authors + [r[2] for r in rows],
            self.messages + [r[3] for r in rows],
            indptr,
            np.concatenate([self.features, np.asarray(feats, np.uint32)]),
            np.concatenate([self.counts, np.asarray(counts, np.uint16)]),
            dict(self.meta),
        )

    # --- lookup ----------------------------------------------------------------------------------

    def _inverted(self):
        """Features sorted, with the commit and TF-IDF weight of each entry, and each commit's norm
        (made once per loaded memory)."""
        if self._index is None:
            n = len(self)
            rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(self.indptr))
            order = np.argsort(self.features, kind="stable")
            feats, rows = self.features[order], rows[order]
            uniq, starts, df = np.unique(feats, return_index=True, return_counts=True)
            idf = np.log((n + 1) / (df + 1)).astype(np.float32) + 1.0
            tf = 1.0 + np.log(self.counts[order].astype(np.float32))
            weight = tf * np.repeat(idf, df)
            norms = np.sqrt(np.bincount(rows, weights=weight * weight, minlength=n)) + 1e-9
            self._index = (uniq, starts, df, idf, rows, weight / norms[rows].astype(np.float32))
        return self._index

    def nearest(self, query: Counter, k: int = 8, allowed: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` commits most like ``query`` (`diff_features`), best first; only those where
        ``allowed`` (a boolean per commit) is True."""
        scores = self.similarities(query)
        if allowed is not None:
            scores[~allowed] = -1.0
        if not len(scores):
            return []
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def similarities(self, query: Counter) -> np.ndarray:
        """The TF-IDF cosine of ``query`` (`diff_features`) with every commit (float32, >= 0)."""
        if not len(self) or not query:
            return np.zeros(len(self), np.float32)
        uniq, starts, df, idf, rows, weight = self._inverted()
        keys = np.fromiter(query.keys(), np.uint32, len(query))
        at = np.searchsorted(uniq, keys)
        at[at >= len(uniq)] = 0
        found = uniq[at] == keys
        if not found.any():
            return np.zeros(len(self), np.float32)
        at, keys = at[found], keys[found]
        tf = 1.0 + np.log(np.fromiter((query[int(x)] for x in keys), np.float32, len(keys)))
        q = tf * idf[at]
        q /= math.sqrt(float(q @ q)) + 1e-9
        postings = _ranges(starts[at], df[at])
        weights = weight[postings] * np.repeat(q, df[at])
        return np.bincount(rows[postings], weights=weights, minlength=len(self)).astype(np.float32)

    def allowed_before(self, ancestors: set[str]) -> np.ndarray:
        return np.fromiter((s in ancestors for s in self.shas), bool, len(self))


def subject(message: str) -> str:
    return message.split("\n", 1)[0].strip()


class Recall:
    """What the memory offers one change: the earlier commits (those allowed), ranked by how alike
    their changes are to it, with their messages. Equal when the same commits rank the same."""

    def __init__(self, memory: Memory, scores: np.ndarray, author: str | None = None):
        self.memory = memory
        self.scores = scores
        self.order = np.argsort(-scores, kind="stable")
        self.order = self.order[scores[self.order] >= 0]  # the allowed ones
        self.author = author
        top = self.order[:16]
        self.key = tuple((memory.shas[i], round(float(scores[i]), 4)) for i in top)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recall) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.order)

    def nearest(self, k: int) -> list[tuple[str, float]]:
        """The messages of the ``k`` most alike commits, best first, with their similarity."""
        m = self.memory
        return [(m.messages[i], float(self.scores[i])) for i in self.order[:k]]

    def section(self, keep: int = RECALL_KEEP) -> list[str]:
        """The prompt's recall section (`cmc.prompt`): the distinct messages of the most alike
        commits, up to ``keep``, least alike first (the most alike sits next to the message)."""
        m, found = self.memory, []
        for i in self.order:
            if self.scores[i] <= 0 or len(found) == keep:
                break
            if m.messages[i] and m.messages[i] not in found:
                found.append(m.messages[i])
        return found[::-1]

    def continuing(self, typed: str, k: int, min_typed: int = 1) -> list[tuple[str, float]]:
        """Up to ``k`` distinct messages that start with ``typed`` (and go on), the most alike
        commits' first."""
        if len(typed.strip()) < min_typed:
            return []
        m, found, seen = self.memory, [], set()
        for i in self.order:
            text = m.messages[i]
            if len(text) > len(typed) and text.startswith(typed) and text not in seen:
                seen.add(text)
                found.append((text, float(self.scores[i])))
                if len(found) == k:
                    break
        return found


def recall(memory: Memory, query: Counter, allowed: np.ndarray | None = None,
           author: str | None = None) -> Recall:  # fmt: skip
    """Every allowed commit of ``memory`` scored against ``query`` (`diff_features`)."""
    scores = memory.similarities(query)
    if allowed is not None:
        scores[~allowed] = -1.0
    return Recall(memory, scores, author)


# --- building ---------------------------------------------------------------------------------------


@dataclass
class BuildStats:
    added: int = 0
    dropped: int = 0
    commits: int = 0
    seconds: float = 0.0
    finished: bool = True
    busy: bool = False  # another process was building it
    skipped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        if self.busy:
            return "memory: another cmc process is building it"
        state = "up to date" if self.finished else "partly built (run again to go on)"
        skips = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items()))
        return (f"memory: {self.commits} commits ({self.added} added, {self.dropped} dropped) in "
                f"{self.seconds:.1f}s, {state}" + (f"; skipped: {skips}" if skips else ""))  # fmt: skip


def _exclude_pathspec() -> list[str]:
    from cmc.gitctx import DEFAULT_EXCLUDES

    return [".", *(f":(exclude,glob)**/{p}" for p in DEFAULT_EXCLUDES)]


def newest_commits(cwd: str | os.PathLike, limit: int, tip: str = "HEAD") -> list[str]:
    """The newest ``limit`` non-merge commits reachable from ``tip``, newest first."""
    out = subprocess.run(git_argv("rev-list", "--no-merges", f"--max-count={limit}", tip, "--"),
                         cwd=cwd, capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["git rev-list failed"])[-1]
        raise CmcError(f"git rev-list: {said.removeprefix('fatal: ')}")
    return out.stdout.split()


def update(
    cwd: str | os.PathLike,
    common_dir: str | os.PathLike,
    limit: int = DEFAULT_LIMIT,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    tip: str = "HEAD",
    batch: int = BATCH,
) -> BuildStats:
    """Bring the memory of the repository at ``cwd`` up to date with the newest ``limit`` commits
    of ``tip``. Stops (saved, resumable) at ``deadline`` (a `time.monotonic` value). One build
    per repository at a time: a second returns at once (``busy``)."""
    started = time.monotonic()
    path = memory_path(common_dir)
    stats = BuildStats()
    lock = _lock(path)
    if lock is None:  # another process is building it: that one brings it up to date
        stats.finished = False
        stats.busy = True
        return stats
    try:
        return _update(cwd, path, limit, deadline, progress, tip, started, stats, batch)
    finally:
        os.close(lock)


def _lock(path: Path) -> int | None:
    """An exclusive lock on the memory's build (held for the life of the descriptor)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _update(cwd, path: Path, limit: int, deadline, progress, tip: str, started: float,
            stats: BuildStats, batch: int) -> BuildStats:  # fmt: skip
    from cmc.diffs import parse_patch_text
    from cmc.gitlog import GitLogError, log_commits
    from cmc.messages import clean_message

    head = _resolve(cwd, tip)
    wanted = newest_commits(cwd, limit, head) if head else []
    memory = Memory.load(path) or Memory()
    position = {sha: i for i, sha in enumerate(wanted)}
    keep = np.asarray([i for i, s in enumerate(memory.shas) if s in position], np.int64)
    stats.dropped = len(memory) - len(keep)
    if stats.dropped:
        memory = memory.keep(keep)
    known = set(memory.shas)
    todo = [s for s in reversed(wanted) if s not in known]  # oldest first
    pathspec = _exclude_pathspec()
    done = 0
    for begin in range(0, len(todo), batch):
        if deadline is not None and time.monotonic() > deadline:
            stats.finished = False
            break
        rows = []
        try:
            for commit in log_commits(cwd, todo[begin : begin + batch], ("-U0", "--no-renames"),
                                      pathspec, max_bytes=8 << 20, skipped=stats.skipped):  # fmt: skip
                mods = parse_patch_text(commit.patch, MAX_DIFF_CHARS) if commit.patch else []
                message = clean_message(commit.message[: 4 * MAX_MESSAGE_CHARS])[:MAX_MESSAGE_CHARS]
                rows.append((commit.sha, commit.time, email_key(commit.author_email), message,
                             diff_features(mods)))  # fmt: skip
        except GitLogError as exc:
            raise CmcError(f"git log: {exc}") from exc
        memory = memory.extend(rows)
        done += len(rows)
        stats.added += len(rows)
        memory = _in_history_order(memory, position)
        memory.meta.update(tip=head if stats.finished and begin + batch >= len(todo) else None,
                           limit=limit)  # fmt: skip
        memory.save(path)
        if progress is not None:
            progress(done, len(todo))
    settled = stats.finished and memory.meta.get("tip") != head  # (HEAD moved to a merge, say)
    if (stats.dropped and not stats.added) or settled or not path.exists():  # even when empty
        memory.meta.update(tip=head if stats.finished else None, limit=limit)
        memory.save(path)
    stats.commits = len(memory)
    stats.seconds = time.monotonic() - started
    return stats


def _in_history_order(memory: Memory, position: dict[str, int]) -> Memory:
    """Oldest first, as ``git rev-list`` orders them (so the newest are at the end)."""
    order = np.argsort([-position.get(s, -1) for s in memory.shas], kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return memory
    return memory.keep(order.astype(np.int64))


def _resolve(cwd: str | os.PathLike, tip: str) -> str | None:
    """The commit ``tip`` names (None before the first commit)."""
    out = subprocess.run(git_argv("rev-parse", "--verify", "--quiet", f"{tip}^{{commit}}"),
                         cwd=cwd, capture_output=True, text=True, check=False)  # fmt: skip
    return out.stdout.strip() or None if out.returncode == 0 else None


_CACHE: dict[str, tuple[tuple, Memory | None]] = {}


def stamp(common_dir: str | os.PathLike) -> tuple | None:
    """Changes whenever the memory file is replaced (a stat; None when there is none)."""
    try:
        st = memory_path(common_dir).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def behind(repo: Any) -> bool:
    """Whether a `cmc.gitctx.GitRepo`'s memory is missing or was built for another HEAD (read
    from git's files: no git process)."""
    found = load_cached(repo.common_dir)
    head = repo.head_from_files()
    if found is None:
        return head is not None and len(head) == 40
    return found.meta.get("tip") != head  # the commit HEAD named when it was built


def load_cached(common_dir: str | os.PathLike) -> Memory | None:
    """The repository's memory, loaded again only when its file changed (a stat): long-lived
    processes keep it, with its inverted index, between requests."""
    path = memory_path(common_dir)
    now = stamp(common_dir)
    if now is None:
        _CACHE.pop(str(path), None)
        return None
    cached = _CACHE.get(str(path))
    if cached is None or cached[0] != now:
        cached = (now, Memory.load(path))
        _CACHE[str(path)] = cached
    return cached[1]


class RowMemories:
    """Memories of repositories named by completion rows (``"repository": PATH`` beside the
    commit's ``hash``), for `cmc complete --batch` and `cmc eval`: each repository's memory is
    brought up to date once per process, and a row sees only the ancestors of its commit's parent
    (what its author had when committing it)."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self.updated: dict[str, Memory | None] = {}
        self.allowed: dict[tuple[str, str], np.ndarray] = {}

    def memory(self, repository: str) -> Memory | None:
        if repository not in self.updated:
            from cmc.gitctx import GitRepo

            repo = GitRepo(repository)
            update(repo.cwd, repo.common_dir, self.limit)
            self.updated[repository] = load_cached(repo.common_dir)
        return self.updated[repository]

    def recall_for(self, row: dict) -> Recall | None:
        repository, sha = row.get("repository"), row.get("hash")
        if not repository or not sha:
            return None
        memory = self.memory(repository)
        if memory is None:
            return None
        key = (repository, sha)
        if key not in self.allowed:
            before = ancestors(repository, sha, self.limit)
            # a commit the repository does not hold: the row is the next commit on its HEAD
            self.allowed[key] = (memory.allowed_before(before) if before is not None
                                 else np.ones(len(memory), bool))  # fmt: skip
        # Only the commits the row may see, as the memory its author had: the TF-IDF weights are
        # computed over them, not over later commits too (a cut repository then recalls the same).
        seen = memory.keep(np.flatnonzero(self.allowed[key]))
        author = row.get("author_email_sha1")
        return recall(seen, diff_features(row.get("mods") or []), None, author)


def clear(common_dir: str | os.PathLike) -> bool:
    path = memory_path(common_dir)
    if path.exists():
        path.unlink()
        return True
    return False


def ancestors(cwd: str | os.PathLike, commit: str, limit: int = DEFAULT_LIMIT) -> set[str] | None:
    """The commits a user had when making ``commit``: the ancestors of its parent (none for a
    root commit); None when the repository does not hold ``commit``."""
    if _resolve(cwd, commit) is None:
        return None
    out = subprocess.run(git_argv("rev-list", "--no-merges", f"--max-count={limit}", f"{commit}^",
                                  "--"), cwd=cwd, capture_output=True, text=True, check=False)  # fmt: skip
    return set(out.stdout.split()) if out.returncode == 0 else set()
