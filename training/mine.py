"""Mining: a git repository → raw CommitChronicle rows, oldest first, in parquet shards.

One ``git log -p`` process streams every commit (per-commit object access is orders of magnitude
slower); `cmc.diffs.parse_patch` turns each commit's patch into mods, the same parser the hook uses
on staged changes. Rules: no merge commits, commits since ``--since`` (2017-01-01), commits
changing more than 10,000 lines skipped, a file's diff kept to `MAX_FILE_CHARS`. Shards are written
as mining goes, so an interruption keeps what was mined. Bad input gets a one-line error; odd
commits (shallow boundary, too large) are counted skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cmc import CmcError
from cmc.diffs import parse_patch_text

MAX_CHANGED_LINES = 10_000
MAX_FILE_CHARS = 64_000
MAX_COMMIT_BYTES = 64 << 20  # a commit printing more than this is skipped unread
SHARD_ROWS = 2_000
_MARK = "\x00\x01cmc-commit\x00"
_FORMAT = "%x00%x01cmc-commit%x00%H%x00%an%x00%ae%x00%at%x00%B%x00%x01cmc-end"

LANGUAGES = {
    ".c": "C", ".h": "C", ".cs": "C#", ".cpp": "C++", ".cc": "C++", ".cxx": "C++", ".hpp": "C++",
    ".dart": "Dart", ".ex": "Elixir", ".exs": "Elixir", ".go": "Go", ".groovy": "Groovy",
    ".gradle": "Groovy", ".java": "Java", ".js": "JavaScript", ".mjs": "JavaScript", ".jsx": "JavaScript",
    ".kt": "Kotlin", ".kts": "Kotlin", ".nix": "Nix", ".m": "Objective-C", ".mm": "Objective-C",
    ".php": "PHP", ".py": "Python", ".rb": "Ruby", ".rs": "Rust", ".sh": "Shell", ".bash": "Shell",
    ".st": "Smalltalk", ".swift": "Swift", ".ts": "TypeScript", ".tsx": "TypeScript",
}  # fmt: skip
LICENSES = (
    ("Apache License", "Apache-2.0"),
    ("MIT License", "MIT"),
    ("Permission is hereby granted, free of charge", "MIT"),
    ("BSD 3-Clause", "BSD-3-Clause"),
    ("Redistribution and use in source and binary forms", "BSD-3-Clause"),
    ("GNU GENERAL PUBLIC LICENSE", "GPL"),
    ("Mozilla Public License", "MPL-2.0"),
)


@dataclass
class MineStats:
    repo: str
    commits: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)

    def line(self) -> str:
        skips = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.repo}: {self.commits} commits in {len(self.shards)} shard(s); skipped: {skips}"
        )


class _Repo:
    """A repository as mining needs it, through the git CLI: a working copy, a bare repository or a
    snapshot's git folder (which has no config, so gitpython would take its parent for the tree)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CmcError(f"{path}: no such folder")
        probe = self.run("rev-parse", "--git-common-dir", check=False)
        if probe.returncode != 0:
            raise CmcError(f"{path}: not a git repository")
        self.common_dir = (self.path / probe.stdout.strip()).resolve()
        if self.run("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).returncode != 0:
            raise CmcError(f"{path}: repository has no commits")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True,
                              errors="replace")  # fmt: skip
        if check and done.returncode != 0:
            raise CmcError(f"{self.path}: git {args[0]} failed: {done.stderr.strip()[-200:]}")
        return done

    def out(self, *args: str) -> str:
        return self.run(*args).stdout


def _open_repo(path: str | Path) -> _Repo:
    return _Repo(path)


@lru_cache(maxsize=1)
def _raw_schema():
    """The pyarrow schema of a raw row (the shared corpus's)."""
    import pyarrow as pa

    mod = pa.struct([(k, pa.string()) for k in ("change_type", "old_path", "new_path", "diff")])
    fields = [("author", pa.int64()), ("author_name", pa.string()), ("author_email_sha1", pa.string()),
              ("date", pa.string()), ("timezone", pa.int64()), ("hash", pa.string()), ("message", pa.string()),
              ("mods", pa.list_(mod)), ("language", pa.string()), ("license", pa.string()), ("repo", pa.string()),
              ("original_message", pa.string())]  # fmt: skip
    return pa.schema(fields)


