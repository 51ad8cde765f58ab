"""The prepare-commit-msg hook, driven by real `git commit` runs with a scripted editor."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    LEARNED_DIFF_FILE,
    LEARNED_MESSAGE,
    PARSER_AFTER,
    PARSER_BEFORE,
    cmc_env,
    commit_file,
    git,
)

from cmc import hook as hook_mod

ROOT = Path(__file__).resolve().parent.parent


def cmc(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cmc", *args], cwd=repo, env=cmc_env(env), capture_output=True, text=True
    )


def editor_script(tmp_path: Path) -> tuple[str, Path]:
    """A GIT_EDITOR that records what git (and the hook) put in the message file, changing nothing."""
    seen = tmp_path / "editor-saw.txt"
    script = tmp_path / "editor.sh"
    script.write_text(f'#!/bin/sh\ncp "$1" "{seen}"\n')
    script.chmod(0o755)
    return str(script), seen


def staged_parser_change(repo: Path) -> None:
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, "Add a parser for configuration files")
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", LEARNED_DIFF_FILE)


def commit(repo: Path, *args: str, editor: str | None = None, env: dict | None = None):
    extra = {"GIT_EDITOR": editor or ":", **(env or {})}
    return subprocess.run(
        ["git", "commit", *args], cwd=repo, env=cmc_env(extra), capture_output=True, text=True
    )


def last_message(repo: Path) -> str:
    return git(repo, "log", "-1", "--format=%B").stdout.strip()


@pytest.fixture
def hooked_repo(repo: Path, tiny_model: Path) -> Path:
    assert cmc(repo, "hook", "install").returncode == 0
    git(repo, "config", "cmc.model", str(tiny_model))
    git(repo, "config", "cmc.timeout", "120")
    return repo


# --- installing -----------------------------------------------------------------------------------


def test_install_writes_marked_executable_hook_and_status_reports_it(repo: Path):
    out = cmc(repo, "hook", "install")
    assert out.returncode == 0, out.stderr
    hook = repo / ".git" / "hooks" / "prepare-commit-msg"
    assert hook_mod.MARKER in hook.read_text()
    assert os.stat(hook).st_mode & stat.S_IXUSR
    status = cmc(repo, "hook", "status")
    assert "installed at" in status.stdout and "not installed" not in status.stdout


def test_the_installed_hook_is_the_repositorys_hooks_script(repo: Path):
    """`cmc hook install` installs hooks/prepare-commit-msg itself, only the interpreter filled in."""
    import re

    assert cmc(repo, "hook", "install").returncode == 0
    source = (ROOT / "hooks" / "prepare-commit-msg").read_text().splitlines()
    installed = (repo / ".git" / "hooks" / "prepare-commit-msg").read_text().splitlines()
    assert len(installed) == len(source)
    for want, got in zip(source, installed):
        if "@CMC_" not in want:
            assert got == want
        else:  # the recorded interpreter (and `-P -m cmc.hook`) where the placeholders were
            pattern = (
                re.escape(want).replace("@CMC_PYTHON@", ".+").replace("@CMC_RUN@", ".+ -m cmc.hook")
            )
            assert re.fullmatch(pattern, got), (want, got)
    assert sum("@CMC_" in line for line in source) == 2


def test_existing_hook_is_chained_and_restored(repo: Path, tmp_path: Path):
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    legacy = hooks / "prepare-commit-msg"
    marker = tmp_path / "legacy-ran"
    legacy_text = f'#!/bin/sh\necho "$2" > "{marker}"\nexit 0\n'
    legacy.write_text(legacy_text)
    legacy.chmod(0o755)
    assert cmc(repo, "hook", "install").returncode == 0
    assert (hooks / "prepare-commit-msg.cmc-chained").read_text() == legacy_text
    commit_file(repo, "a.txt", "a\n", "Add the first file of the project", env=cmc_env())
    assert marker.exists(), "the chained hook did not run"
    assert cmc(repo, "hook", "uninstall").returncode == 0
    assert legacy.read_text() == legacy_text
    assert not (hooks / "prepare-commit-msg.cmc-chained").exists()


def test_chained_hook_failure_is_honoured(repo: Path):
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "prepare-commit-msg").write_text("#!/bin/sh\nexit 3\n")
    (hooks / "prepare-commit-msg").chmod(0o755)
    cmc(repo, "hook", "install")
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "a.txt")
    result = commit(repo, "-m", "Add a file that will not be committed")
    assert result.returncode != 0
    assert git(repo, "rev-parse", "--verify", "HEAD", check=False).returncode != 0


def test_uninstall_says_what_it_did(repo: Path):
    assert cmc(repo, "hook", "install").returncode == 0
    removed = cmc(repo, "hook", "uninstall")
    hook = repo / ".git" / "hooks" / "prepare-commit-msg"
    assert removed.stdout.strip() == f"hook: removed from {hook}"
    again = cmc(repo, "hook", "uninstall")
    assert again.stdout.strip() == f"hook: not installed at {hook}"


def test_outside_a_repository_every_command_says_the_same_line(tmp_path: Path):
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    env = {"GIT_CEILING_DIRECTORIES": str(tmp_path)}
    said = set()
    for args in (["complete"], ["hook", "status"], ["hook", "install"], ["hook", "uninstall"],
                 ["memory", "status"], ["prompt"]):  # fmt: skip
        result = cmc(outside, *args, env=env)
        assert result.returncode == 1, args
        said.add(result.stderr.strip())
    assert said == {"cmc: error: . is not inside a git repository"}


def test_uninstall_leaves_a_foreign_hook_alone(repo: Path):
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "prepare-commit-msg").write_text("#!/bin/sh\nexit 0\n")
    result = cmc(repo, "hook", "uninstall")
    assert result.returncode == 0 and "another hook is there" in result.stdout
    assert (hooks / "prepare-commit-msg").read_text() == "#!/bin/sh\nexit 0\n"


def test_uninstall_twice_is_a_no_op(repo: Path):
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "prepare-commit-msg").write_text("#!/bin/sh\nexit 0\n")
    assert cmc(repo, "hook", "install").returncode == 0
    first, second = cmc(repo, "hook", "uninstall"), cmc(repo, "hook", "uninstall")
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert (hooks / "prepare-commit-msg").read_text() == "#!/bin/sh\nexit 0\n"


def test_core_hooks_path_is_honoured(repo: Path):
    git(repo, "config", "core.hooksPath", "my-hooks")
    assert cmc(repo, "hook", "install").returncode == 0
    assert hook_mod.MARKER in (repo / "my-hooks" / "prepare-commit-msg").read_text()
    assert not (repo / ".git" / "hooks" / "prepare-commit-msg").exists()


def test_worktree_uses_the_shared_hook_and_model(hooked_repo: Path, tmp_path: Path):
    commit_file(hooked_repo, "README.md", "hello\n", "Add a readme for the project")
    wt = tmp_path / "wt"
    git(hooked_repo, "worktree", "add", "-q", str(wt))
    assert hook_mod.hooks_dir(wt) == (hooked_repo / ".git" / "hooks").resolve()
    status = cmc(wt, "hook", "status")
    assert "installed at" in status.stdout and "not installed" not in status.stdout
    (wt / LEARNED_DIFF_FILE).parent.mkdir(parents=True)
    (wt / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(wt, "add", LEARNED_DIFF_FILE)
    editor, seen = editor_script(tmp_path)
    assert commit(wt, editor=editor).returncode == 0
    assert seen.read_text().split("\n")[0].strip() != ""


# --- behaviour by message source ------------------------------------------------------------------


def test_plain_commit_gets_best_message_and_alternatives_as_comments(
    hooked_repo: Path, tmp_path: Path
):
    staged_parser_change(hooked_repo)
    editor, seen = editor_script(tmp_path)
    result = commit(hooked_repo, editor=editor)
    assert result.returncode == 0, result.stderr
    text = seen.read_text()
    assert text.split("\n")[0] == LEARNED_MESSAGE
    assert "# cmc: other suggestions" in text
    assert "# Please enter the commit message" in text  # git's own comments survive
    assert last_message(hooked_repo) == LEARNED_MESSAGE


def test_first_commit_of_a_repository(hooked_repo: Path, tmp_path: Path):
    (hooked_repo / LEARNED_DIFF_FILE).parent.mkdir(parents=True)
    (hooked_repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(hooked_repo, "add", LEARNED_DIFF_FILE)
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    assert seen.read_text().split("\n")[0].strip()
    assert last_message(hooked_repo) == seen.read_text().split("\n")[0].strip()


def test_template_text_is_completed(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    template = tmp_path / "template.txt"
    template.write_text("Fix parser cr\n# a comment from the template\n")
    git(hooked_repo, "config", "commit.template", str(template))
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert "# a comment from the template" in seen.read_text()


@pytest.mark.parametrize(
    "args", [["-m", "Keep exactly what I wrote here"], ["--amend", "--no-edit"]]
)
def test_message_and_amend_are_left_untouched(hooked_repo: Path, args: list[str]):
    staged_parser_change(hooked_repo)
    if "--amend" in args:
        before = last_message(hooked_repo)
        assert commit(hooked_repo, *args).returncode == 0
        assert last_message(hooked_repo) == before
    else:
        assert commit(hooked_repo, *args).returncode == 0
        assert last_message(hooked_repo) == "Keep exactly what I wrote here"


def test_fixup_commit_is_left_untouched(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, "--fixup", "HEAD", "-e", editor=editor).returncode == 0
    assert seen.read_text().startswith("fixup! Add a parser")
    assert "cmc: other suggestions" not in seen.read_text()


def test_cherry_pick_is_left_untouched(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    assert commit(hooked_repo, "-m", "Handle empty input in the parser").returncode == 0
    git(hooked_repo, "checkout", "-q", "-b", "other", "HEAD~1")
    editor, seen = editor_script(tmp_path)
    result = subprocess.run(
        ["git", "cherry-pick", "-e", "main"], cwd=hooked_repo, env=cmc_env({"GIT_EDITOR": editor}),
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split("\n")[0] == "Handle empty input in the parser"


@pytest.mark.parametrize("optout", ["env=1", "env=true", "env=YES", "config"])
def test_opt_outs_leave_message_untouched(hooked_repo: Path, tmp_path: Path, optout: str):
    staged_parser_change(hooked_repo)
    env = {"CMC_DISABLE": optout.split("=")[1]} if optout.startswith("env") else {}
    if optout == "config":
        git(hooked_repo, "config", "cmc.enabled", "false")
    editor, seen = editor_script(tmp_path)
    commit(hooked_repo, editor=editor, env=env)
    assert seen.read_text().startswith("\n# Please enter the commit message")
    assert "enabled: no" in cmc(hooked_repo, "hook", "status", env=env).stdout  # the same reading


# --- the message file: only the message is ever committed -----------------------------------------


def test_other_comment_char_is_used_for_alternatives_and_stripped(
    hooked_repo: Path, tmp_path: Path
):
    staged_parser_change(hooked_repo)
    git(hooked_repo, "config", "core.commentChar", ";")
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    text = seen.read_text()
    assert text.split("\n")[0] == LEARNED_MESSAGE
    assert "; cmc: other suggestions" in text and "; Please enter the commit message" in text
    assert last_message(hooked_repo) == LEARNED_MESSAGE


def test_comment_char_auto_is_resolved_as_git_does(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    git(hooked_repo, "config", "core.commentChar", "auto")
    template = tmp_path / "template.txt"
    template.write_text("Fix parser cr\n\n#42 is the ticket\n")  # '#' starts a line: git picks ';'
    git(hooked_repo, "config", "commit.template", str(template))
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    assert "; Please enter the commit message" in seen.read_text()
    committed = last_message(hooked_repo)
    assert committed.startswith("Fix parser cr")
    assert (
        "Please enter" not in committed and "cmc:" not in committed and "On branch" not in committed
    )


@pytest.mark.parametrize("cleanup", ["scissors", "whitespace", "verbatim"])
def test_no_alternatives_where_git_would_keep_comments(
    hooked_repo: Path, tmp_path: Path, cleanup: str
):
    staged_parser_change(hooked_repo)
    git(hooked_repo, "config", "commit.cleanup", cleanup)
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert "cmc:" not in seen.read_text()
    assert "cmc:" not in last_message(hooked_repo)


def test_message_source_without_an_editor_commits_only_the_message(hooked_repo: Path):
    staged_parser_change(hooked_repo)
    git(hooked_repo, "config", "cmc.sources", "empty template message")
    assert commit(hooked_repo, "-m", "Fix parser cr").returncode == 0
    assert last_message(hooked_repo) == LEARNED_MESSAGE  # completed, and nothing else


def test_message_source_with_edit_gets_alternatives_for_review(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    git(hooked_repo, "config", "cmc.sources", "empty template message")
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, "-e", "-m", "Fix parser cr", editor=editor).returncode == 0
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert "# cmc: other suggestions" in seen.read_text()
    assert last_message(hooked_repo) == LEARNED_MESSAGE


# --- failing open ---------------------------------------------------------------------------------


def _commit_with_broken_model(repo: Path, tmp_path: Path, model: str, timeout: str = "60"):
    git(repo, "config", "cmc.model", model)
    git(repo, "config", "cmc.timeout", timeout)
    staged_parser_change(repo)
    editor, seen = editor_script(tmp_path)
    result = commit(repo, "-m", "My own words stay", editor=editor, env={})
    # -m is left alone anyway; the empty-source run below is the real check.
    assert result.returncode == 0
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    result = commit(repo, editor=editor)
    return result, seen.read_text()


def test_missing_model_path_fails_open(hooked_repo: Path, tmp_path: Path):
    result, text = _commit_with_broken_model(hooked_repo, tmp_path, str(tmp_path / "no-such-model"))
    assert text.startswith("\n# Please enter the commit message")
    assert "cmc: no suggestion" in result.stderr and "not found" in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith("cmc:")]) == 1
    assert (hooked_repo / ".git" / "cmc" / "hook.log").exists()


def test_model_that_raises_fails_open(hooked_repo: Path, tmp_path: Path, tiny_model: Path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in tiny_model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    result, text = _commit_with_broken_model(hooked_repo, tmp_path, str(broken))
    assert text.startswith("\n# Please enter the commit message")
    assert "cmc: no suggestion" in result.stderr


def test_model_slower_than_the_limit_leaves_message_and_commit_goes_through(
    hooked_repo: Path, tmp_path: Path, tiny_model: Path
):
    # Loading torch and a model takes far longer than 0.05 s: the limit always strikes first.
    result, text = _commit_with_broken_model(hooked_repo, tmp_path, str(tiny_model), timeout="0.05")
    assert text.startswith("\n# Please enter the commit message")
    assert "timed out" in result.stderr


@pytest.mark.parametrize("how", ["path-without-cmc", "env -i"])
def test_commits_from_anywhere_use_the_recorded_interpreter(
    hooked_repo: Path, tmp_path: Path, how: str
):
    """IDEs and GUI clients commit without the virtualenv on PATH, some with an empty environment."""
    staged_parser_change(hooked_repo)
    editor, seen = editor_script(tmp_path)
    if how == "env -i":
        cmd = [
            "env",
            "-i",
            f"GIT_EDITOR={editor}",
            "CMC_NO_DAEMON=1",
            "/usr/bin/git",
            "commit",
            "-q",
        ]
        env = None
    else:
        cmd = ["git", "commit", "-q"]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "GIT_EDITOR": editor,
            "CMC_NO_DAEMON": "1",
        }
    assert (
        subprocess.run(["sh", "-c", "command -v cmc"], env={"PATH": "/usr/bin:/bin"}).returncode
        != 0
    )
    result = subprocess.run(cmd, cwd=hooked_repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert last_message(hooked_repo) == LEARNED_MESSAGE


def test_without_cmc_anywhere_the_hook_says_one_line_and_exits_zero(repo: Path, tmp_path: Path):
    hook_mod.install(repo)
    hook = repo / ".git/hooks/prepare-commit-msg"
    hook.write_text(hook.read_text().replace(sys.executable, str(tmp_path / "gone" / "python")))
    msg = tmp_path / "MSG"
    msg.write_text("keep me\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(hook), str(msg)], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("cmc: not found")
    assert msg.read_text() == "keep me\n"


@pytest.mark.slow
def test_huge_staged_diff_is_cut_and_still_completed(hooked_repo: Path, tmp_path: Path):
    staged_parser_change(hooked_repo)
    line = "x = 'a fairly long generated line of python source code in a data file'\n"
    (hooked_repo / "big.py").write_text(line * (50_000_000 // len(line)))
    git(hooked_repo, "add", "big.py")
    from cmc.gitctx import GitRepo

    mods = GitRepo(hooked_repo).staged_mods()
    assert {m.path for m in mods} == {"big.py", LEARNED_DIFF_FILE}
    assert sum(len(m.diff) for m in mods) <= 24_000
    assert any(m.truncated for m in mods)
    editor, seen = editor_script(tmp_path)
    result = commit(hooked_repo, editor=editor)
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split("\n")[0].strip()


@pytest.mark.parametrize(
    "history, config, expected",
    [
        (["ABC-7: Add the lexer", "ABC-9: Fix the lexer"], None, "ABC-123: "),
        (["[ABC-7] Add the lexer", "[ABC-9] Fix the lexer"], None, "[ABC-123] "),
        (["Add the lexer", "Fix the lexer"], None, None),  # this author writes no tickets
        (["ABC-7: Add the lexer", "ABC-9: Fix the lexer"], ("cmc.ticket", "false"), None),
        (
            ["ABC-7: Add the lexer", "ABC-9: Fix the lexer"],
            ("cmc.ticketPattern", "XYZ-[0-9]+"),
            None,
        ),
    ],
)
def test_ticket_from_the_branch(hooked_repo: Path, tmp_path: Path, history, config, expected):
    for i, message in enumerate(history):
        commit_file(hooked_repo, f"lexer{i}.py", f"x = {i}\n", message)
    git(hooked_repo, "checkout", "-q", "-b", "feature/abc-123-empty-config")
    staged_parser_change(hooked_repo)
    if config:
        git(hooked_repo, "config", *config)
    editor, seen = editor_script(tmp_path)
    assert commit(hooked_repo, editor=editor).returncode == 0
    first = seen.read_text().split("\n")[0]
    if expected:
        assert first.startswith(expected) and len(first) > len(expected)
    else:
        assert first == LEARNED_MESSAGE


def test_a_failing_git_config_is_an_error_not_unset(repo: Path, tmp_path: Path):
    with (repo / ".git" / "config").open("a") as f:
        f.write("[cmc\n\tenabled = false\n")  # a broken section: git itself refuses the file
    status = cmc(repo, "hook", "status")
    assert status.returncode == 1 and "bad config line" in status.stderr.strip()
    msg = tmp_path / "MSG"
    msg.write_text("keep me\n")
    run = subprocess.run(
        ["cmc", "hook", "run", str(msg)], cwd=repo, env=cmc_env(), capture_output=True, text=True
    )
    assert run.returncode == 0 and "bad config line" in run.stderr  # said, and the commit goes on
    assert msg.read_text() == "keep me\n"


def test_the_hooks_own_entry_never_fails_a_commit_on_a_wrong_call(repo: Path, tmp_path: Path):
    """`python -m cmc.hook` (what the installed script runs, without the CLI's imports)."""
    msg = tmp_path / "MSG"
    msg.write_text("keep me\n")
    for args in ([], ["run"], ["nonsense", str(msg)], ["run", str(msg), "message", "sha", "x"]):
        out = subprocess.run([sys.executable, "-P", "-m", "cmc.hook", *args], cwd=repo,
                             env=cmc_env(), capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0 and out.stderr.startswith("cmc: usage:"), (args, out.stderr)
        assert out.stderr.count("\n") == 1 and msg.read_text() == "keep me\n"
    assert ' -P -m cmc.hook run "$@"' in hook_mod.hook_script()  # not the CLI: ~40 ms a commit


# --- two models: one for whole messages, one for keystrokes -----------------------------------------

OTHER_MESSAGE = "Return an empty list for empty parser input"


@pytest.fixture(scope="module")
def message_model(tmp_path_factory) -> Path:
    """A second tiny model, trained here to write another message for the same change."""
    from conftest import learned_diff, overfit_model

    return overfit_model(tmp_path_factory.mktemp("models") / "other", learned_diff(), OTHER_MESSAGE)


def test_a_message_model_writes_the_commit_and_the_model_keeps_the_keystrokes(
    hooked_repo: Path, tmp_path: Path, tiny_model: Path, message_model: Path
):
    """`cmc.messageModel`: the hook's whole message (a real `git commit`) and `cmc complete` come
    from it; the language server's one-line completions still from `cmc.model`; a --model flag
    means one model for everything; `cmc hook status` names both."""
    from cmc.decoding import KEYSTROKE, DecodeSettings
    from cmc.protocol import CompleteRequest
    from cmc.service import CompletionService
    from cmc.settings import Settings

    git(hooked_repo, "config", "cmc.messageModel", str(message_model))
    staged_parser_change(hooked_repo)
    status = cmc(hooked_repo, "hook", "status").stdout
    assert f"model: {tiny_model}\n" in status and f"message model: {message_model}\n" in status
    out = cmc(hooked_repo, "complete", "--json", "--beams", "1")
    assert out.returncode == 0, out.stderr
    import json

    answer = json.loads(out.stdout)
    assert answer["candidates"][0]["message"] == OTHER_MESSAGE
    flagged = json.loads(cmc(hooked_repo, "complete", "--json", "--beams", "1", "--model",
                             str(tiny_model)).stdout)  # fmt: skip
    assert flagged["candidates"][0]["message"] == LEARNED_MESSAGE
    settings = Settings.load(hooked_repo, hooked_repo / ".git")
    service = CompletionService()  # what the daemon and the language server run
    whole, _ = service.complete(CompleteRequest(str(hooked_repo), "", settings,
                                                DecodeSettings(num_beams=1, max_new_tokens=16)))  # fmt: skip
    line, _ = service.complete(CompleteRequest(str(hooked_repo), "", settings, KEYSTROKE))
    assert whole.candidates[0].message == OTHER_MESSAGE
    assert line.candidates[0].message == LEARNED_MESSAGE
    assert Settings.from_json(settings.to_json()).message_model == str(message_model)  # daemon's
    with pytest.raises(ValueError, match="message_model"):
        Settings.from_json({**settings.to_json(), "message_model": 3})
    editor, seen = editor_script(tmp_path)
    result = commit(hooked_repo, editor=editor)
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split("\n")[0] == OTHER_MESSAGE  # what the hook put before the editor
    assert last_message(hooked_repo) == OTHER_MESSAGE


def test_a_message_model_kept_as_a_delta_is_not_built_inside_a_request(
    hooked_repo: Path, tmp_path: Path, tiny_model: Path
):
    """`cmc.messageModel` may name a delta folder (`cmc checkpoint delta`); until `cmc base` has
    built it, whole messages come from `cmc.model` (no minute of building inside a commit) and
    `cmc hook status` says why."""
    import json
    import os

    from test_delta import fine_tuned

    from cmc.delta import write_delta

    write_delta(tiny_model, fine_tuned(tiny_model, tmp_path / "tuned"), tmp_path / "delta")
    git(hooked_repo, "config", "cmc.messageModel", str(tmp_path / "delta"))
    staged_parser_change(hooked_repo)
    status = cmc(hooked_repo, "hook", "status").stdout
    assert f"message model: {tmp_path / 'delta'}\n" in status
    assert "not built yet: `cmc base` builds it" in status or "unusable:" in status, status
    out = cmc(hooked_repo, "complete", "--json", "--beams", "1")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["candidates"][0]["message"] == LEARNED_MESSAGE  # the model writes alone
    assert answer["model"] == str(tiny_model)
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "cmc" / "models").exists()  # nothing built
    editor, seen = editor_script(tmp_path)
    result = commit(hooked_repo, editor=editor)
    assert result.returncode == 0 and last_message(hooked_repo) == LEARNED_MESSAGE
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE  # the hook's, not the editor's


def test_whole_messages_default_to_the_bundled_message_model_unless_a_model_is_chosen(
    repo: Path, tiny_model: Path
):
    """Unset, `cmc.messageModel` is the bundled message model, also beside a model `cmc train` made
    for the repository; `cmc.model` set, a --model flag or `cmc.messageModel none` mean one model."""
    import shutil

    from cmc.settings import BUNDLED_MESSAGE_MODEL, BUNDLED_MODEL, Settings, personalized_model_dir

    def load(flag: str | None = None) -> Settings:
        return Settings.load(repo, repo / ".git", model=flag)

    plain = load()
    assert (plain.model, plain.message_model) == (str(BUNDLED_MODEL), str(BUNDLED_MESSAGE_MODEL))
    assert plain.model_for(whole=True) == str(BUNDLED_MESSAGE_MODEL)
    assert plain.model_for(whole=False) == str(BUNDLED_MODEL)
    shutil.copytree(tiny_model, personalized_model_dir(repo / ".git"))  # as `cmc train` installs
    learned = load()
    assert learned.model == str(personalized_model_dir(repo / ".git"))
    assert learned.message_model == str(BUNDLED_MESSAGE_MODEL)
    assert load(str(tiny_model)).message_model == ""
    git(repo, "config", "cmc.messageModel", "none")
    assert load().message_model == ""
    git(repo, "config", "--unset", "cmc.messageModel")
    git(repo, "config", "cmc.model", str(tiny_model))
    assert load().message_model == "" and load().model_for(whole=True) == str(tiny_model)
