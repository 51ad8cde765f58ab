"""The prepare-commit-msg hook: installing it without harm, and what it does on each commit.

It never blocks a commit: any error or a run past ``cmc.timeout`` leaves git's message exactly as it
was, prints one line to stderr, logs details under the git dir, and exits 0. It needs no terminal.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cmc import CmcError

HOOK_NAME = "prepare-commit-msg"
MARKER = "cmc-managed-hook"
CHAINED_SUFFIX = ".cmc-chained"
SCRIPT = Path(__file__).parent / "resources" / HOOK_NAME
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SOURCES = ("", "template")  # sources cmc acts on unless `cmc.sources` says otherwise
ALL_SOURCES = ("", "template", "message", "merge", "squash", "commit")
SKIP_PREFIXES = ("fixup!", "squash!", "amend!")
SCISSORS = "------------------------ >8 ------------------------"


# --- installing -------------------------------------------------------------------------------


def _git(repo: str | Path, *args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise CmcError("git is not installed or not on PATH") from exc
    except subprocess.CalledProcessError as exc:
        raise CmcError(
            f"{repo}: {exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else 'git failed'}"
        ) from exc
    return out.stdout.strip()


def hooks_dir(repo: str | Path = ".") -> Path:
    """The folder git runs hooks from (honours core.hooksPath and worktrees)."""
    path = Path(_git(repo, "rev-parse", "--git-path", "hooks"))
    return path if path.is_absolute() else (Path(repo) / path).resolve()


def is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


@dataclass
class HookStatus:
    hook_path: Path
    installed: bool
    chained: Path | None
    foreign: bool  # a hook that is not ours sits where ours would go


def hook_status(repo: str | Path = ".") -> HookStatus:
    target = hooks_dir(repo) / HOOK_NAME
    chained = target.with_name(HOOK_NAME + CHAINED_SUFFIX)
    installed = target.exists() and is_ours(target)
    return HookStatus(
        target, installed, chained if chained.exists() else None, target.exists() and not installed
    )


def install(repo: str | Path = ".") -> HookStatus:
    """Put our hook in place; an existing hook is kept beside it and still runs first."""
    st = hook_status(repo)
    st.hook_path.parent.mkdir(parents=True, exist_ok=True)
    if st.foreign:
        if st.chained is not None:
            raise CmcError(f"{st.chained} already exists; move it away before installing")
        os.replace(st.hook_path, st.hook_path.with_name(HOOK_NAME + CHAINED_SUFFIX))
    tmp = st.hook_path.with_name(HOOK_NAME + ".cmc-tmp")
    shutil.copyfile(SCRIPT, tmp)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)
    os.replace(tmp, st.hook_path)
    return hook_status(repo)


def uninstall(repo: str | Path = ".") -> HookStatus:
    """Remove our hook only, and put back the hook it replaced."""
    st = hook_status(repo)
    if st.foreign:
        raise CmcError(f"{st.hook_path} is not cmc's hook; leaving it alone")
    if st.installed:
        st.hook_path.unlink()
    if st.chained is not None:
        os.replace(st.chained, st.hook_path)
    return hook_status(repo)


# --- running ----------------------------------------------------------------------------------


def _log(git_dir: Path | None, text: str) -> None:
    if git_dir is None:
        return
    try:
        log = git_dir / "cmc" / "hook.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if log.exists() and log.stat().st_size > 1_000_000:
            log.replace(log.with_suffix(".log.1"))
        with log.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")
    except OSError:
        pass


def split_message_file(text: str, comment: str) -> tuple[str, list[str]]:
    """(the text a user typed, the comment and scissors lines after it) of a message file."""
    typed, rest, cut = [], [], False
    for line in text.split("\n"):
        if cut or line.startswith(comment):
            cut = cut or SCISSORS in line
            rest.append(line)
        else:
            typed.append(line)
    return "\n".join(typed).strip("\n"), rest


def render_message(best: str, alternatives: list[str], comments: list[str], comment: str) -> str:
    """Message file content: the best message first, the others as comments, then git's comments."""
    lines = [best, ""]
    if alternatives:
        lines.append(f"{comment} cmc: other suggestions (copy one above to use it):")
        for alt in alternatives:
            lines += [f"{comment}   {piece}" for piece in alt.split("\n")]
    lines += [c for c in comments if c or lines[-1]]
    return "\n".join(lines).rstrip("\n") + "\n"


