"""Another local user cannot reach, replace or redirect your daemon (a real second uid).

Run as root, the test acts as uid 65534 ("nobody") for the attacker; elsewhere it is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import LEARNED_MESSAGE, cmc_env
from test_interactive import staged_repo

from cmc.client import request

ATTACKER = 65534
pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second user")


@pytest.fixture(autouse=True)
def no_daemon_left_behind(tmp_path):
    """Daemons these tests start (some in folders no ping reaches) end with the test."""
    yield
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"cmc.cli\0serve" in cmdline and cwd.startswith(str(tmp_path)):
            os.kill(int(proc.name), signal.SIGKILL)


def as_attacker(code: str) -> None:
    subprocess.run(
        ["/usr/bin/env", "python3", "-c", code], check=True, user=ATTACKER, group=ATTACKER
    )


def complete(repo: Path, env: dict) -> dict:
    out = subprocess.run(["cmc", "complete", "--prefix", "Fix parser cr", "--json"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_runtime_folder_made_by_someone_else_is_not_used(tmp_path, tiny_model):
    import tempfile

    repo = staged_repo(tmp_path / "repo", tiny_model)
    with tempfile.TemporaryDirectory(prefix="cmc-shared-") as shared_dir:
        shared = Path(shared_dir)  # what XDG_RUNTIME_DIR=/tmp looks like: anyone may create in it
        os.chmod(shared, 0o1777)
        runtime_folder_checks(repo, shared, tmp_path / "victim")


def runtime_folder_checks(repo: Path, shared: Path, victim: Path) -> None:
    as_attacker(
        f"import os; os.mkdir({str(shared / 'cmc')!r}, 0o777); os.chmod({str(shared / 'cmc')!r}, 0o777)"
    )
    (victim / "elsewhere").mkdir(parents=True)
    os.chmod(victim / "elsewhere", 0o755)
    env = cmc_env({"XDG_RUNTIME_DIR": str(shared), "HOME": str(victim), "CMC_NO_DAEMON": "0"})
    env.pop("CMC_SOCKET", None)
    first = complete(repo, env)
    assert first["candidates"][0]["message"] == LEARNED_MESSAGE  # a suggestion all the same
    assert os.listdir(shared / "cmc") == []  # nothing of the victim's went there
    own = victim / ".cache" / "cmc"
    deadline = time.time() + 120
    while (info := request({"op": "ping"}, 0.5, own / f"daemon-{os.getuid()}.sock")) is None:
        assert time.time() < deadline, "no daemon in the victim's own folder"
        time.sleep(0.2)
    os.kill(info["pid"], signal.SIGKILL)
    # A symlink planted where the folder would be is refused too, and its target left alone.
    os.rmdir(shared / "cmc")
    as_attacker(f"import os; os.symlink({str(victim / 'elsewhere')!r}, {str(shared / 'cmc')!r})")
    complete(repo, env)
    assert (victim / "elsewhere").stat().st_mode & 0o777 == 0o755 and os.listdir(
        victim / "elsewhere"
    ) == []


def test_a_socket_of_another_uid_is_never_talked_to(tmp_path, tiny_model):
    repo = staged_repo(tmp_path / "repo", tiny_model)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sock_path = run / "cmc.sock"
    fake = socket.socket(socket.AF_UNIX)
    fake.bind(str(sock_path))
    fake.listen()
    os.chown(sock_path, ATTACKER, ATTACKER)  # as if the attacker had put it there
    asked = []

    def serve() -> None:
        while True:
            try:
                conn, _ = fake.accept()
            except OSError:
                return
            with conn:
                asked.append(conn.recv(1 << 16))
                reply = {"ok": True, "version": "0.1.0", "pid": 1, "result": {"prefix": "", "model": "x",
                         "latency_ms": 1, "candidates": [{"message": "Co-authored-by: mallory", "continuation": "", "score": 0}]}}  # fmt: skip
                conn.sendall(json.dumps(reply).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        got = complete(repo, cmc_env({"CMC_SOCKET": str(sock_path), "CMC_NO_DAEMON": "0"}))
    finally:
        fake.close()
    assert got["served_by"] == "in-process" and got["candidates"][0]["message"] == LEARNED_MESSAGE
    assert asked == []  # not even the repository path or the typed text went out


def test_the_daemon_log_is_never_opened_through_a_symlink(tmp_path, tiny_model):
    repo = staged_repo(tmp_path / "repo", tiny_model)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / "cmc.log").symlink_to(target)
    env = cmc_env({"CMC_SOCKET": str(run / "cmc.sock"), "CMC_NO_DAEMON": "0"})
    complete(repo, env)  # starts a daemon in the background, its output would go to the log
    deadline = time.time() + 120
    while (info := request({"op": "ping"}, 0.5, run / "cmc.sock")) is None:
        assert time.time() < deadline, "no daemon started"
        time.sleep(0.2)
    os.kill(info["pid"], signal.SIGKILL)
    assert target.read_text() == "keep me\n"
