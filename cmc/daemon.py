"""`cmc serve`: a warm completion daemon on a private Unix socket, and the client the hook and CLI use.

* The socket lives in a folder only the user can enter (``$XDG_RUNTIME_DIR/cmc`` or
  ``~/.cache/cmc``): it must be a real folder (not a symlink) owned by the user, mode 0700, or cmc
  does not use it (it tries the next, and completes in-process when none will do). The socket is
  0600; the client connects only to a socket the user owns and to a server of the user's uid
  (``SO_PEERCRED``), and the server only answers peers of its uid.
* Protocol: `cmc.protocol`. A client of another version does not use the daemon.
* The client never makes things worse: no socket, a refused or dead connection, a timeout, an
  error or a version mismatch all return None, and the caller completes in-process.
* The daemon exits after ``--idle-timeout`` seconds without requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cmc import CmcError, __version__, one_line
from cmc.protocol import MAX_LINE_BYTES, CompleteRequest

DEFAULT_IDLE_S = 900.0


def private_dir(path: Path) -> bool:
    """Make ``path`` a 0700 folder of this user; False when it is anything else (someone else's,
    a symlink, not a folder): then it must not be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700, follow_symlinks=False)
        return True
    except (OSError, NotImplementedError):
        return False


def socket_path() -> Path | None:
    """Where this user's daemon listens; None when no safe folder exists (complete in-process)."""
    if os.environ.get("CMC_SOCKET"):
        path = Path(os.environ["CMC_SOCKET"])
        return path if private_dir(path.parent) else None
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        candidates.append(Path(runtime) / "cmc")
    candidates.append(Path.home() / ".cache" / "cmc")
    for folder in candidates:
        if private_dir(folder):
            return folder / f"daemon-{os.getuid()}.sock"
    return None


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None  # no SO_PEERCRED here: the folder and socket checks still hold
    return struct.unpack("3i", creds)[1]


# --- client ---------------------------------------------------------------------------------------


def _connect(path: Path | None, timeout: float) -> socket.socket | None:
    """A connection to this user's daemon at ``path``: only to a socket the user owns, served by a
    process of the user's uid. None otherwise (never talk to anything else)."""
    path = path or socket_path()
    if path is None:
        return None
    sock = None
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        uid = _peer_uid(sock)
        if uid is None or uid == os.getuid():
            return sock
    except OSError:
        pass
    if sock is not None:
        sock.close()
    return None


def _request(payload: dict, timeout: float, path: Path | None = None) -> dict | None:
    sock = _connect(path, timeout)
    if sock is None:
        return None
    try:
        with sock:
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


def accepts(path: Path | None = None, timeout: float = 2.0) -> bool:
    """Whether a daemon of ours is listening there, even one too busy to answer a ping in time
    (the kernel accepts the connection for it)."""
    sock = _connect(path, timeout)
    if sock is None:
        return False
    sock.close()
    return True


def alive(path: Path | None = None) -> bool:
    """A daemon answers a ping, or at least accepts connections (busy)."""
    return ping(timeout=2.0, path=path) is not None or accepts(path)


def ping(timeout: float = 0.5, path: Path | None = None) -> dict | None:
    reply = _request({"op": "ping"}, timeout, path)
    return reply if reply and reply.get("ok") else None


def remote_complete(request: CompleteRequest, timeout: float) -> Any:
    """A `cmc.complete.Completion` from a running daemon of this version, or None."""
    reply = _request(request.to_json(), timeout)
    if not reply or not reply.get("ok") or reply.get("version") != __version__:
        return None
    from cmc.complete import Completion

    try:
        return Completion.from_json(reply.get("result"), served_by="daemon")
    except (ValueError, TypeError):
        return None


