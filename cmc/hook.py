"""The prepare-commit-msg hook: installing it without harm, and what it does on each commit.

It never blocks a commit: any error or a run past ``cmc.timeout`` leaves git's message exactly as it
was, prints one line to stderr, logs details under the git dir, and exits 0. It needs no terminal.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cmc import CmcError, one_line
from cmc.gitcmd import git_argv

HOOK_NAME = "prepare-commit-msg"
MARKER = "cmc-managed-hook"
CHAINED_SUFFIX = ".cmc-chained"
SKIP_PREFIXES = ("fixup!", "squash!", "amend!")


# --- installing -------------------------------------------------------------------------------


def _git(repo: str | Path, *args: str) -> str:
    try:
        out = subprocess.run(
            git_argv(*args),
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
    from cmc.gitctx import GitRepo

    GitRepo(repo)  # outside a repository: the same one line as every other command says
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


def script_template() -> str:
    """The repository's ``hooks/prepare-commit-msg`` (installed as package data of ``cmc.hooks``)."""
    from importlib.resources import files

    return files("cmc.hooks").joinpath(HOOK_NAME).read_text(encoding="utf-8")


def hook_script(python: str | None = None) -> str:
    """The hook, with the interpreter that runs cmc recorded (never importing from the repo)."""
    from cmc.spawn import python_argv

    argv = python_argv("cmc.hook")  # not cmc.cli: click and the command tree cost ~40 ms a commit
    if python:
        argv[0] = python
    return (
        script_template()
        .replace("@CMC_PYTHON@", shlex.quote(argv[0]))
        .replace("@CMC_RUN@", " ".join(shlex.quote(a) for a in argv))
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
    tmp.write_text(hook_script())
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)
    os.replace(tmp, st.hook_path)
    return hook_status(repo)


def uninstall(repo: str | Path = ".") -> HookStatus:
    """Remove our hook only, and put back the hook it replaced."""
    st = hook_status(repo)
    if st.foreign:  # not ours (perhaps the one a first uninstall put back): nothing to undo
        return st
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


def _skip_reason(repo, settings, source: str, typed: str) -> str | None:
    if source not in settings.sources:
        return f"message source {source or 'empty'!r}"
    state = repo.state_in_progress()
    if state and state != "merge":
        return f"{state} in progress"
    if typed.lstrip().startswith(SKIP_PREFIXES):
        return "fixup/squash commit"
    return None


def _git_commit_argv() -> list[str] | None:
    """The argv of the `git commit` that runs this hook (Linux /proc), or None when unknown."""
    pid = os.getppid()
    for _ in range(4):  # git → sh (the hook script) → cmc; allow a wrapper or two
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        args = [a.decode("utf-8", "replace") for a in argv if a]
        if args and Path(args[0]).name in ("git", "git.exe") and "commit" in args:
            return args
        ppid = [ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")]
        if not ppid or ppid[0] in ("0", "1"):
            return None
        pid = int(ppid[0])
    return None


def editor_will_open(source: str) -> bool:
    """Whether git opens an editor on the message after this hook (what the user will review).

    Git does for a plain commit and a template; with -m/-F (source "message") and -C only with
    -e/--edit; ``--no-edit`` or ``GIT_EDITOR=:`` mean none.
    """
    if os.environ.get("GIT_EDITOR") == ":":
        return False
    argv = _git_commit_argv() or []
    flags = argv[argv.index("commit") + 1 :] if "commit" in argv else []
    if "--no-edit" in flags:
        return False
    if "-e" in flags or "--edit" in flags:
        return True
    if source == "message":
        return False
    reuse = any(f in ("-C", "--reuse-message") or f.startswith("--reuse-message=") for f in flags)
    return not (source == "commit" and reuse)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".cmc-tmp")
    tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
    os.replace(tmp, path)