def _skip_reason(repo, source: str, typed: str) -> str | None:
    sources = repo.config("cmc.sources")
    wanted = (
        DEFAULT_SOURCES
        if sources is None
        else tuple("" if s in ("empty", "none") else s for s in sources.replace(",", " ").split())
    )
    if source not in wanted:
        return f"message source {source or 'empty'!r}"
    state = repo.state_in_progress()
    if state and state != "merge":
        return f"{state} in progress"
    if typed.lstrip().startswith(SKIP_PREFIXES):
        return "fixup/squash commit"
    if source == "" and os.environ.get("GIT_EDITOR") == ":":
        return "no editor will open (GIT_EDITOR=:)"
    return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".cmc-tmp")
    tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
    os.replace(tmp, path)


def run(message_file: str, source: str = "", sha: str | None = None) -> int:
    """The hook's work. Always returns 0; git's message is only replaced by a finished result."""
    if os.environ.get("CMC_DISABLE", "").lower() in ("1", "true", "yes"):
        return 0
    git_dir: Path | None = None
    try:
        from cmc.gitctx import GitRepo

        repo = GitRepo(".")
        git_dir = repo.git_dir
        if not repo.config_bool("cmc.enabled", True):
            return 0
        path = Path(message_file)
        original = path.read_bytes().decode("utf-8", "surrogateescape")
        comment = repo.config("core.commentChar") or "#"
        if comment == "auto":
            comment = "#"
        typed, comments = split_message_file(original, comment)
        reason = _skip_reason(repo, source or "", typed)
        if reason:
            _log(git_dir, f"skipped: {reason}")
            return 0
        timeout = float(repo.config("cmc.timeout") or DEFAULT_TIMEOUT_S)
        result: dict = {}

        def work() -> None:
            try:
                result["completion"] = _complete_for_hook(repo, typed, timeout)
            except BaseException as exc:  # reported below, in the main thread
                result["error"] = exc
                result["trace"] = traceback.format_exc()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            _log(git_dir, f"timed out after {timeout:g}s; message left as it was")
            print(
                f"cmc: no suggestion (timed out after {timeout:g}s; see `git config cmc.timeout`)",
                file=sys.stderr,
            )
            sys.stderr.flush()
            os._exit(0)  # the worker may sit inside torch; don't wait for it
        if "error" in result:
            _log(git_dir, result["trace"])
            exc = result["error"]
            print(
                f"cmc: no suggestion ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                file=sys.stderr,
            )
            return 0
        completion = result["completion"]
        if not completion.candidates:
            _log(git_dir, "no candidates")
            return 0
        messages = [c.message for c in completion.candidates]
        _write_atomically(path, render_message(messages[0], messages[1:], comments, comment))
        _log(git_dir, f"suggested in {completion.latency_ms:.0f} ms with {completion.model}")
    except Exception as exc:
        _log(git_dir, traceback.format_exc())
        print(
            f"cmc: no suggestion ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            file=sys.stderr,
        )
    return 0


def _complete_for_hook(repo, typed: str, timeout: float):
    """From the warm daemon when one answers in time; else in this process."""
    from cmc.daemon import complete_with_daemon

    n = int(repo.config("cmc.candidates") or 3)
    result = complete_with_daemon(repo, typed, n, timeout=max(0.1, timeout - 0.5))
    if result is not None:
        return result
    from cmc.complete import complete_context, context_from_repo
    from cmc.model import load_model, resolve_model

    spec = resolve_model(None, repo.config("cmc.model"), str(repo.common_dir))
    lm = load_model(spec)
    use_history = repo.config_bool("cmc.history", True)
    return complete_context(lm, context_from_repo(repo, use_history), typed, n)
