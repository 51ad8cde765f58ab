"""`pip install cmc` without extras: the hook and `cmc complete` work without the training stack,
and the training commands say in one line which extra to install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import (
    LEARNED_DIFF_FILE,
    LEARNED_MESSAGE,
    PARSER_AFTER,
    PARSER_BEFORE,
    cmc_env,
    commit_file,
    git,
)

from cmc.training import TRAIN_EXTRA


def without_train_extra(tmp_path: Path) -> dict:
    """An environment whose Python finds none of the [train] extra's packages (as if never
    installed: `None` in sys.modules makes both import and importlib.util.find_spec miss them)."""
    site = tmp_path / "no-extras"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor name in {sorted(TRAIN_EXTRA)!r}:\n    sys.modules[name] = None\n"
    )
    return cmc_env({"PYTHONPATH": str(site)})


def test_core_works_without_the_train_extra(repo: Path, tiny_model: Path, tmp_path: Path):
    env = without_train_extra(tmp_path)
    control = subprocess.run(
        ["python", "-c", "import pyarrow"], env=env, capture_output=True, text=True
    )
    assert control.returncode != 0  # the extra really is out of reach here
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, "Add a parser for configuration files")
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", ".")
    git(repo, "config", "cmc.model", str(tiny_model))
    git(repo, "config", "cmc.timeout", "120")  # a busy machine must not make this test flaky
    out = subprocess.run(
        ["cmc", "complete", "--prefix", "Fix pa", "--json"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["candidates"][0]["message"] == LEARNED_MESSAGE
    subprocess.run(["cmc", "hook", "install"], cwd=repo, env=env, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "commit", "-q"],
        cwd=repo,
        env={**env, "GIT_EDITOR": "true"},
        capture_output=True,
        text=True,
    )
    assert commit.returncode == 0 and "cmc:" not in commit.stderr, commit.stderr
    assert git(repo, "log", "-1", "--format=%s").stdout.strip() == LEARNED_MESSAGE


def test_training_commands_name_the_extra_in_one_line(repo: Path, tmp_path: Path):
    env = without_train_extra(tmp_path)
    for args in (
        ["train"],
        ["data", "stats", str(tmp_path)],
        ["eval", "--data", "x", "--model", "default", "--out", "o"],
    ):
        result = subprocess.run(["cmc", *args], cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'cmc[train]'" in lines[0], result.stderr
