"""A repository's own files never run as code: planted json.py, click.py, torch.py … stay unimported.

`python -m` puts the working folder first on the import path, and cmc works inside repositories it
does not trust. Every entry point is driven from such a repository's root here: the hook through a
real `git commit` (which also starts the daemon), `cmc complete`, `cmc serve` and `cmc lsp`.
`cmc train` (torchrun's workers) is covered in test_personalize.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
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
    init_repo,
    plant_modules,
)

from cmc.client import request
from cmc.decoding import KEYSTROKE
from cmc.protocol import CompleteRequest
from cmc.settings import Settings


def hostile_repo(tmp_path: Path, model: Path) -> tuple[Path, list[Path]]:
    repo = init_repo(tmp_path / "repo")
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, "Add a parser for configuration files")
    markers = plant_modules(repo, tmp_path / "markers")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Add helper modules")
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", LEARNED_DIFF_FILE)
    git(repo, "config", "cmc.model", str(model))
    git(repo, "config", "cmc.timeout", "120")
    return repo, markers


def ran(markers: list[Path]) -> list[str]:
    return [m.name for m in markers if m.exists()]


def test_the_planted_modules_do_run_under_a_plain_python_m(tmp_path, tiny_model):
    """The control: the plant works, so the tests below would see an import from the repository."""
    repo, markers = hostile_repo(tmp_path, tiny_model)
    subprocess.run(
        [sys.executable, "-m", "cmc.cli", "--version"], cwd=repo, env=cmc_env(), capture_output=True
    )
    assert ran(markers)


@pytest.mark.slow
def test_hook_and_the_daemon_it_starts_import_nothing_from_the_repository(tmp_path, tiny_model):
    repo, markers = hostile_repo(tmp_path, tiny_model)
    sock = tmp_path / "run" / "cmc.sock"
    env = cmc_env({"CMC_SOCKET": str(sock), "CMC_NO_DAEMON": "0", "GIT_EDITOR": "true"})
    subprocess.run(["cmc", "hook", "install"], cwd=repo, env=env, check=True, capture_output=True)
    first = git(repo, "commit", "-q", env=env)
    assert git(repo, "log", "-1", "--format=%s").stdout.strip() == LEARNED_MESSAGE, first.stderr
    deadline = time.time() + 120
    while (info := request({"op": "ping"}, 0.5, sock)) is None:
        assert time.time() < deadline, "the hook started no daemon: " + (
            sock.with_suffix(".log").read_text() if sock.with_suffix(".log").exists() else ""
        )
        time.sleep(0.2)
    try:
        (repo / LEARNED_DIFF_FILE).write_text(PARSER_BEFORE)
        git(repo, "add", LEARNED_DIFF_FILE)
        git(repo, "commit", "-q", env=env)  # served by the daemon started above
        req = CompleteRequest(str(repo), "Fix", Settings.load(repo, repo / ".git"), KEYSTROKE)
        reply = request(req.to_json(), 60, sock)
        assert reply is not None and reply["ok"], reply
    finally:
        os.kill(info["pid"], signal.SIGKILL)
    assert not ran(markers), sock.with_suffix(".log").read_text()


@pytest.mark.slow
def test_complete_and_serve_import_nothing_from_the_repository(tmp_path, tiny_model):
    repo, markers = hostile_repo(tmp_path, tiny_model)
    out = subprocess.run(
        ["cmc", "complete", "--prefix", "Fix pa", "--json"],
        cwd=repo,
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout)["candidates"][0]["message"] == LEARNED_MESSAGE, out.stderr
    sock = tmp_path / "serve" / "cmc.sock"
    proc = subprocess.Popen(
        ["cmc", "serve", "--idle-timeout", "60"],
        cwd=repo,
        env=cmc_env({"CMC_SOCKET": str(sock)}),
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while request({"op": "ping"}, 0.5, sock) is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not ran(markers)


def test_language_server_imports_nothing_from_the_repository(tmp_path, tiny_model):
    pytest.importorskip("pygls")
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    repo, markers = hostile_repo(tmp_path, tiny_model)
    message_file = repo / ".git" / "COMMIT_EDITMSG"
    text = "Fix parser cr\n"
    message_file.write_text(text)
    uri = message_file.as_uri()

    async def session():
        client = LanguageClient("test-editor", "1")
        await client.start_io("cmc", "lsp", env=cmc_env(), cwd=str(repo))
        await client.initialize_async(
            lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), root_uri=repo.as_uri())
        )
        client.initialized(lsp.InitializedParams())
        client.text_document_did_open(
            lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "gitcommit", 1, text))
        )
        listed = await asyncio.wait_for(
            client.text_document_completion_async(
                lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(0, 13))
            ),
            120,
        )
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return listed

    listed = asyncio.run(session())
    assert listed.items, "the language server gave no completion"
    assert not ran(markers)