def repo_name(repo: _Repo) -> str:
    url = repo.run("config", "--get", "remote.origin.url", check=False).stdout.strip()
    m = re.search(r"[:/]([^/:]+)/([^/]+?)(?:\.git)?/?$", url)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    folder = repo.path.resolve()
    if folder.name in ("repo", ".git") and "+" in folder.parent.name:  # a snapshot: OWNER+NAME/repo
        return folder.parent.name.replace("+", "/", 1)
    return folder.name


def detect_language(repo: _Repo) -> str:
    paths = repo.out("ls-tree", "-r", "--name-only", "HEAD").splitlines()
    counts = Counter(LANGUAGES.get(Path(p).suffix.lower()) for p in paths)
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else "unknown"


def detect_license(repo: _Repo) -> str:
    top = set(repo.out("ls-tree", "--name-only", "HEAD").splitlines())
    for name in ("LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING", "LICENCE"):
        if name in top:
            shown = repo.run("show", f"HEAD:{name}", check=False)
            if shown.returncode != 0:  # a snapshot may lack the blob
                return "unknown"
            head = shown.stdout[:2000]
            for needle, spdx in LICENSES:
                if needle.lower() in head.lower():
                    return spdx
            return "other"
    return "unknown"


def _read_ahead(stream, chunk: int = 1 << 20, depth: int = 32) -> Iterator[bytes]:
    """Chunks of ``stream`` read by a thread, so git never waits on a full pipe while we parse."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)

    def pump() -> None:
        try:
            while data := stream.read(chunk):
                q.put(data)
        finally:
            q.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    while data := q.get():
        yield data


def _commits(stream, max_bytes: int = MAX_COMMIT_BYTES) -> Iterator[tuple[list[str], str | None]]:
    """Split ``git log -p`` output into (header fields, patch text) per commit, reading big chunks.

    A commit whose output passes ``max_bytes`` is not held in memory: its patch comes back as None.
    """
    mark = _MARK.encode()
    buf = b""
    current: bytearray | None = None
    oversize = False

    def finish(block: bytes | bytearray, too_big: bool):
        end = block.find(b"\x01cmc-end")
        header = bytes(block[:end]).decode("utf-8", "replace").split("\x00")
        return header, None if too_big else bytes(block[end + len(b"\x01cmc-end") :]).decode(
            "utf-8", "replace"
        )

    for chunk in _read_ahead(stream):
        buf += chunk
        pos = 0
        while True:
            at = buf.find(mark, pos)
            if at < 0:
                keep = max(pos, len(buf) - (len(mark) - 1))  # a mark may straddle two chunks
                if current is not None and not oversize:
                    current += buf[pos:keep]
                    oversize = len(current) > max_bytes
                    if oversize:
                        current = bytearray(current[: current.find(b"\x01cmc-end") + 16])
                buf = buf[keep:]
                break
            if current is not None:
                if not oversize:
                    current += buf[pos:at]
                yield finish(current, oversize or len(current) > max_bytes)
            current, oversize, pos = bytearray(), False, at + len(mark)
    if current is not None:
        if not oversize:
            current += buf
        yield finish(current, oversize or len(current) > max_bytes)


def changed_lines(patch: str) -> int:
    """Added plus removed lines of a patch (file header lines excluded)."""
    return patch.count("\n+") + patch.count("\n-") - patch.count("\n+++ ") - patch.count("\n--- ")


DONE = "_done.json"  # written last into a repository's folder: its mining is complete
_MISSING = ("unable to read", "bad object", "missing blob", "could not read", "is corrupt")


def target_dir(out: str | Path, name: str) -> Path:
    return Path(out) / name.replace("/", "__")


def mine_repository(
    path: str | Path,
    out: str | Path,
    since: str | None = "2017-01-01",
    max_commits: int | None = None,
    progress: bool = True,
    name: str | None = None,
    language: str | None = None,
    license_: str | None = None,
) -> MineStats:
    """Mine one repository into ``OUT/<owner__name>/shard-NNNNN.parquet`` (+ `DONE` at the end).

    The commits are listed first (``git rev-list``: no merges, since ``since``, the newest
    ``max_commits``), then streamed oldest first by one ``git log -p``. A commit git cannot show
    (a snapshot without its largest blobs) is skipped and counted, and the log goes on after it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    repo = _open_repo(path)
    name = name or repo_name(repo)
    stats = MineStats(name)
    language = language or detect_language(repo)
    license_ = license_ or detect_license(repo)
    shallow = set()
    shallow_file = repo.common_dir / "shallow"
    if shallow_file.exists():
        shallow = set(shallow_file.read_text().split())
    target = target_dir(out, name)
    target.mkdir(parents=True, exist_ok=True)
    for old in [*target.glob("shard-*.parquet"), target / DONE]:
        old.unlink(missing_ok=True)
    cwd = repo.path
    listing = ["git", "rev-list", "--no-merges"]
    listing += [f"--since={since}"] if since else []
    listing += [f"--max-count={max_commits}"] if max_commits else []
    listed = subprocess.run([*listing, "HEAD"], cwd=cwd, capture_output=True, text=True)
    if listed.returncode != 0:
        raise CmcError(f"{path}: git rev-list failed: {listed.stderr.strip().splitlines()[-1:]}")
    commits = listed.stdout.split()[::-1]  # oldest first
    position = {sha: i for i, sha in enumerate(commits)}

    args = ["git", "-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin", "-p", "-M",
            "--no-color", "--no-ext-diff", "--no-textconv", "--submodule=short", "--src-prefix=a/",
            "--dst-prefix=b/", f"--format={_FORMAT}"]  # fmt: skip
    authors: dict[tuple[str, str], int] = {}
    rows: list[dict] = []

    writer = ThreadPoolExecutor(max_workers=1)  # compression and I/O overlap the parsing
    pending = []

    def flush() -> None:
        if rows:
            shard = target / f"shard-{len(stats.shards):05d}.parquet"
            table = pa.Table.from_pylist(rows, schema=_raw_schema())
            pending.append(writer.submit(pq.write_table, table, shard, compression="zstd"))
            stats.shards.append(str(shard))
            rows.clear()

    def take(header: list[str], patch: str | None) -> None:
        if len(header) < 5:
            stats.skipped["unparsable header"] += 1
            return
        sha, a_name, a_email, ts, message = header[:5]
        if sha in shallow:
            stats.skipped["shallow boundary"] += 1
            return
        if patch is None:
            stats.skipped[f"over {MAX_COMMIT_BYTES >> 20} MB of diff"] += 1
            return
        if changed_lines(patch) > MAX_CHANGED_LINES:
            stats.skipped[f"over {MAX_CHANGED_LINES} changed lines"] += 1
            return
        mods = [m.as_row() for m in parse_patch_text(patch, MAX_FILE_CHARS)]
        if not mods:
            stats.skipped["no file changes"] += 1
            return
        if "\ufffd" in message:
            stats.skipped["message not UTF-8 (kept, replaced)"] += 1
        email_sha = hashlib.sha1(a_email.strip().lower().encode()).hexdigest()
        rows.append(
            {
                "author": authors.setdefault((a_name, email_sha), len(authors)),
                "author_name": a_name,
                "author_email_sha1": email_sha,
                "date": time.strftime("%d.%m.%Y %H:%M:%S", time.gmtime(int(ts))),
                "timezone": 0,
                "hash": sha,
                "message": message.rstrip("\n"),
                "mods": mods,
                "language": language,
                "license": license_,
                "repo": name,
                "original_message": message.rstrip("\n"),
            }
        )
        stats.commits += 1
        if len(rows) >= SHARD_ROWS:
            flush()

    bar = tqdm(total=len(commits), desc=f"mine {name}", unit="commit", disable=not progress)
    begin, proc = 0, None
    try:
        while begin < len(commits):
            proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=1 << 20)  # fmt: skip
            feed = "".join(sha + "\n" for sha in commits[begin:]).encode()
            threading.Thread(target=_feed, args=(proc.stdin, feed), daemon=True).start()
            # Each commit is taken once the next one starts (or git ends well): when git dies on
            # a commit, its output may be cut short, and that commit is the one skipped.
            last: tuple[list[str], str | None] | None = None
            for header, patch in _commits(proc.stdout):
                if last is not None:
                    take(*last)
                    bar.update(1)
                last = (header, patch)
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.wait()
            if proc.returncode == 0:
                if last is not None:
                    take(*last)
                    bar.update(1)
                break
            if not any(word in err.lower() for word in _MISSING):
                raise CmcError(f"{path}: git log failed: {(err.splitlines() or ['?'])[-1]}")
            failed = position.get(last[0][0], begin) if last is not None and last[0] else begin
            stats.skipped["missing object (snapshot)"] += 1
            bar.update(1)
            begin = max(failed, begin) + 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        flush()
        writer.shutdown(wait=True)
        for job in pending:
            job.result()
        bar.close()
    done = {"repo": name, "commits": stats.commits, "skipped": dict(stats.skipped),
            "shards": len(stats.shards), "language": language, "license": license_}  # fmt: skip
    tmp = target / (DONE + ".tmp")
    tmp.write_text(json.dumps(done))
    os.replace(tmp, target / DONE)
    return stats


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # git died early: its error says why


