"""The warm daemon and the language server, driven for real: sockets, processes, an LSP client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
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
)

from cmc import __version__
from cmc.client import request
from cmc.decoding import DecodeSettings
from cmc.protocol import CompleteRequest
from cmc.settings import Settings


def staged_repo(path: Path, model: Path) -> Path:
    repo = init_repo(path)
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, "Add a parser for configuration files")
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", ".")
    git(repo, "config", "cmc.model", str(model))
    git(repo, "config", "cmc.timeout", "120")
    return repo


class Daemon:
    def __init__(self, sock: Path, extra_env: dict | None = None, idle: float = 120):
        self.sock = sock
        self.env = cmc_env({"CMC_SOCKET": str(sock), "CMC_NO_DAEMON": "0", **(extra_env or {})})
        self.log = sock.parent.parent / f"{sock.name}.stderr"  # a file: a full pipe would block it
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["cmc", "serve", "--idle-timeout", str(idle)], env=self.env,
                                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        deadline = time.time() + 60
        while request({"op": "ping"}, 0.5, sock) is None:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.time() < deadline
            time.sleep(0.1)

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def daemon(tmp_path: Path):
    started: list[Daemon] = []

    def start(**kw) -> Daemon:
        d = Daemon(tmp_path / "run" / "cmc.sock", **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def complete_req(repo: Path, typed: str, sock: Path, n: int = 1) -> dict:
    settings = Settings.load(repo, repo / ".git")
    decode = DecodeSettings(num_beams=1, max_new_tokens=12, num_candidates=n)
    reply = request(CompleteRequest(str(repo), typed, settings, decode).to_json(), 60, sock)
    assert reply and reply["ok"], reply
    return reply


@pytest.mark.slow
def test_daemon_answers_cli_and_reuses_the_prompt_while_typing(tmp_path, tiny_model, daemon):
    repo = staged_repo(tmp_path / "repo", tiny_model)
    # Without prefetching: below, what the cache holds after a new `git add` must be nothing at all
    # (prefetching would legitimately fill it with the new context first).
    d = daemon(extra_env={"CMC_PREFETCH": "0"})
    assert stat.S_IMODE(d.sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.sock.parent.stat().st_mode) == 0o700
    out = subprocess.run(
        ["cmc", "complete", "--prefix", "Fix parser cr", "--json"],
        cwd=repo,
        env=d.env,
        capture_output=True,
        text=True,
    )
    data = json.loads(out.stdout)
    assert data["served_by"] == "daemon" and data["candidates"][0]["message"] == LEARNED_MESSAGE

    first = complete_req(repo, "Fix", d.sock)
    assert first["result"]["candidates"][0]["message"] == LEARNED_MESSAGE
    # Typing along the suggestion: it stands, no model run at all.
    along = complete_req(repo, "Fix pars", d.sock)
    assert (
        along["reused_tokens"] == -1
        and along["result"]["candidates"][0]["continuation"] == LEARNED_MESSAGE[8:]
    )
    # The same request again (an editor asking twice, a herd): the same answer, no model run.
    again = complete_req(repo, "Fix pars", d.sock)
    assert (
        again["reused_tokens"] == -1
        and again["result"]["candidates"] == along["result"]["candidates"]
    )
    # Typing something else: the model runs, on top of the cached prompt.
    other = complete_req(repo, "Fix pars the", d.sock)
    assert other["reused_tokens"] > 10 and other["result"]["candidates"][0]["message"].startswith(
        "Fix pars the"
    )
    # A new staged diff is a new context: nothing of the old prompt may be reused.
    (repo / "notes.txt").write_text("unrelated notes about something else\n")
    git(repo, "add", "notes.txt")
    changed = complete_req(repo, "Fix parser", d.sock)
    assert changed["reused_tokens"] == 0


@pytest.mark.slow
def test_concurrent_requests_from_several_repositories(tmp_path, tiny_model, daemon):
    learned = staged_repo(tmp_path / "a", tiny_model)
    other = init_repo(tmp_path / "b")
    git(other, "config", "cmc.model", str(tiny_model))
    (other / "README.md").write_text("hello\n")
    git(other, "add", ".")
    d = daemon()
    results: dict[str, list[str]] = {"a": [], "b": []}

    def worker(name: str, repo: Path, typed: str) -> None:
        for _ in range(3):
            results[name].append(
                complete_req(repo, typed, d.sock)["result"]["candidates"][0]["message"]
            )

    threads = [
        threading.Thread(target=worker, args=("a", learned, "Fix pa")),
        threading.Thread(target=worker, args=("b", other, "Add sup")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["a"] == [LEARNED_MESSAGE] * 3
    assert len(results["b"]) == 3 and all(m.startswith("Add sup") for m in results["b"])
    assert len(set(results["b"])) == 1  # the same answer every time: no state leaked between repos


def _queued(sock: Path) -> int:
    """Connections to ``sock`` that its server has not accepted (a stopped daemon's), from
    /proc/net/unix: entries with the socket's path in any state but listening (01)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for ln in lines if ln.endswith(" " + str(sock)) and ln.split()[5] != "01")


@pytest.mark.slow
def test_daemon_killed_mid_request_the_commit_still_gets_a_message(tmp_path, tiny_model, daemon):
    repo = staged_repo(tmp_path / "repo", tiny_model)
    git(
        repo, "config", "cmc.daemon", "false"
    )  # no replacement daemon: the fallback must do the work
    d = daemon()
    subprocess.run(["cmc", "hook", "install"], cwd=repo, env=d.env, check=True, capture_output=True)
    os.kill(d.proc.pid, signal.SIGSTOP)  # it accepts nothing now: the hook's request waits
    before = _queued(d.sock)
    seen = tmp_path / "seen.txt"
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\ncp "$1" "{seen}"\n')
    editor.chmod(0o755)
    commit = subprocess.Popen(
        ["git", "commit"],
        cwd=repo,
        env={**d.env, "GIT_EDITOR": str(editor)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The client's ping, its check that the daemon accepts, then the completion request itself.
    deadline = time.time() + 60
    while _queued(d.sock) < before + 3:
        assert time.time() < deadline and commit.poll() is None
        time.sleep(0.1)
    d.kill()
    _, err = commit.communicate(timeout=180)
    assert commit.returncode == 0, err
    assert seen.read_text().split("\n")[0] == LEARNED_MESSAGE  # completed in-process instead


@pytest.mark.slow
def test_a_busy_daemon_past_the_deadline_is_an_error_not_a_second_model(
    tmp_path, tiny_model, daemon
):
    """Waiting out a live daemon and then loading the model here too would only double the load."""
    repo = staged_repo(tmp_path / "repo", tiny_model)
    d = daemon()
    os.kill(d.proc.pid, signal.SIGSTOP)  # alive (the kernel queues connections) but answering none
    started = time.monotonic()
    out = subprocess.run(["cmc", "complete", "--prefix", "Fix", "--timeout", "3"], cwd=repo,
                         env=d.env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert (
        out.stderr.startswith("cmc: error: busy: no completion within 3s")
        and out.stderr.count("\n") == 1
    )
    assert time.monotonic() - started < 50  # did not load and run the model after giving up
    assert d.proc.poll() is None


@pytest.mark.slow
def test_cli_starts_a_daemon_in_the_background_when_allowed(tmp_path, tiny_model):
    repo = staged_repo(tmp_path / "repo", tiny_model)
    sock = tmp_path / "auto" / "cmc.sock"
    env = cmc_env({"CMC_SOCKET": str(sock), "CMC_NO_DAEMON": "0"})
    first = subprocess.run(
        ["cmc", "complete", "--prefix", "Fix pa", "--json"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert json.loads(first.stdout)["served_by"] == "in-process"  # nobody to ask yet: no waiting
    deadline = time.time() + 60
    while (info := request({"op": "ping"}, 0.5, sock)) is None:
        assert time.time() < deadline, "no daemon was started"
        time.sleep(0.2)
    try:
        second = subprocess.run(
            ["cmc", "complete", "--prefix", "Fix pa", "--json"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        data = json.loads(second.stdout)
        assert data["served_by"] == "daemon" and data["candidates"][0]["message"] == LEARNED_MESSAGE
    finally:
        os.kill(info["pid"], signal.SIGKILL)
    git(repo, "config", "cmc.daemon", "false")
    sock.unlink()
    subprocess.run(
        ["cmc", "complete", "--prefix", "Fix pa"], cwd=repo, env=env, capture_output=True, text=True
    )
    time.sleep(1.0)
    assert not sock.exists()  # cmc.daemon false: nothing started


@pytest.mark.slow
def test_stale_socket_is_replaced_and_idle_daemon_exits(tmp_path, tiny_model, daemon):
    d = daemon()
    d.kill()
    assert d.sock.exists()  # a dead daemon's socket stays behind
    d2 = daemon(idle=1.0)
    assert request({"op": "ping"}, 1, d2.sock)["pid"] == d2.proc.pid
    d2.proc.wait(timeout=30)  # exits on its own once idle
    assert not d2.sock.exists()


def test_another_user_cannot_connect(tmp_path):
    if os.getuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to act as another user) and a system python")
    import tempfile

    # Under a folder anyone may traverse, so only cmc's own folder and socket modes keep others out.
    with tempfile.TemporaryDirectory(prefix="cmc-open-") as open_dir:
        os.chmod(open_dir, 0o755)
        d = Daemon(Path(open_dir) / "run" / "cmc.sock")
        try:
            code = f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({str(d.sock)!r}); print('connected')"
            result = subprocess.run(
                ["/usr/bin/python3", "-c", code],
                capture_output=True,
                text=True,
                user=65534,
                group=65534,
            )
            assert result.returncode != 0 and "Permission denied" in result.stderr
            assert request({"op": "ping"}, 2, d.sock)["ok"]  # its owner still gets in
        finally:
            d.kill()


def test_other_versions_are_refused(tmp_path, daemon):
    d = daemon()
    reply = request(
        {"op": "complete", "version": "0.0.0-old", "repo": str(tmp_path), "typed": ""}, 5, d.sock
    )
    assert reply["ok"] is False and reply["version"] == __version__


@pytest.mark.slow
def test_language_server_completes_a_commit_message_buffer(tmp_path, tiny_model):
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    repo = staged_repo(tmp_path / "repo", tiny_model)
    message_file = repo / ".git" / "COMMIT_EDITMSG"
    text = "Fix parser cr\n# Please enter the commit message for your changes.\n"
    message_file.write_text(text)
    uri = message_file.as_uri()

    async def session():
        client = LanguageClient("test-editor", "1")
        await client.start_io(
            sys.executable, "-m", "cmc.cli", "lsp", env=cmc_env(), cwd=str(tmp_path)
        )
        await client.initialize_async(
            lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), root_uri=repo.as_uri())
        )
        client.initialized(lsp.InitializedParams())
        client.text_document_did_open(
            lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "gitcommit", 1, text))
        )
        pos = lsp.Position(0, len("Fix parser cr"))
        listed = await asyncio.wait_for(
            client.text_document_completion_async(
                lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos)
            ),
            120,
        )
        inline = await asyncio.wait_for(
            client.text_document_inline_completion_async(
                lsp.InlineCompletionParams(
                    lsp.InlineCompletionContext(lsp.InlineCompletionTriggerKind.Automatic),
                    lsp.TextDocumentIdentifier(uri),
                    pos,
                )
            ),
            120,
        )
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return listed, inline

    listed, inline = asyncio.run(session())
    items = listed.items if hasattr(listed, "items") else listed
    best = items[0]
    assert best.text_edit.new_text == "crash on empty configuration files"
    assert best.text_edit.range.start.character == len("Fix parser ")
    assert inline.items[0].insert_text == "ash on empty configuration files"


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_language_server_asks_the_daemon_and_runs_no_git_per_keystroke(tmp_path, tiny_model):
    """The editor server holds no model of its own (the daemon does: one copy in memory), and
    while the index is unchanged a keystroke starts no git process (a logging git on PATH)."""
    import shutil

    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    repo = staged_repo(tmp_path / "repo", tiny_model)
    # Its memory up to date first: the daemon's background build would be git processes too.
    subprocess.run(["cmc", "memory", "build"], cwd=repo, env=cmc_env(), check=True,
                   capture_output=True)  # fmt: skip
    bin_dir, calls = tmp_path / "bin", tmp_path / "git-calls.txt"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(
        f'#!/bin/sh\necho "$*" >> "{calls}"\nexec {shutil.which("git")} "$@"\n'
    )
    (bin_dir / "git").chmod(0o755)
    sock = tmp_path / "run" / "cmc.sock"
    env = cmc_env({"CMC_SOCKET": str(sock), "CMC_NO_DAEMON": "0"})
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    message_file = repo / ".git" / "COMMIT_EDITMSG"
    typed = "Fix parser cr"
    message_file.write_text(typed + "\n")
    uri = message_file.as_uri()

    async def session():
        client = LanguageClient("test-editor", "1")
        await client.start_io(sys.executable, "-m", "cmc.cli", "lsp", env=env, cwd=str(tmp_path))
        await client.initialize_async(
            lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), root_uri=repo.as_uri())
        )
        client.initialized(lsp.InitializedParams())
        client.text_document_did_open(
            lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "gitcommit", 1, typed + "\n"))
        )

        async def ask(text: str, version: int):
            if version > 1:
                client.text_document_did_change(
                    lsp.DidChangeTextDocumentParams(
                        lsp.VersionedTextDocumentIdentifier(version=version, uri=uri),
                        [lsp.TextDocumentContentChangeWholeDocument(text + "\n")],
                    )
                )
            params = lsp.CompletionParams(lsp.TextDocumentIdentifier(uri),
                                          lsp.Position(0, len(text)))  # fmt: skip
            return await asyncio.wait_for(client.text_document_completion_async(params), 120)

        first = await ask(typed, 1)
        calls_before = calls.read_text().count("\n")
        later = [
            await ask(typed + tail, 2 + i) for i, tail in enumerate(["a", "as", "ash", "ash "])
        ]
        calls_after = calls.read_text().count("\n")
        server_maps = _maps(client._server.pid)
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return first, later, calls_before, calls_after, server_maps

    try:
        first, later, calls_before, calls_after, server_maps = asyncio.run(session())
        info = request({"op": "ping"}, 5, sock)
        assert info and info["ok"], "the language server did not start a daemon"
        daemon_maps = _maps(info["pid"])
    finally:
        info = request({"op": "ping"}, 5, sock)
        if info:
            os.kill(info["pid"], signal.SIGKILL)
    items = first.items if hasattr(first, "items") else first
    assert items[0].text_edit.new_text == "crash on empty configuration files"
    assert all((r.items if hasattr(r, "items") else r) for r in later)
    assert calls_before > 0 and calls_after == calls_before, calls.read_text()
    assert "onnxruntime" in daemon_maps  # the daemon holds the model …
    assert "onnxruntime" not in server_maps and "numpy" not in server_maps  # … the server none


