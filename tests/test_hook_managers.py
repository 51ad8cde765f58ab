"""cmc through hook managers: the repository's own .pre-commit-hooks.yaml, run by the real
pre-commit on a real `git commit`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import LEARNED_MESSAGE, cmc_env, git
from test_hook import editor_script, last_message, staged_parser_change

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("pre-commit") is None, reason="pre-commit is not installed")
def test_pre_commit_runs_cmc_at_prepare_commit_msg(repo: Path, tiny_model: Path, tmp_path: Path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("this checkout is not a git repository")
    staged_parser_change(repo)
    git(repo, "config", "cmc.model", str(tiny_model))
    git(repo, "config", "cmc.timeout", "120")
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {ROOT}\n  rev: {head.stdout.strip()}\n  hooks:\n  - id: cmc\n"
    )
    git(repo, "add", ".pre-commit-config.yaml")
    env = cmc_env({"PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")})
    installed = subprocess.run(["pre-commit", "install", "--hook-type", "prepare-commit-msg"], cwd=repo,
                               env=env, capture_output=True, text=True)  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    editor, seen = editor_script(tmp_path)
    result = subprocess.run(["git", "commit"], cwd=repo, env={**env, "GIT_EDITOR": editor},
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE  # the suggestion was in the editor
    assert "# cmc: other suggestions" in seen.read_text()
    assert last_message(repo) == LEARNED_MESSAGE
    # -m: pre-commit passes the source; cmc leaves the message alone by default
    (repo / "notes.txt").write_text("x\n")
    git(repo, "add", "notes.txt")
    subprocess.run(["git", "commit", "-q", "-m", "My own words"], cwd=repo, env=env, check=True)
    assert last_message(repo) == "My own words"
