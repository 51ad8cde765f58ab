"""Memory of an editor session: the language server and the daemon, with the bundled model.

    python bench/bench_lsp_memory.py

Starts `cmc lsp` as an editor would (pygls' client), opens a commit message in a repository with a
staged change, asks for completions at 10 keystrokes, and prints the resident memory (VmRSS) of the
language server and of the daemon it asked; then the same with the daemon turned off
(``CMC_NO_DAEMON=1``), where the language server must load the model itself. It also counts the
git processes the last 9 keystrokes started (a logging git first on PATH).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_repo(path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    path.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    git("config", "user.name", "Ada")
    git("config", "user.email", "ada@example.com")
    (path / "parser.py").write_text("def parse(text):\n    return text.split()\n")
    git("add", ".")
    git("commit", "-q", "-m", "Add a parser for configuration files")
    (path / "parser.py").write_text(
        "def parse(text):\n    if not text:\n        return []\n    return text.split()\n"
    )
    git("add", ".")
    return path


async def session(repo: Path, env: dict) -> tuple[int, float]:
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    message = repo / ".git" / "COMMIT_EDITMSG"
    uri = message.as_uri()
    typed = "Fix parser crash on empty"
    message.write_text(typed[:15] + "\n")
    client = LanguageClient("bench", "1")
    await client.start_io(sys.executable, "-m", "cmc.cli", "lsp", env=env, cwd=str(repo.parent))
    await client.initialize_async(lsp.InitializeParams(capabilities=lsp.ClientCapabilities()))
    client.initialized(lsp.InitializedParams())
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "gitcommit", 1, typed[:15] + "\n"))
    )
    for i, end in enumerate(range(15, 25)):
        text = typed[:end]
        client.text_document_did_change(
            lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(version=2 + i, uri=uri),
                [lsp.TextDocumentContentChangeWholeDocument(text + "\n")],
            )
        )
        params = lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(0, len(text)))
        await asyncio.wait_for(client.text_document_completion_async(params), 300)
        if i == 0:
            calls = Path(env["GIT_CALLS"]).read_text().count("\n")
    pid = client._server.pid
    rss = rss_mb(pid)
    calls = Path(env["GIT_CALLS"]).read_text().count("\n") - calls
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return calls, rss


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from cmc.client import request

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = make_repo(tmp / "repo")
        bin_dir, calls = tmp / "bin", tmp / "git-calls.txt"
        bin_dir.mkdir()
        calls.write_text("")
        (bin_dir / "git").write_text(
            f'#!/bin/sh\necho "$*" >> "{calls}"\nexec {shutil.which("git")} "$@"\n'
        )
        (bin_dir / "git").chmod(0o755)
        sock = tmp / "run" / "cmc.sock"
        env = {**os.environ, "CMC_SOCKET": str(sock), "GIT_CALLS": str(calls),
               "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
        env.pop("CMC_NO_DAEMON", None)
        git_calls, lsp_rss = asyncio.run(session(repo, env))
        info = request({"op": "ping"}, 5, sock)
        daemon_rss = rss_mb(info["pid"]) if info else float("nan")
        if info:
            os.kill(info["pid"], signal.SIGKILL)
        _, alone_rss = asyncio.run(session(repo, {**env, "CMC_NO_DAEMON": "1"}))
    print(f"language server, asking the daemon:   {lsp_rss:6.0f} MB")
    print(f"daemon (holds the model):             {daemon_rss:6.0f} MB")
    print(f"language server with no daemon:       {alone_rss:6.0f} MB (it loads the model itself)")
    print(f"git processes for 9 keystrokes:       {git_calls}")
    print(f"ratio (LSP asking / LSP alone):       {lsp_rss / alone_rss:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
