"""`pipx install` (one cmc for every repository), for real: a fresh environment with the core
install only (no torch, no transformers: cmc's own models run on numpy), then a commit in a
repository whose PATH has nothing but pipx's bin folder and the system."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import LEARNED_MESSAGE
from test_hook import editor_script, last_message, staged_parser_change

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pipx") is None, reason="pipx is not installed")
def test_pipx_install_then_commit_anywhere(repo: Path, tiny_model: Path, tmp_path: Path):
    home = tmp_path / "pipx"
    env = {**os.environ, "PIPX_HOME": str(home / "home"), "PIPX_BIN_DIR": str(home / "bin"),
           "PIPX_MAN_DIR": str(home / "man")}  # fmt: skip
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # an in-tree build reuses what it finds there
    installed = subprocess.run(["pipx", "install", str(ROOT)], env=env, capture_output=True,
                               text=True, timeout=1200)  # fmt: skip
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        pytest.skip("the package registry cannot be reached here")
    assert installed.returncode == 0, installed.stderr[-3000:]
    venv = home / "home" / "venvs" / "cmc"
    assert not list(venv.glob("lib/python*/site-packages/torch")), "the core install pulled torch"
    path = f"{home / 'bin'}:/usr/bin:/bin"
    user_env = {"PATH": path, "HOME": str(tmp_path), "CMC_NO_DAEMON": "1"}
    status = subprocess.run(
        ["cmc", "hook", "install"], cwd=repo, env=user_env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    staged_parser_change(repo)
    subprocess.run(["git", "config", "cmc.model", str(tiny_model)], cwd=repo, check=True)
    subprocess.run(["git", "config", "cmc.timeout", "120"], cwd=repo, check=True)
    editor, seen = editor_script(tmp_path)
    result = subprocess.run(["git", "commit", "-q"], cwd=repo, env={**user_env, "GIT_EDITOR": editor},
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE
    assert last_message(repo) == LEARNED_MESSAGE