def run(message_file: str, source: str = "", sha: str | None = None) -> int:
    """The hook's work. Always returns 0; git's message is only replaced by a finished result."""
    from cmc.settings import disabled_by_env

    if disabled_by_env():
        return 0
    git_dir: Path | None = None
    try:
        from cmc import msgfile
        from cmc.gitctx import GitRepo
        from cmc.settings import Settings

        repo = GitRepo(".")
        git_dir = repo.git_dir
        settings = Settings.load(repo.cwd, repo.common_dir)
        if not settings.enabled:
            return 0
        path = Path(message_file)
        original = path.read_bytes().decode("utf-8", "surrogateescape")
        parsed = msgfile.parse(original, settings.comment_char)
        reason = _skip_reason(repo, settings, source or "", parsed.typed)
        if reason:
            _log(git_dir, f"skipped: {reason}")
            return 0
        typed = parsed.typed
        if (
            not typed
        ):  # an empty message on a ticket branch starts with the ticket, as the author's do
            from cmc.ticket import ticket_prefix

            typed = ticket_prefix(repo, settings) or ""
        editor = editor_will_open(source or "")
        if source == "" and not editor:
            _log(git_dir, "skipped: no editor will open")
            return 0
        timeout = settings.timeout
        result: dict = {}

        def work() -> None:
            try:
                result["completion"] = _complete_for_hook(repo, settings, typed, timeout)
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
            raise result["error"]
        completion = result["completion"]
        if not completion.candidates:
            _log(git_dir, f"no candidates{': ' + completion.note if completion.note else ''}")
            if completion.note:
                noted = msgfile.render_note(parsed, f"cmc: no suggestion: {completion.note}.",
                                            editor_opens=editor, cleanup=settings.cleanup)  # fmt: skip
                if noted is not None:
                    _write_atomically(path, noted)
            return 0
        messages = [c.message for c in completion.candidates]
        from cmc.learn import announce_once

        note = announce_once(repo.common_dir) if settings.learn else None
        origins = [c.origin.describe() if c.origin else None for c in completion.candidates]
        text = msgfile.render(parsed, messages[0], messages[1:], editor_opens=editor,
                              cleanup=settings.cleanup, note=note and f"cmc: {note}.",
                              origins=origins)  # fmt: skip
        _write_atomically(path, text)
        _log(git_dir, f"suggested in {completion.latency_ms:.0f} ms with {completion.model}")
    except Exception as exc:
        _log(git_dir, traceback.format_exc())
        print(
            f"cmc: no suggestion ({one_line(exc)})",
            file=sys.stderr,
        )
    return 0


def _complete_for_hook(repo, settings, typed: str, timeout: float):
    """From the warm daemon when one answers in time; else in this process."""
    from cmc import client
    from cmc.decoding import DecodeSettings

    decode = DecodeSettings(num_candidates=settings.candidates)
    return client.complete(repo, settings, typed, decode, timeout=max(0.1, timeout - 0.5))


def run_from_args(message_file: str, source: str | None = None, sha: str | None = None) -> int:
    """`cmc hook run` and `python -m cmc.hook run`: git's prepare-commit-msg arguments. Under
    pre-commit only the message file is passed; the source and object come in
    PRE_COMMIT_COMMIT_MSG_SOURCE and PRE_COMMIT_COMMIT_OBJECT_NAME."""
    if source is None:
        source = os.environ.get("PRE_COMMIT_COMMIT_MSG_SOURCE", "")
        sha = sha or os.environ.get("PRE_COMMIT_COMMIT_OBJECT_NAME") or None
    return run(message_file, source, sha)


def _main(argv: list[str]) -> int:
    """The installed hook's entry (``python -m cmc.hook run FILE [SOURCE [SHA]]``). Like every
    hook path it never fails a commit: a wrong call is said in one line and exits 0."""
    if len(argv) < 2 or len(argv) > 4 or argv[0] != "run":
        print("cmc: usage: python -m cmc.hook run MESSAGE_FILE [SOURCE [SHA]]", file=sys.stderr)
        return 0
    return run_from_args(*argv[1:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
