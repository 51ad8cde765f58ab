"""`cmc serve`: a warm completion daemon on a private Unix socket, and the client the hook and CLI use.

* The socket lives in a folder only the user can enter (``$XDG_RUNTIME_DIR/cmc`` or
  ``~/.cache/cmc``, mode 0700), is itself mode 0600, and the daemon also checks the peer's uid.
  No TCP port is opened.
* Protocol: one JSON object per line each way. ``{"op": "ping"}``, ``{"op": "complete", ...}``,
  ``{"op": "shutdown"}``. Every reply carries the daemon's version; a client of another version
  does not use it.
* The client never makes things worse: no socket, a refused or dead connection, a timeout, an
  error or a version mismatch all return None, and the caller completes in-process.
* The daemon exits after ``--idle-timeout`` seconds without requests.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cmc import CmcError, __version__

DEFAULT_IDLE_S = 900.0


def socket_path() -> Path:
    if os.environ.get("CMC_SOCKET"):
        return Path(os.environ["CMC_SOCKET"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        Path(runtime) / "cmc"
        if runtime and Path(runtime).is_dir()
        else Path.home() / ".cache" / "cmc"
    )
    return base / f"daemon-{os.getuid()}.sock"


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o700)


# --- client ---------------------------------------------------------------------------------------


def _request(payload: dict, timeout: float, path: Path | None = None) -> dict | None:
    path = path or socket_path()
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall((json.dumps(payload) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return None  # the daemon died mid-request
                data += chunk
        reply = json.loads(data)
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) else None


def ping(timeout: float = 0.5, path: Path | None = None) -> dict | None:
    reply = _request({"op": "ping"}, timeout, path)
    return reply if reply and reply.get("ok") else None


def remote_complete(
    repo: str,
    typed: str,
    n: int,
    model: str | None,
    history: bool | None,
    settings: Any,
    timeout: float,
) -> Any:
    """A `cmc.complete.Completion` from a running daemon of this version, or None."""
    payload = {"op": "complete", "version": __version__, "repo": str(Path(repo).resolve()), "typed": typed, "n": n,
               "model": model, "history": history}  # fmt: skip
    if settings is not None:
        payload.update(
            beams=settings.num_beams,
            max_new_tokens=settings.max_new_tokens,
            line=settings.stop_at_newline,
        )
    reply = _request(payload, timeout)
    if not reply or not reply.get("ok") or reply.get("version") != __version__:
        return None
    from cmc.complete import Candidate, Completion

    data = reply["result"]
    candidates = [
        Candidate(c["message"], c["continuation"], c["score"]) for c in data["candidates"]
    ]
    return Completion(
        data["prefix"], candidates, data["model"], data["latency_ms"], served_by="daemon"
    )


def start_background(log: Path | None = None) -> None:
    """Start `cmc serve` detached (its own session, no terminal); returns at once."""
    path = socket_path()
    _private_dir(path.parent)
    log = log or path.with_suffix(".log")
    from cmc.spawn import python_argv, safe_cwd, safe_env

    with open(log, "ab") as out:
        # Never from the repository's folder: its own json.py or torch.py would be imported first.
        subprocess.Popen(
            python_argv("cmc.cli", "serve"), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True, cwd=safe_cwd(path.parent), env=safe_env(),
        )  # fmt: skip


def complete_with_daemon(
    repo: Any,
    typed: str,
    n: int,
    settings: Any = None,
    timeout: float = 5.0,
    model: str | None = None,
):
    """Ask a running daemon; start one in the background when `cmc.daemon` allows; else None."""
    if os.environ.get("CMC_NO_DAEMON") == "1":
        return None
    result = remote_complete(
        str(repo.root or repo.git_dir), typed, n, model, None, settings, timeout
    )
    if result is not None:
        return result
    if repo.config_bool("cmc.daemon", True):
        info = ping()
        if info is None:
            start_background()
        elif info.get("version") != __version__:
            _request({"op": "shutdown"}, 0.5)  # an older cmc's daemon: replace it
            time.sleep(0.2)
            start_background()
    return None


# --- server ---------------------------------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: DaemonServer = self.server  # type: ignore[assignment]
        if not server.peer_allowed(self.request):
            return
        for raw in self.rfile:
            server.touch()
            try:
                reply = server.answer(json.loads(raw))
            except Exception as exc:  # a bad request must not take the daemon down
                reply = {
                    "ok": False,
                    "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                }
            reply["version"] = __version__
            try:
                self.wfile.write((json.dumps(reply) + "\n").encode())
                self.wfile.flush()
            except OSError:
                return
            server.touch()


class DaemonServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, idle_timeout: float):
        from cmc.service import CompletionService

        self.service = CompletionService()
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.path = path
        old = os.umask(0o177)  # the socket is created 0600
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        self.inode = os.stat(path).st_ino

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def peer_allowed(self, conn: socket.socket) -> bool:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except (OSError, AttributeError):
            return True  # no SO_PEERCRED here: the folder and socket modes still keep others out
        return uid == os.getuid()

    def answer(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {"ok": True}
        if op != "complete":
            return {"ok": False, "error": f"unknown op {op!r}"}
        if req.get("version") != __version__:
            return {"ok": False, "error": "version mismatch"}
        from cmc.complete import DecodeSettings

        settings = DecodeSettings()
        if "beams" in req:
            settings = DecodeSettings(
                num_beams=int(req["beams"]),
                max_new_tokens=int(req.get("max_new_tokens", 32)),
                stop_at_newline=bool(req.get("line", False)),
            )
        delay = float(os.environ.get("CMC_TEST_DAEMON_DELAY", "0") or 0)
        if delay:  # tests kill the daemon while a request is in flight
            time.sleep(delay)
        result, reused = self.service.complete(
            req["repo"],
            req.get("typed", ""),
            int(req.get("n", 3)),
            req.get("model"),
            req.get("history"),
            settings,
        )
        return {"ok": True, "result": result.as_json(), "reused_tokens": reused}

    def watch_idle(self) -> None:
        while True:
            time.sleep(min(5.0, self.idle_timeout / 4))
            if time.monotonic() - self.last_activity > self.idle_timeout:
                self.shutdown()
                return


def _warm_up(server: DaemonServer) -> None:
    """Pay torch's and the default model's load while nobody waits (requests queue behind it)."""
    with server.service.lock:
        try:
            import cmc.decoding  # noqa: F401  (torch, transformers)
            from cmc.model import BUNDLED_MODEL, is_model_dir, load_model

            if is_model_dir(BUNDLED_MODEL):
                load_model(str(BUNDLED_MODEL))
        except Exception as exc:  # the first request will report it properly
            print(f"warm-up: {exc}", file=sys.stderr, flush=True)


def serve(idle_timeout: float = DEFAULT_IDLE_S, path: Path | None = None) -> int:
    """Run the daemon in the foreground until idle for ``idle_timeout`` seconds."""
    path = path or socket_path()
    _private_dir(path.parent)
    if path.exists():
        if ping(path=path) is not None:
            raise CmcError(f"a cmc daemon is already serving {path}")
        path.unlink()  # left by a daemon that died: nobody answers on it
    server = DaemonServer(path, idle_timeout)
    threading.Thread(target=server.watch_idle, daemon=True).start()
    threading.Thread(target=_warm_up, args=(server,), daemon=True).start()
    print(f"cmc {__version__} serving on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            if path.stat().st_ino == server.inode:  # not a successor's socket
                path.unlink()
        except OSError:
            pass
    return 0
