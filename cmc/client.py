"""The client of this user's completion daemon: the one way the hook, `cmc complete` and the
language server reach a completion.

* Where the daemon listens (`socket_path`): a folder only the user can enter
  (``$XDG_RUNTIME_DIR/cmc`` or ``~/.cache/cmc``, or ``CMC_SOCKET``'s folder); it must be a real
  folder (not a symlink) owned by the user, mode 0700, or cmc does not use it. The client connects
  only to a socket the user owns and to a server of the user's uid (``SO_PEERCRED``).
* The client never makes things worse: no socket, a refused or dead connection, a timeout, an error
  or a version mismatch all mean "no answer", and `complete` then completes in this process.
* Messages are built and read by `cmc.protocol`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cmc import CmcError, __version__
from cmc import protocol as wire
from cmc.protocol import CompleteRequest
from cmc.settings import DEFAULT_WAIT_S, daemon_disabled_by_env, socket_override

# --- where ----------------------------------------------------------------------------------------


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
    override = socket_override()
    if override is not None:
        return override if private_dir(override.parent) else None
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        candidates.append(Path(runtime) / "cmc")
    candidates.append(Path.home() / ".cache" / "cmc")
    for folder in candidates:
        if private_dir(folder):
            return folder / f"daemon-{os.getuid()}.sock"
    return None


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where it cannot be known)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None  # no SO_PEERCRED here: the folder and socket checks still hold
    return struct.unpack("3i", creds)[1]


def open_log(path: Path) -> int | None:
    """An append-only descriptor for the daemon's log; never through a symlink."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None


# --- talking --------------------------------------------------------------------------------------


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
        uid = peer_uid(sock)
        if uid is None or uid == os.getuid():
            return sock
    except OSError:
        pass
    if sock is not None:
        sock.close()
    return None


def request(message: dict, timeout: float, path: Path | None = None) -> dict | None:
    """Send one message and read one reply; None on any failure (no daemon, a dead or slow one)."""
    sock = _connect(path, timeout)
    if sock is None:
        return None
    try:
        with sock:
            sock.sendall(wire.encode(message))
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return None  # the daemon died mid-request
                data += chunk
    except OSError:
        return None
    return wire.decode_reply(data)


def accepts(path: Path | None = None, timeout: float = 2.0) -> bool:
    """Whether a daemon of ours is listening there, even one too busy to answer a ping in time
    (the kernel accepts the connection for it)."""
    sock = _connect(path, timeout)
    if sock is None:
        return False
    sock.close()
    return True


def ping(timeout: float = 0.5, path: Path | None = None) -> dict | None:
    reply = request(wire.PING, timeout, path)
    return reply if reply and reply.get("ok") else None


def alive(path: Path | None = None) -> bool:
    """A daemon answers a ping, or at least accepts connections (busy)."""
    return ping(timeout=2.0, path=path) is not None or accepts(path)


def shutdown(timeout: float = 2.0, path: Path | None = None) -> bool:
    return request(wire.SHUTDOWN, timeout, path) is not None


def remote_complete(req: CompleteRequest, timeout: float) -> Any:
    """A `cmc.complete.Completion` from a running daemon of this version, or None."""
    return wire.completion_of(request(req.to_json(), timeout))


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


def complete_with_daemon(req: CompleteRequest, start: bool, timeout: float = 5.0) -> Any:
    """Ask this user's daemon. One that answers a ping is waited for up to ``timeout`` (even
    while it loads a model: a second copy in this process would only compete with it); when none
    answers and ``start`` allows, start one in the background. None: no answer from a daemon."""
    if daemon_disabled_by_env():
        return None
    info = ping(timeout=2.0)
    if (info is not None and info.get("version") == __version__) or (info is None and accepts()):
        return remote_complete(req, timeout)  # alive, perhaps busy: wait for it
    if start:
        if info is not None:
            shutdown(0.5)  # an older cmc's daemon: replace it
            time.sleep(0.2)
        start_background()
    return None


def daemon_usable(settings: Any) -> bool:
    """Whether a daemon may serve this client: allowed by the settings and the environment, and
    a private folder for its socket exists."""
    return settings.daemon and not daemon_disabled_by_env() and socket_path() is not None


# --- the one path to a completion -----------------------------------------------------------------


def complete(
    repo: Any,
    settings: Any,
    typed: str,
    decode: Any,
    timeout: float = DEFAULT_WAIT_S,
    *,
    local: Any = None,
) -> Any:
    """Complete in ``repo`` (a `cmc.gitctx.GitRepo`, `cmc.settings.Settings`) through the warm
    daemon when it answers within ``timeout`` seconds, else in this process.

    ``local`` is for a long-lived client (the language server): a `cmc.service.CompletionService`
    used only where no daemon may run (``cmc.daemon false``, ``CMC_NO_DAEMON``, no private socket
    folder). Where one may, such a client waits for the daemon (starting it) rather than loading a
    second copy of the model. A one-shot client (hook, CLI) completes in this process meanwhile."""
    from cmc.settings import NO_MODEL_HELP

    if not settings.model:
        raise CmcError(NO_MODEL_HELP)
    started = time.monotonic()
    wait_s = min(max(timeout, 0.1), wire.MAX_WAIT_S)
    req = CompleteRequest(str(repo.cwd.resolve()), typed, settings, decode, wait_s=wait_s)
    if local is not None:
        if not daemon_usable(settings):
            return local.complete(req)[0]
        return _wait_for_daemon(req, started + timeout)
    result = complete_with_daemon(req, start=settings.daemon, timeout=wait_s)
    if result is not None:
        return result
    if time.monotonic() - started >= timeout:  # a live daemon kept us waiting: loading a second
        raise CmcError(f"busy: no completion within {timeout:g}s (the daemon is still working)")
    with fallback_slot(req, started + timeout) as served:
        if served is not None:
            return served
        from cmc.complete import (
            complete_context,
            context_from_repo,
            load_models,
            wants_file_history,
        )

        lm, decider = load_models(settings, whole=not decode.stop_at_newline)
        context = context_from_repo(repo, settings, file_history=wants_file_history(lm, decider))
        return complete_context(lm, context, typed, decode, decider=decider)


def _wait_for_daemon(req: CompleteRequest, deadline: float) -> Any:
    """The daemon's answer, starting the daemon first when none of this version runs (a long-lived
    client). An error the daemon reports is raised as it said it."""
    started_one = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CmcError("busy: the daemon did not answer in time (it may still be starting)")
        if alive():
            reply = request(replace(req, wait_s=min(remaining, wire.MAX_WAIT_S)).to_json(),
                            remaining)  # fmt: skip
            served = wire.completion_of(reply)
            if served is not None:
                return served
            if reply and reply.get("version") == __version__ and not reply.get("ok"):
                raise CmcError(str(reply.get("error") or "the daemon failed"))
        if not started_one:  # none, or an older cmc's: (re)start it
            complete_with_daemon(req, start=True, timeout=min(remaining, 5.0))
            started_one = True
        time.sleep(0.1)


@contextlib.contextmanager
def fallback_slot(req: CompleteRequest, deadline: float):
    """At most one in-process completion per user at a time: twenty clients that find no daemon
    must not load twenty models. The others wait, asking the daemon (which the first one started)
    meanwhile; they yield its answer, or None once they hold the slot themselves."""
    path = socket_path()
    if path is None or daemon_disabled_by_env():
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
                served = remote_complete(replace(req, wait_s=min(remaining, wire.MAX_WAIT_S)),
                                         remaining)  # fmt: skip
                if served is not None:
                    yield served
                    return
            time.sleep(0.2)
        yield None
    finally:
        os.close(fd)