def open_log(path: Path) -> int | None:
    """An append-only descriptor for the daemon's log; never through a symlink."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None


def start_background() -> None:
    """Start `cmc serve` detached (its own session, no terminal); returns at once."""
    from cmc.spawn import python_argv, safe_env

    path = socket_path()
    if path is None:
        return
    log = open_log(path.with_suffix(".log"))
    out = log if log is not None else subprocess.DEVNULL
    try:
        # Never from the repository's folder: its own json.py or torch.py would be imported first.
        subprocess.Popen(
            python_argv("cmc.cli", "serve"), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True, cwd=path.parent, env=safe_env(),
        )  # fmt: skip
    finally:
        if log is not None:
            os.close(log)


def complete_with_daemon(request: CompleteRequest, start: bool, timeout: float = 5.0):
    """Ask this user's daemon. One that answers a ping is waited for up to ``timeout`` (even
    while it loads a model: a second copy in this process would only compete with it); when none
    answers and ``start`` allows, start one in the background. None: complete in-process."""
    if os.environ.get("CMC_NO_DAEMON") == "1":
        return None
    info = ping(timeout=2.0)
    if (info is not None and info.get("version") == __version__) or (info is None and accepts()):
        return remote_complete(request, timeout)  # alive, perhaps busy: wait for it
    if start:
        if info is not None:
            _request({"op": "shutdown"}, 0.5)  # an older cmc's daemon: replace it
            time.sleep(0.2)
        start_background()
    return None


def complete_for(repo: Any, settings: Any, typed: str, decode: Any, timeout: float = 30.0):
    """Complete in ``repo`` (a `cmc.gitctx.GitRepo`) through the warm daemon when it answers in
    ``timeout`` seconds, else in this process. The one client path of the hook and the CLI."""
    from cmc.settings import NO_MODEL_HELP

    if not settings.model:
        raise CmcError(NO_MODEL_HELP)
    started = time.monotonic()
    wait_s = min(max(timeout, 0.1), 600.0)
    request = CompleteRequest(str(repo.cwd.resolve()), typed, settings, decode, wait_s=wait_s)
    result = complete_with_daemon(request, start=settings.daemon, timeout=wait_s)
    if result is not None:
        return result
    if time.monotonic() - started >= timeout:  # a live daemon kept us waiting: loading a second
        raise CmcError(f"busy: no completion within {timeout:g}s (the daemon is still working)")
    with fallback_slot(request, started + timeout) as served:
        if served is not None:
            return served
        from cmc.complete import complete_context, context_from_repo, wants_file_history
        from cmc.model import load_model

        lm = load_model(settings.model)
        context = context_from_repo(repo, settings, file_history=wants_file_history(lm))
        return complete_context(lm, context, typed, decode)


@contextlib.contextmanager
def fallback_slot(request: CompleteRequest, deadline: float):
    """At most one in-process completion per user at a time: twenty clients that find no daemon
    must not load twenty models. The others wait, asking the daemon (which the first one started)
    meanwhile; they yield its answer, or None once they hold the slot themselves."""
    path = socket_path()
    if path is None or os.environ.get("CMC_NO_DAEMON") == "1":
        yield None
        return
    fd = os.open(path.parent / "fallback.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CmcError("busy: another cmc process is loading the model")
            if alive():
                served = remote_complete(replace(request, wait_s=min(remaining, 600.0)), remaining)
                if served is not None:
                    yield served
                    return
            time.sleep(0.2)
        yield None
    finally:
        os.close(fd)


# --- server ---------------------------------------------------------------------------------------


def _client_gone(conn: socket.socket) -> bool:
    """Whether the peer closed its end (a hook that timed out): its work is for nobody."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: DaemonServer = self.server  # type: ignore[assignment]
        if not server.peer_allowed(self.request):
            return
        while True:
            raw = self.rfile.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            server.touch()
            too_long = len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n")
            if too_long:
                reply = {"ok": False, "error": f"request line over {MAX_LINE_BYTES} bytes"}
            else:
                try:
                    reply = server.answer(json.loads(raw), lambda: _client_gone(self.request))
                except Exception as exc:  # a bad request must not take the daemon down
                    reply = {"ok": False, "error": one_line(exc)}
                    print(f"{time.strftime('%F %T')} request failed: {reply['error']}",
                          file=sys.stderr, flush=True)  # fmt: skip
            reply["version"] = __version__
            try:
                self.wfile.write((json.dumps(reply) + "\n").encode())
                self.wfile.flush()
            except OSError:
                return
            server.touch()
            if too_long:
                return  # the rest of that line is not worth reading


class DaemonServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # Clients arrive in herds (every editor buffer, a rebase's hooks): the kernel queues them while
    # the accept loop waits for the GIL, rather than refusing connects after socketserver's 5.
    request_queue_size = 128

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
        uid = _peer_uid(conn)
        return uid is None or uid == os.getuid()

    def answer(self, req: Any, cancelled: Any = None) -> dict:
        op = req.get("op") if isinstance(req, dict) else None
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "prefetched": self.service.prefetched}
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {"ok": True}
        if op != "complete":
            return {"ok": False, "error": f"unknown op {op!r}"}
        request = CompleteRequest.from_json(req)
        delay = float(os.environ.get("CMC_TEST_DAEMON_DELAY", "0") or 0)
        if delay:  # tests kill the daemon while a request is in flight
            time.sleep(delay)
        result, reused = self.service.complete(request, cancelled)
        return {"ok": True, "result": result.to_json(), "reused_tokens": reused}

    def prefetch_loop(self, every: float = 0.5) -> None:
        """Have the hook's next answer ready: after `git add`, the suggestion is computed while
        the user types `git commit` (see `CompletionService.prefetch`). Not activity: it never
        keeps an idle daemon alive."""
        while True:
            time.sleep(every)
            try:
                self.service.prefetch()
            except Exception as exc:  # never take the daemon down
                print(f"{time.strftime('%F %T')} prefetch failed: {one_line(exc)}",
                      file=sys.stderr, flush=True)  # fmt: skip

    def watch_idle(self) -> None:
        while True:
            time.sleep(min(5.0, self.idle_timeout / 4))
            if time.monotonic() - self.last_activity > self.idle_timeout:
                self.shutdown()
                return


def _warm_up(server: DaemonServer) -> None:
    """Pay the default model's load while nobody waits (requests queue behind it)."""
    with server.service.lock:
        try:
            import cmc.decoding.beam  # noqa: F401  (numpy)
            from cmc.model import load_model
            from cmc.settings import BUNDLED_MODEL, is_model_dir

            if is_model_dir(BUNDLED_MODEL):
                load_model(str(BUNDLED_MODEL))
        except Exception as exc:  # the first request will report it properly
            print(f"warm-up: {exc}", file=sys.stderr, flush=True)


def serve(idle_timeout: float = DEFAULT_IDLE_S, path: Path | None = None) -> int:
    """Run the daemon in the foreground until idle for ``idle_timeout`` seconds."""
    path = path or socket_path()
    if path is None:
        raise CmcError(
            "no private folder for the daemon's socket: $XDG_RUNTIME_DIR/cmc and ~/.cache/cmc "
            "must be folders of yours, mode 0700, not symlinks"
        )
    if os.path.lexists(path):
        if alive(path):
            raise CmcError(f"a cmc daemon is already serving {path}")
        path.unlink()  # left by a daemon that died: nothing listens on it
    server = DaemonServer(path, idle_timeout)
    threading.Thread(target=server.watch_idle, daemon=True).start()
    threading.Thread(target=_warm_up, args=(server,), daemon=True).start()
    if os.environ.get("CMC_PREFETCH", "1") != "0":
        threading.Thread(target=server.prefetch_loop, daemon=True).start()
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
