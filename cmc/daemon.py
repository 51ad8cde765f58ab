"""`cmc serve`: a warm completion daemon on a private Unix socket.

* It listens where `cmc.client.socket_path` says (a 0700 folder of the user's); the socket is 0600
  and the server only answers peers of its uid (``SO_PEERCRED``).
* Messages: `cmc.protocol`. A request of another version is refused.
* Work: `cmc.service.CompletionService` (models stay loaded, each repository's context and prompt
  are reused); after a `git add` it computes the hook's next answer ahead (``CMC_PREFETCH``).
* It exits after ``--idle-timeout`` seconds without requests.
"""

from __future__ import annotations

import json
import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cmc import CmcError, __version__, one_line
from cmc import protocol as wire
from cmc.client import alive, peer_uid, socket_path
from cmc.protocol import MAX_LINE_BYTES, CompleteRequest
from cmc.settings import DEFAULT_IDLE_S, prefetch_enabled


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
                reply = wire.error(f"request line over {MAX_LINE_BYTES} bytes")
            else:
                try:
                    reply = server.answer(json.loads(raw), lambda: _client_gone(self.request))
                except Exception as exc:  # a bad request must not take the daemon down
                    reply = wire.error(one_line(exc))
                    print(f"{time.strftime('%F %T')} request failed: {reply['error']}",
                          file=sys.stderr, flush=True)  # fmt: skip
            try:
                self.wfile.write(wire.encode_reply(reply))
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
        self.served = 0  # completions answered (the memory is trimmed after work, when idle)
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
        uid = peer_uid(conn)
        return uid is None or uid == os.getuid()

    def answer(self, req: Any, cancelled: Any = None) -> dict:
        op = req.get("op") if isinstance(req, dict) else None
        if op == wire.PING["op"]:
            return wire.ping_reply(os.getpid(), self.service.prefetched)
        if op == wire.SHUTDOWN["op"]:
            threading.Thread(target=self.shutdown, daemon=True).start()
            return wire.ok()
        if op != "complete":
            return wire.error(f"unknown op {op!r}")
        request = CompleteRequest.from_json(req)
        result, reused = self.service.complete(request, cancelled)
        self.served += 1
        return wire.complete_reply(result, reused)

    def prefetch_loop(self, every: float = 0.5) -> None:
        """Have the hook's next answer ready: after `git add`, the suggestion is computed while
        the user types `git commit` (see `CompletionService.prefetch`). After work, once no
        request has come for ``every`` seconds, the C heap's freed buffers go back to the system
        (`release_memory`). Not activity: it never keeps an idle daemon alive."""
        from cmc.runtime import release_memory

        trimmed = (0, 0)
        while True:
            time.sleep(every)
            try:
                self.service.prefetch()
            except Exception as exc:  # never take the daemon down
                print(f"{time.strftime('%F %T')} prefetch failed: {one_line(exc)}",
                      file=sys.stderr, flush=True)  # fmt: skip
            work = (self.served, self.service.prefetched)
            if work != trimmed and time.monotonic() - self.last_activity >= every:
                release_memory()  # after work, between requests: freed buffers back to the OS
                trimmed = work

    def memory_loop(self, every: float = 5.0, retry_s: float = 120.0) -> None:
        """Keep the memories of the repositories it served up to date (missing, or built for
        another HEAD): one `cmc memory build` at a time, in a child at the lowest CPU and I/O
        priority, never on a request's path. A build that failed is retried after ``retry_s``.
        Not activity: it never keeps an idle daemon alive."""
        builder: subprocess.Popen | None = None
        building = ""
        failed: dict[str, float] = {}
        while True:
            time.sleep(every)
            if builder is not None:
                if builder.poll() is None:
                    continue
                if builder.returncode != 0:
                    failed[building] = time.monotonic()
                builder = None
            try:
                behind = self.service.memories_behind()
            except Exception as exc:
                print(f"{time.strftime('%F %T')} memory check failed: {one_line(exc)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                continue
            for path in behind:
                if time.monotonic() - failed.get(path, -retry_s) < retry_s:
                    continue
                building = path
                builder = start_memory_build(path, self.path.parent)
                break

    def watch_idle(self) -> None:
        while True:
            time.sleep(min(5.0, self.idle_timeout / 4))
            if time.monotonic() - self.last_activity > self.idle_timeout:
                self.shutdown()
                return


MEMORY_BUILD_SECONDS = 600  # one background build's share; the next one goes on from there


def start_memory_build(repo: str, folder: Path) -> subprocess.Popen | None:
    """`cmc memory build` for ``repo`` in a child at the lowest priority (its lines go to the
    daemon's log)."""
    from cmc.spawn import lowest_priority, python_argv, safe_env

    argv = python_argv("cmc.cli", "memory", "build", "--repo", repo,
                       "--seconds", str(MEMORY_BUILD_SECONDS))  # fmt: skip
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=folder, env=safe_env(),
                                preexec_fn=lowest_priority)  # fmt: skip
    except OSError as exc:
        print(f"{time.strftime('%F %T')} memory build not started: {exc}", file=sys.stderr,
              flush=True)  # fmt: skip
        return None


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
    from cmc.runtime import return_large_buffers

    return_large_buffers()  # a request's peak, not only the memory between requests
    server = DaemonServer(path, idle_timeout)
    threading.Thread(target=server.watch_idle, daemon=True).start()
    threading.Thread(target=_warm_up, args=(server,), daemon=True).start()
    threading.Thread(target=server.memory_loop, daemon=True).start()
    from cmc.learn import learn_loop

    threading.Thread(target=learn_loop, args=(server.service, path.parent), daemon=True).start()
    if prefetch_enabled():
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
