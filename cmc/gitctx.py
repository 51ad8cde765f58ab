"""Context from git: the staged change as mods (exclusions applied, secrets masked) and the author's history.

Everything the model sees about a repository comes from here, from git's own commands (five of
them; gitpython, which wraps them, cost ~60–120 ms of import on every cold completion). The staged
diff is streamed from one ``git diff --cached`` process and kept within a character budget by
whole hunks, so a 50 MB staged diff costs neither memory nor time.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cmc import CmcError
from cmc.gitcmd import NO_DIFF_PROGRAMS, git_argv
from cmc.prompt import FILE_HISTORY_KEEP

if TYPE_CHECKING:
    from cmc.diffs import Mod

# cmc.diffs and cmc.messages (with the secret masks' ~50 regular expressions) are imported where the
# diff and history are read: the hook's process, which leaves that to the daemon, never pays them.

# Kept out of the prompt unless the repository says otherwise (their diffs are noise to the model).
DEFAULT_EXCLUDES = (
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lockb",
    "Cargo.lock",
    "poetry.lock",
    "Pipfile.lock",
    "uv.lock",
    "pdm.lock",
    "composer.lock",
    "Gemfile.lock",
    "go.sum",
    "flake.lock",
    "mix.lock",
    "pubspec.lock",
    "Podfile.lock",
    "packages.lock.json",
    "gradle.lockfile",
    "*.min.js",
    "*.min.css",
    "*.map",
    "*_pb2.py",
    "*_pb2_grpc.py",
    "*.pb.go",
    "*.pb.cc",
    "*.pb.h",
    "*.generated.*",
    "*.g.dart",
    "*.freezed.dart",
    "*.snap",
    "*.svg",
)

# .cmcignore is a committed file, so anyone with push access writes it: bounded, so that it cannot
# slow every completion (each pattern costs every staged path a match; one 1 MB line took 2 s).
MAX_IGNORE_PATTERNS = 1_000
MAX_IGNORE_BYTES = 64 << 10  # read at most this much of it
MAX_PATTERN_CHARS = 512  # a longer line is no path pattern: skipped


def _compile_pattern(raw: str) -> tuple[bool, re.Pattern[str]]:
    """(negated, regex) of one gitignore-style pattern.

    A pattern without a slash (other than a trailing one) matches at any depth; with one, from the
    root. ``dir/`` matches everything under any folder named ``dir``; ``!pat`` takes a path back.
    """
    negate = raw.startswith("!")
    pat = raw[1:] if negate else raw
    directory = pat.endswith("/")
    pat = pat.rstrip("/")
    anchored = "/" in pat
    core = fnmatch.translate(pat.lstrip("/")).removesuffix(r"\Z")
    lead = "" if anchored else "(?:.*/)?"
    tail = "/.*" if directory else "(?:/.*)?"
    return negate, re.compile(f"{lead}{core}{tail}", re.DOTALL)


class Exclusions:
    """Glob patterns for paths whose content is kept from the model (header line only).

    Compiled once; the last pattern that matches a path decides, as in .gitignore.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...] = DEFAULT_EXCLUDES):
        self.patterns = list(patterns)
        self._compiled = [_compile_pattern(p) for p in self.patterns if p.strip("!/")]

    def matches(self, path: str | None) -> bool:
        if not path:
            return False
        for negate, rx in reversed(self._compiled):
            if rx.fullmatch(path):
                return not negate
        return False