def test_malformed_lines_unknown_ops_and_bad_fields_get_one_line_errors(tmp_path):
    """A daemon in this process (no model needed): every bad request gets an error reply and the
    daemon keeps serving."""
    import socket as socketlib

    from cmc.client import private_dir
    from cmc.daemon import DaemonServer

    assert private_dir(tmp_path / "sock")
    path = tmp_path / "sock" / "d.sock"
    server = DaemonServer(path, idle_timeout=60)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        settings = {
            "model": "m",
            "history": True,
            "exclude": [],
            "author_name": None,
            "author_email": None,
        }
        base = {
            "op": "complete",
            "version": __version__,
            "repo": str(tmp_path),
            "typed": "",
            "settings": settings,
        }
        lines = [
            b"this is not json\n",
            b"[1, 2, 3]\n",
            json.dumps({"op": "explode"}).encode() + b"\n",
            json.dumps({**base, "typed": 5}).encode() + b"\n",
            json.dumps({**base, "settings": {**settings, "history": "yes"}}).encode() + b"\n",
            json.dumps({**base, "decode": {"num_beams": "five"}}).encode() + b"\n",
            json.dumps({**base, "decode": {"num_beams": 10_000}}).encode() + b"\n",
            json.dumps({**base, "typed": "x" * 100_000}).encode() + b"\n",
        ]
        with socketlib.socket(socketlib.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            f = s.makefile("rb")
            for line in lines:
                s.sendall(line)
                reply = json.loads(f.readline())
                assert reply["ok"] is False and reply["version"] == __version__, (line, reply)
                assert reply["error"] and "\n" not in reply["error"]
        assert request({"op": "ping"}, 5, path)["ok"]  # still serving
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_herd_of_clients_is_served_by_the_daemon(tmp_path, tiny_model, daemon):
    """Clients wait for a live daemon instead of each loading a model in-process."""
    from concurrent.futures import ThreadPoolExecutor

    repo = staged_repo(tmp_path / "repo", tiny_model)
    d = daemon()

    def one(_):
        out = subprocess.run(["cmc", "complete", "--prefix", "Fix parser cr", "--json"], cwd=repo,
                             env=d.env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [r["served_by"] for r in results] == ["daemon"] * 8, d.log.read_text()
    assert {r["candidates"][0]["message"] for r in results} == {LEARNED_MESSAGE}


def test_a_request_waiting_past_its_deadline_is_dropped(tmp_path, tiny_model):
    """The model is shared: a request still queued when its client has given up is not computed."""
    from cmc.decoding.beam import Cancelled
    from cmc.service import CompletionService

    repo = staged_repo(tmp_path / "repo", tiny_model)
    service = CompletionService()
    settings = Settings.load(repo, repo / ".git")
    req = CompleteRequest(str(repo), "Fix", settings, DecodeSettings(), wait_s=0.2)
    with service.lock, pytest.raises(Cancelled):  # another request holds the model
        service.complete(req)
    gone = CompleteRequest(str(repo), "Fix", settings, DecodeSettings(), wait_s=5)
    with pytest.raises(Cancelled):
        service.complete(gone, cancelled=lambda: True)  # its client has hung up
    assert service.complete(gone)[0].candidates  # and nothing is left locked


@pytest.mark.slow
def test_after_git_add_the_daemon_has_the_hooks_answer_ready(tmp_path, tiny_model, daemon):
    """The last whole-message request is run again when the index changes, before it is asked."""
    repo = staged_repo(tmp_path / "repo", tiny_model)
    d = daemon()
    assert complete_req(repo, "", d.sock)["reused_tokens"] != -1
    before = request({"op": "ping"}, 5, d.sock)["prefetched"]
    (repo / "docs.md").write_text("How to parse an empty configuration file.\n")
    git(repo, "add", "docs.md")
    deadline = time.time() + 120
    while request({"op": "ping"}, 5, d.sock)["prefetched"] == before:
        assert time.time() < deadline, d.log.read_text()
        time.sleep(0.1)
    ready = complete_req(repo, "", d.sock)
    assert ready["reused_tokens"] == -1  # computed ahead: no model run at request time
    # ... and it is the answer for what is staged now, as a fresh process computes it
    settings = Settings.load(repo, repo / ".git")
    from cmc.complete import complete_context, context_from_repo
    from cmc.gitctx import GitRepo
    from cmc.model import load_model

    fresh = complete_context(load_model(str(tiny_model)), context_from_repo(GitRepo(repo), settings),
                             "", DecodeSettings(num_beams=1, max_new_tokens=12))  # fmt: skip
    assert ready["result"]["candidates"][0]["message"] == fresh.candidates[0].message
    # Nothing staged after the commit: nothing is computed for nobody.
    git(repo, "commit", "-q", "-m", "Document empty configuration files")
    idle_deadline = time.time() + 3
    counts = set()
    while time.time() < idle_deadline:
        counts.add(request({"op": "ping"}, 5, d.sock)["prefetched"])
        time.sleep(0.2)
    assert counts == {before + 1}
