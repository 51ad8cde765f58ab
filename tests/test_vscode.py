"""The VS Code extension (editors/vscode): its own tests under node's test runner against a stub of
the editor API, the .vsix built with the official packaging tool, the cmc side it relies on, and
the extension in a real VS Code (code-server) in a real browser (Debian's chromium), `npm run e2e`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cmc_env, git

EXT = Path(__file__).resolve().parent.parent / "editors" / "vscode"


def npm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["npm", *args], cwd=EXT, capture_output=True, text=True, timeout=600,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def node_modules():
    if shutil.which("npm") is None:
        pytest.skip("Node.js/npm is not installed")
    if not (EXT / "node_modules" / "playwright-core").exists():
        installed = npm("ci", "--no-audit", "--no-fund")
        if installed.returncode != 0:
            pytest.skip("npm packages cannot be installed here: " + installed.stderr[-300:])


@pytest.mark.slow
def test_extension_tests_pass_and_it_packages_as_a_vsix(node_modules, tmp_path):
    tested = npm("test")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert "# fail 0" in tested.stdout and "# pass 9" in tested.stdout
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


# code-server version → the Node it runs on: e2e/setup.sh's default (VS Code 1.139), and VS Code
# 1.85, the floor the extension's engines.vscode claims
CODE_SERVERS = {"4.139.1": "24", "4.20.0": "18"}


def e2e_ready(version: str) -> str | None:
    """Why the end-to-end test cannot run here, or None (`.ci/run` installs what it needs)."""
    home = Path(os.environ.get("CMC_E2E_HOME", Path.home() / ".cache" / "cmc" / "e2e"))
    if not (home / f"code-server-{version}" / "ready").exists():
        return f"code-server {version} is not installed (bash editors/vscode/e2e/setup.sh)"
    if not (shutil.which("chromium") or os.environ.get("CMC_E2E_CHROMIUM")):
        return "chromium is not installed (apt-get install chromium)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", list(CODE_SERVERS))
def test_ghost_text_in_a_real_vs_code_source_control_box(version, node_modules, tmp_path):
    """code-server + chromium: typed prefix → ghost text → Tab → a real commit with cmc's answer;
    nothing typed → the whole message; cmc missing → one line, once. Leaves the screenshot."""
    if e2e_ready(version):
        pytest.skip(e2e_ready(version))
    sock = tmp_path / "run"
    sock.mkdir(mode=0o700)
    default = version == next(iter(CODE_SERVERS))  # its screenshot is e2e-out/scm-ghost-text.png
    out = EXT / "e2e-out" / ("" if default else f"code-server-{version}")
    env = cmc_env({"CMC_SOCKET": str(sock / "daemon.sock"), "CMC_NO_DAEMON": "0",
                   "CMC_E2E_CODE_SERVER": version, "CMC_E2E_NODE": CODE_SERVERS[version],
                   "CMC_E2E_OUT": str(out)})  # fmt: skip
    done = npm("run", "e2e", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
    assert report["typed"]["accepted"] == report["typed"]["expected"]
    assert report["typed"]["expected"].startswith(report["typed"]["prefix"])
    assert report["empty"]["accepted"] == report["empty"]["expected"] != ""
    assert report["keystrokes"] >= 10 and report["ghost_p95_ms"] <= 2000
    assert report["missing"]["toasts"] == 1 and report["missing"]["dialogs"] == 0
    assert report["missing"]["ghost"] == 0
    assert report["codeServer"] == version
    assert "cmc" in report["typed"]["origin"]  # the status bar item that says where it came from
    shot = out / "scm-ghost-text.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