class GitRepo:
    """A repository seen by cmc. Settings are `cmc.settings`' business. Every question is one
    `git` call in the work tree (or the git folder of a bare repository)."""

    def __init__(self, path: str | Path = "."):
        self._path = Path(path)
        try:
            out = subprocess.run(
                git_argv("rev-parse", "--absolute-git-dir", "--git-common-dir",
                         "--is-inside-work-tree"),
                cwd=self._path, capture_output=True, text=True, check=False,
            )  # fmt: skip
        except OSError as exc:  # no such folder, or no git at all
            raise CmcError(f"{path} is not inside a git repository") from exc
        lines = out.stdout.splitlines()
        if out.returncode != 0 or len(lines) < 3:
            said = next((x for x in out.stderr.splitlines() if x.strip()), "")
            if said and "not a git repository" not in said:  # e.g. a broken config: git's words
                raise CmcError(f"git: {said.removeprefix('fatal: ').strip()}")
            raise CmcError(f"{path} is not inside a git repository")
        self.git_dir = Path(lines[0])
        common = Path(lines[1])
        self.common_dir = (common if common.is_absolute() else self._path / common).resolve()
        self.root: Path | None = None
        if lines[2] == "true":
            top = subprocess.run(git_argv("rev-parse", "--show-toplevel"), cwd=self._path,
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if top.returncode == 0 and top.stdout.strip():
                self.root = Path(top.stdout.strip())

    def _git(self, *args: str) -> str:
        """git's output (its final newline dropped); a failing git is one line in git's words."""
        out = subprocess.run(git_argv(*args), cwd=self.cwd, capture_output=True, check=False)
        if out.returncode != 0:
            lines = out.stderr.decode("utf-8", "replace").splitlines()
            said = next((x for x in lines if x.strip()), f"exit status {out.returncode}")
            raise CmcError(f"git {args[0]}: {said.removeprefix('fatal: ').strip()}")
        return out.stdout.decode("utf-8", "replace").removesuffix("\n")

    @property
    def cwd(self) -> Path:
        return self.root or self.git_dir

    def _quiet(self, *args: str) -> int:
        return subprocess.run(git_argv(*args), cwd=self.cwd, capture_output=True,
                              check=False).returncode  # fmt: skip

    def has_head(self) -> bool:
        return self._quiet("rev-parse", "--verify", "--quiet", "HEAD^{commit}") == 0

    def has_staged_changes(self) -> bool:
        return self._quiet("diff", "--cached", "--quiet", *NO_DIFF_PROGRAMS) == 1

    def exclusions(self, configured: list[str] | tuple[str, ...] = ()) -> Exclusions:
        """Default patterns, then ``git config cmc.exclude`` (``configured``), then ``.cmcignore``."""
        patterns = [*DEFAULT_EXCLUDES, *configured]
        ignore = self.root / ".cmcignore" if self.root is not None else None
        if ignore is not None and ignore.is_file():
            with ignore.open("rb") as f:
                text = f.read(MAX_IGNORE_BYTES).decode("utf-8", "replace")
            kept = [line.strip() for line in text.splitlines()]
            kept = [x for x in kept if x and not x.startswith("#") and len(x) <= MAX_PATTERN_CHARS]
            patterns += kept[:MAX_IGNORE_PATTERNS]
        return Exclusions(patterns)

    def _stream(self, *args: str) -> Iterator[str]:
        proc = subprocess.Popen(git_argv("-c", "core.quotePath=false", *args), cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for raw in proc.stdout:
                yield raw.decode("utf-8", "replace")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()

    def staged_mods(
        self, exclude: list[str] | tuple[str, ...] = (), max_chars: int = 24_000
    ) -> list[Mod]:
        """The staged change as mods. Excluded, binary and over-budget content is left out.

        ``exclude``: the configured patterns (`cmc.settings.Settings.exclude`). The content budget
        is shared by all files, first come first served, by whole hunks; each file keeps its header
        line even when its content does not fit.
        """
        excl = self.exclusions(exclude)
        # Credential files (.env, id_rsa, *.pem, …): not even their diff is asked of git.
        secret_files = self.staged_credential_files()
        skip = [
            f":(exclude,literal){p}"
            for mod in secret_files
            for p in {mod.old_path, mod.new_path}
            if p
        ]
        lines = self._stream(
            "diff", "--cached", "-M", "--no-color", *NO_DIFF_PROGRAMS,
            "--submodule=short", "--src-prefix=a/", "--dst-prefix=b/", "--", ".", *skip,
        )  # fmt: skip
        from cmc.diffs import keep_hunks, parse_patch

        mods: list[Mod] = []
        used = 0
        for mod in parse_patch(lines, max_chars_per_file=max_chars, cut=True):
            if excl.matches(mod.new_path) or excl.matches(mod.old_path):
                mod.diff, mod.truncated = "", True
            elif mod.diff.startswith(("Binary files ", "GIT binary patch")):
                mod.diff = ""
            else:  # secrets are masked by process_diff, the one diff → model text function
                if used + len(mod.diff) > max_chars:
                    mod.diff, mod.truncated = (
                        keep_hunks(mod.diff, max(0, max_chars - used), cut=True)[0],
                        True,
                    )
                used += len(mod.diff)
            mods.append(mod)
        return mods + secret_files

    def staged_credential_files(self) -> list[Mod]:
        """Staged files that hold credentials by their name (`cmc.secrets.CREDENTIAL_FILES`), as
        mods without content."""
        from cmc.secrets import is_credential_file

        out = self._git("diff", "--cached", "-M", "--name-status", "-z", *NO_DIFF_PROGRAMS, "--")
        fields = out.split("\0")
        from cmc.diffs import Mod

        found: list[Mod] = []
        i = 0
        kinds = {
            "A": "ADD",
            "D": "DELETE",
            "M": "MODIFY",
            "T": "MODIFY",
            "R": "RENAME",
            "C": "COPY",
        }
        while i < len(fields) and fields[i]:
            status = fields[i]
            two = status[:1] in "RC"
            old, new = fields[i + 1], fields[i + 2] if two else fields[i + 1]
            i += 3 if two else 2
            if is_credential_file(new) or is_credential_file(old):
                kind = kinds.get(status[:1], "MODIFY")
                found.append(
                    Mod(
                        kind,
                        None if kind == "ADD" else old,
                        None if kind == "DELETE" else new,
                        "",
                        True,
                    )
                )
        return found

    def author_history(
        self, name: str | None, email: str | None, limit: int = 64, scan: int = 2000
    ) -> list[str]:
        """The earlier messages of the author ``name``/``email`` reachable from HEAD, oldest → newest.

        Merges are skipped; messages are cleaned and filtered exactly as in the training data. At
        most ``limit`` messages (the newest), looking back over at most ``scan`` commits.
        """
        return [cleaned for _, cleaned in self.author_messages(name, email, limit, scan)]

    def author_messages(
        self, name: str | None, email: str | None, limit: int = 64, scan: int = 2000
    ) -> list[tuple[str, str]]:
        """`author_history` with each message as written beside its cleaned form."""
        if not self.has_head():
            return []
        if not name and not email:
            return []
        from cmc.messages import history_message

        # NUL-separated (-z, %x00): git refuses a NUL in a message, so no message can end a record
        # or start another author's (any other separator byte can be written into a message).
        out = self._git("log", "-z", "--no-merges", f"--max-count={scan}", "--format=%ae%x00%an%x00%B",
                        "HEAD")  # fmt: skip
        fields = out.split("\0")
        found: list[tuple[str, str]] = []
        for at in range(0, len(fields) - 2, 3):
            a_email, a_name, body = fields[at : at + 3]
            if (email and a_email.lower() == email.lower()) or (not email and a_name == name):
                cleaned = history_message(body)
                if cleaned:
                    found.append((body, cleaned))
                    if len(found) == limit:
                        break
        return found[::-1]

    def file_history(
        self, mods: list, limit: int = FILE_HISTORY_KEEP, scan: int = 64, max_paths: int = 64
    ) -> list[str]:
        """The messages of the newest earlier commits (any author, no merges) that touched the
        staged files, cleaned and filtered as history is, oldest → newest: at most ``limit`` of
        them, from one bounded ``git log`` over at most ``max_paths`` paths."""
        if not self.has_head():
            return []
        paths = sorted({p for m in mods for p in (m.old_path, m.new_path) if p})[:max_paths]
        if not paths:
            return []
        from cmc.messages import history_message

        out = self._git("log", "-z", "--no-merges", f"--max-count={scan}", "--format=%B", "HEAD",
                        "--", *(f":(literal){p}" for p in paths))  # fmt: skip
        found: list[str] = []
        for body in out.split("\0"):
            cleaned = history_message(body)
            if cleaned and cleaned not in found:
                found.append(cleaned)
                if len(found) == limit:
                    break
        return found[::-1]

    def head_commit(self) -> str | None:
        """HEAD's commit id (None before the first commit)."""
        if not self.has_head():
            return None
        return self._git("rev-parse", "HEAD")

    def commit_count(self) -> int:
        if not self.has_head():
            return 0
        return int(self._git("rev-list", "--count", "--no-merges", "HEAD"))

    def branch(self) -> str | None:
        """The current branch's short name (None when detached)."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            return None
        return head[len("ref: refs/heads/") :] if head.startswith("ref: refs/heads/") else None

    def author_subjects(self, name: str | None, email: str | None, limit: int = 10) -> list[str]:
        """The author's newest raw subject lines (uncleaned), newest first."""
        if not self.has_head() or not (name or email):
            return []
        who = ["--author", f"<{email}>"] if email else ["--author", name]
        out = self._git(
            "log", "--no-merges", f"--max-count={limit}", "--format=%s", "--fixed-strings", *who,
            "HEAD",
        )  # fmt: skip
        return [line for line in out.split("\n") if line.strip()]

    def index_state(self) -> tuple:
        """A fingerprint of what the staged diff and history depend on, from ``stat`` and small
        reads (no git process): the index, HEAD and the commit it names."""
        parts: list = []
        for name in ("index", "HEAD"):
            try:
                st = (self.git_dir / name).stat()
                parts.append((st.st_mtime_ns, st.st_size))
            except OSError:
                parts.append(None)
        parts.append(self.head_from_files())
        return tuple(parts)

    def head_from_files(self) -> str | None:
        """HEAD's commit id read from git's files (loose ref, else packed-refs), without a git
        process; the ref's name when it names no commit yet, None when HEAD is unreadable."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            return None
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        for base in (self.git_dir, self.common_dir):
            try:
                return (base / ref).read_text().strip()
            except OSError:
                continue
        try:
            with open(self.common_dir / "packed-refs", encoding="utf-8", errors="replace") as f:
                for line in f:
                    sha, _, name = line.strip().partition(" ")
                    if name == ref:
                        return sha
        except OSError:
            pass
        return ref  # an unborn branch

    def state_in_progress(self) -> str | None:
        """'rebase', 'cherry-pick', 'revert' or 'merge' when git is in the middle of one."""
        for name, state in (
            ("rebase-merge", "rebase"),
            ("rebase-apply", "rebase"),
            ("CHERRY_PICK_HEAD", "cherry-pick"),
            ("REVERT_HEAD", "revert"),
            ("MERGE_HEAD", "merge"),
        ):
            if (self.git_dir / name).exists():
                return state
        return None


_REPOS: OrderedDict[str, GitRepo] = OrderedDict()
_KEPT_REPOS = 64


def repo_at(path: str | Path) -> GitRepo:
    """The `GitRepo` at ``path`` for a long-lived process (the daemon, the language server): made
    once per path (two git processes), then reused while its git folder is there (a ``stat``)."""
    key = str(Path(path).resolve())
    repo = _REPOS.get(key)
    if repo is None or not repo.git_dir.is_dir():
        repo = GitRepo(path)
        _REPOS[key] = repo
    _REPOS.move_to_end(key)
    while len(_REPOS) > _KEPT_REPOS:
        _REPOS.popitem(last=False)
    return repo
