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
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cmc import CmcError
from cmc.diffs import parse_patch_text
from cmc.gitcmd import git_argv
from cmc.gitlog import MAX_COMMIT_BYTES, GitLogError, LoggedCommit, log_commits

MAX_CHANGED_LINES = 10_000
MAX_FILE_CHARS = 64_000
SHARD_ROWS = 2_000

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
        done = subprocess.run(git_argv(*args), cwd=self.path, capture_output=True, text=True,
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


def changed_lines(patch: str) -> int:
    """Added plus removed lines of a patch (file header lines excluded)."""
    return patch.count("\n+") + patch.count("\n-") - patch.count("\n+++ ") - patch.count("\n--- ")


DONE = "_done.json"  # written last into a repository's folder: its mining is complete


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
    listing = git_argv("rev-list", "--no-merges")
    listing += [f"--since={since}"] if since else []
    listing += [f"--max-count={max_commits}"] if max_commits else []
    listed = subprocess.run([*listing, "HEAD"], cwd=cwd, capture_output=True, text=True)
    if listed.returncode != 0:
        raise CmcError(f"{path}: git rev-list failed: {listed.stderr.strip().splitlines()[-1:]}")
    commits = listed.stdout.split()[::-1]  # oldest first
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

    def take(c: LoggedCommit) -> None:
        if c.sha in shallow:
            stats.skipped["shallow boundary"] += 1
            return
        if c.patch is None:
            stats.skipped[f"over {MAX_COMMIT_BYTES >> 20} MB of diff"] += 1
            return
        if changed_lines(c.patch) > MAX_CHANGED_LINES:
            stats.skipped[f"over {MAX_CHANGED_LINES} changed lines"] += 1
            return
        mods = [m.as_row() for m in parse_patch_text(c.patch, MAX_FILE_CHARS)]
        if not mods:
            stats.skipped["no file changes"] += 1
            return
        if "\ufffd" in c.message:
            stats.skipped["message not UTF-8 (kept, replaced)"] += 1
        email_sha = hashlib.sha1(c.author_email.strip().lower().encode()).hexdigest()
        rows.append(
            {
                "author": authors.setdefault((c.author_name, email_sha), len(authors)),
                "author_name": c.author_name,
                "author_email_sha1": email_sha,
                "date": time.strftime("%d.%m.%Y %H:%M:%S", time.gmtime(c.time)),
                "timezone": 0,
                "hash": c.sha,
                "message": c.message.rstrip("\n"),
                "mods": mods,
                "language": language,
                "license": license_,
                "repo": name,
                "original_message": c.message.rstrip("\n"),
            }
        )
        stats.commits += 1
        if len(rows) >= SHARD_ROWS:
            flush()

    bar = tqdm(total=len(commits), desc=f"mine {name}", unit="commit", disable=not progress)
    try:
        for commit in log_commits(cwd, commits, skipped=stats.skipped):
            take(commit)
            bar.update(1)
        bar.update(len(commits) - bar.n)  # the commits git could not show
    except GitLogError as exc:
        raise CmcError(f"{path}: git log failed: {exc}") from exc
    finally:
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
