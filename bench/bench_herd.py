"""Twenty `cmc complete` at once against one warm daemon: are all answered by it, and how fast?

    python bench/bench_herd.py [--clients 20] [--model PATH]

Before the queue with deadlines and the waiting clients, each client gave up after 5 s and loaded
its own model in-process (0 of 20 answered by the daemon, ~10 GB summed). Prints how many the
daemon served, how many fell back, and the p50/p95 wall time per client (the bundled model unless
--model), and the same for one client alone as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cmc.client import request

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        sock = tmp / "run" / "cmc.sock"
        env = {**os.environ, "CMC_SOCKET": str(sock), "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("CMC_NO_DAEMON", None)
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        for k, v in (("user.name", "Ada"), ("user.email", "ada@example.com")):
            subprocess.run(["git", "config", k, v], cwd=repo, check=True)
        if args.model:
            subprocess.run(["git", "config", "cmc.model", args.model], cwd=repo, check=True)
        (repo / "server.py").write_text("def handle(request):\n    return 200\n")
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(
            ["git", "commit", "-q", "-m", "Add the request handler"], cwd=repo, check=True
        )
        (repo / "server.py").write_text(
            "def handle(request):\n    if request is None:\n        return 400\n    return 200\n"
        )
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        daemon = subprocess.Popen([str(BIN / "cmc"), "serve", "--idle-timeout", "300"], env=env,
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            while request({"op": "ping"}, 0.5, sock) is None:
                time.sleep(0.1)

            def one(i: int) -> tuple[float, str]:
                t = time.perf_counter()
                out = subprocess.run([str(BIN / "cmc"), "complete", "--prefix", "Handle", "--json"],
                                     cwd=repo, env=env, capture_output=True, text=True)  # fmt: skip
                served = json.loads(out.stdout)["served_by"] if out.returncode == 0 else "error"
                return time.perf_counter() - t, served

            alone = [one(0) for _ in range(3)]  # also loads the model into the daemon
            with ThreadPoolExecutor(args.clients) as pool:
                herd = list(pool.map(one, range(args.clients)))
        finally:
            os.killpg(daemon.pid, signal.SIGKILL)
    base = statistics.median(t for t, _ in alone[1:])
    times = [t for t, _ in herd]
    by = {k: sum(1 for _, s in herd if s == k) for k in ("daemon", "in-process", "error")}
    print(f"one client alone: median {base * 1000:.0f} ms ({[s for _, s in alone]})")
    print(f"{args.clients} at once: served by the daemon {by['daemon']}/{args.clients}, "
          f"in-process {by['in-process']}, errors {by['error']}")  # fmt: skip
    print(f"  per client p50 {pct(times, 0.5) * 1000:.0f} ms, p95 {pct(times, 0.95) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms (p95 {pct(times, 0.95) / base:.1f}x one alone)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
