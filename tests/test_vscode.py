"""The VS Code extension (editors/vscode): its own tests under node's test runner against a stub of
the editor API, the .vsix built with the official packaging tool, and the cmc side it relies on.
VS Code itself cannot run here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cmc_env, git

EXT = Path(__file__).resolve().parent.parent / "editors" / "vscode"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="Node.js/npm is not installed")
def test_extension_tests_pass_and_it_packages_as_a_vsix(tmp_path):
    def npm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["npm", *args], cwd=EXT, capture_output=True, text=True, timeout=600)

    if not (EXT / "node_modules").exists():
        installed = npm("ci", "--no-audit", "--no-fund")
        if installed.returncode != 0:
            pytest.skip("npm packages cannot be installed here: " + installed.stderr[-300:])
    tested = npm("test")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert "# fail 0" in tested.stdout and "# pass 5" in tested.stdout
    packaged = npm("run", "package")
    assert packaged.returncode == 0, packaged.stdout[-2000:] + packaged.stderr[-2000:]
    vsix = EXT / "cmc-commit-messages.vsix"
    assert vsix.stat().st_size > 1000
    import zipfile

    names = set(zipfile.ZipFile(vsix).namelist())
    vsix.unlink()
    assert {"extension/readme.md", "extension/LICENSE.txt", "extension/out/extension.js"} <= names
    assert not any(n.endswith((".gitignore", ".ts", "package-lock.json")) for n in names), names


def test_complete_answers_nothing_where_cmc_is_off(repo: Path):
    """What the extension asks when a repository has cmc turned off: no model is even loaded."""
    git(repo, "config", "cmc.enabled", "false")
    git(repo, "config", "cmc.model", "/nonexistent/model")
    out = subprocess.run(["cmc", "complete", "--json", "--respect-enabled", "--prefix", "Fix"], cwd=repo,
                         env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"prefix": "Fix", "candidates": [], "disabled": True}