def find_repo(spec: str, root: str | Path | None) -> Path | None:
    """A repository of a list: a path, or OWNER/NAME under ``root`` (a snapshot's layout)."""
    if Path(spec).exists():
        return Path(spec)
    if root is None or "/" not in spec:
        return None
    owner, name = spec.split("/", 1)
    for candidate in (f"{owner}+{name}/repo", f"{owner}+{name}", f"{owner}/{name}", f"{owner}__{name}"):  # fmt: skip
        if (Path(root) / candidate).exists():
            return Path(root) / candidate
    return None


def read_repo_list(path: str | Path, root: str | Path | None) -> list[dict]:
    """Jobs from a TSV whose header names ``repo`` (and optionally ``language``, ``license``)."""
    lines = [
        ln.rstrip("\n").split("\t") for ln in Path(path).read_text().splitlines() if ln.strip()
    ]
    if not lines or "repo" not in lines[0]:
        raise CmcError(f"{path}: a TSV with a header line naming a 'repo' column")
    head = lines[0]
    jobs = []
    for cells in lines[1:]:
        row = dict(zip(head, cells))
        spec = row.get("repo", "")
        found = find_repo(spec, root)
        jobs.append({"path": str(found) if found else None, "spec": spec,
                     "name": spec if "/" in spec and not Path(spec).exists() else None,
                     "language": row.get("language") or None, "license_": row.get("license") or None})  # fmt: skip
    return jobs


def mine_job(job: dict, out: str | Path, since, max_commits, redo: bool, progress: bool) -> dict:
    """One repository of `cmc data mine`: skipped when mined completely before; never raises."""
    spec = job.get("spec") or job.get("path")
    if not job.get("path"):
        return {"status": "failed", "commits": 0, "line": f"{spec}: not found (fetch it first)"}
    name = job.get("name")
    if name and not redo and (target_dir(out, name) / DONE).exists():
        done = json.loads((target_dir(out, name) / DONE).read_text())
        return {"status": "done before", "commits": done["commits"],
                "line": f"{name}: mined before ({done['commits']} commits)"}  # fmt: skip
    try:
        stats = mine_repository(job["path"], out, since=since, max_commits=max_commits,
                                progress=progress, name=name, language=job.get("language"),
                                license_=job.get("license_"))  # fmt: skip
    except CmcError as exc:
        return {"status": "failed", "commits": 0, "line": f"cmc: error: {exc}"}
    return {"status": "mined", "commits": stats.commits, "line": stats.line()}
