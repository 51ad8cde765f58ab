"""Interactive speed: per-keystroke completion and `git commit`, warm vs cold, per model.

    python bench/bench_interactive.py [--commits 5] [--cold 3] [--model PATH[,MESSAGE_PATH] ...]

A real staged diff (a change to one of cmc's own source files in a temp repository), a message typed
one character at a time against a warm daemon (private socket in the temp folder), then `git commit`
with the hook: disabled (baseline), cold (no daemon), warm (daemon; `git commit` run 1 s after the
`git add`, the time the daemon has to compute the hook's answer before it is asked), and the
daemon's resident memory (peak and at the end). Prints medians, p95 and the warm/cold ratios, all
from this one run; with several ``--model`` (the bundled model first when none is named), one block
per model and a last table of each figure's ratio to the first model's. ``--model A,B`` measures
the two-model stage: A serves keystrokes (`cmc.model`), B whole messages (`cmc.messageModel`: the
hook, the cold whole suggestion).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MESSAGE = "Fix hunk parsing for renamed files with spaces in their paths"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of a process, MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=5)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--model", action="append",
                    help="a model folder, or KEYSTROKES,MESSAGES (repeat; default: bundled)")  # fmt: skip
    ap.add_argument("--after-add", type=float, default=1.0, help="seconds from git add to commit")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cmc.settings import BUNDLED_MODEL

    models = [",".join(str(Path(p).resolve()) for p in str(m).split(","))
              for m in args.model or [BUNDLED_MODEL]]  # fmt: skip
    figures = [measure(model, args) for model in models]
    if len(figures) > 1:
        print("\nratio to the first model (same run):")
        for key in figures[0]:
            print(f"  {key:24s} " + "  ".join(f"{f[key] / figures[0][key]:6.2f}x" for f in figures))
    return 0


def measure(model: str, args) -> dict:
    print(f"\n== {model}")
    from cmc.client import request
    from cmc.decoding import KEYSTROKE
    from cmc.protocol import CompleteRequest
    from cmc.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        sock = tmp / "run" / "cmc.sock"
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "CMC_SOCKET": str(sock),
        }
        env.pop("CMC_DISABLE", None)
        env.pop("CMC_NO_DAEMON", None)
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        keystrokes_model, _, message_model = model.partition(",")
        for k, v in (
            ("user.name", "Bench"),
            ("user.email", "bench@example.com"),
            ("cmc.timeout", "60"),
            ("cmc.daemon", "false"),
            ("cmc.model", keystrokes_model),
            *([("cmc.messageModel", message_model)] if message_model else []),
        ):
            subprocess.run(["git", "config", k, v], cwd=repo, check=True)
        target = repo / "cmc" / "diffs.py"
        target.parent.mkdir()
        shutil.copy(ROOT / "cmc" / "diffs.py", target)
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "Add diff processing"], cwd=repo, check=True)
        source = (
            target.read_text()
            .replace("if half > 0 and", "if half >= 0 and")
            .replace('rest.partition(" b/")', 'rest.rpartition(" b/")')
        )
        target.write_text(source)
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(
            [str(BIN / "cmc"), "hook", "install"], cwd=repo, check=True, capture_output=True
        )

        # Cold path: a fresh process per completion (what every keystroke would cost without a daemon).
        cold = []
        for _ in range(args.cold):
            t = time.perf_counter()
            subprocess.run([str(BIN / "cmc"), "complete", "--prefix", MESSAGE[:20], "--beams", "1", "--max-new-tokens", "12"],
                           cwd=repo, env={**env, "CMC_NO_DAEMON": "1"}, check=True, capture_output=True)  # fmt: skip
            cold.append(time.perf_counter() - t)
        # A whole suggestion, cold: what the hook computes, in a fresh process.
        whole = []
        for _ in range(args.cold):
            t = time.perf_counter()
            subprocess.run([str(BIN / "cmc"), "complete"], cwd=repo, env={**env, "CMC_NO_DAEMON": "1"},
                           check=True, capture_output=True)  # fmt: skip
            whole.append(time.perf_counter() - t)

        daemon = subprocess.Popen([str(BIN / "cmc"), "serve", "--idle-timeout", "300"], env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            while request({"op": "ping"}, 0.5, sock) is None:
                time.sleep(0.1)
            # What an editor asks on each keystroke (cmc.complete.KEYSTROKE): one line, greedy.
            settings = Settings.load(repo, repo / ".git")
            req = CompleteRequest(str(repo), "", settings, KEYSTROKE).to_json()
            request({**req, "typed": ""}, 120, sock)  # loads the model, computes the context
            keystrokes, reused, server_ms, followed = [], [], [], 0
            for i in range(1, len(MESSAGE) + 1):
                t = time.perf_counter()
                reply = request({**req, "typed": MESSAGE[:i]}, 60, sock)
                keystrokes.append(time.perf_counter() - t)
                reused.append(reply["reused_tokens"])
                followed += reply["reused_tokens"] == -1
                server_ms.append(reply["result"]["latency_ms"])
            sample = (
                reply["result"]["candidates"][0]["message"] if reply["result"]["candidates"] else ""
            )

            def commit(i: int, extra: dict) -> float:
                target.write_text(target.read_text() + f"\n# change {i} {len(extra)}\n")
                subprocess.run(["git", "add", "."], cwd=repo, check=True)
                if not extra:
                    time.sleep(args.after_add)  # the user reading the diff; the daemon computes
                t = time.perf_counter()
                subprocess.run(
                    ["git", "commit", "-q"],
                    cwd=repo,
                    env={**env, "GIT_EDITOR": "true", **extra},
                    check=True,
                    capture_output=True,
                )
                return time.perf_counter() - t

            warm_commit = [commit(i, {}) for i in range(args.commits)]
            peak_mb, rss_mb = memory_mb(daemon.pid)
            # the daemon is told to stand aside for the cold measurements
            cold_commit = [commit(i, {"CMC_NO_DAEMON": "1"}) for i in range(max(2, args.cold))]
            base_commit = [
                commit(i, {"CMC_DISABLE": "1", "GIT_EDITOR": "sh -c 'echo manual > \"$1\"' -"})
                for i in range(args.commits)
            ]
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
        med = statistics.median
        print(f"per keystroke, warm daemon ({len(keystrokes)} keystrokes): median {med(keystrokes) * 1000:.0f} ms, "
              f"p95 {pct(keystrokes, 0.95) * 1000:.0f} ms (model time median {med(server_ms):.0f} ms; "
              f"prompt tokens reused median {med(reused):.0f}; {followed} keystrokes followed the standing suggestion)")  # fmt: skip
        print(
            f"per completion, cold process:           median {med(cold) * 1000:.0f} ms → warm is {med(cold) / med(keystrokes):.0f}x faster"
        )
        print(f"whole suggestion, cold process:         median {med(whole) * 1000:.0f} ms")
        print(
            f"git commit, hook disabled:              median {med(base_commit) * 1000:.0f} ms (baseline)"
        )
        print(f"git commit, hook with warm daemon:      median {med(warm_commit) * 1000:.0f} ms")
        print(
            f"git commit, hook cold (no daemon):      median {med(cold_commit) * 1000:.0f} ms → warm is {med(cold_commit) / med(warm_commit):.1f}x faster"
        )
        print(
            f"daemon memory:                          peak {peak_mb:.0f} MB, after the commits {rss_mb:.0f} MB"
        )
        print(f"last keystroke's suggestion: {sample!r}")
        figures = {"keystroke_ms_median": med(keystrokes) * 1000, "keystroke_ms_p95": pct(keystrokes, 0.95) * 1000,
                   "cold_complete_ms": med(cold) * 1000, "cold_whole_ms": med(whole) * 1000, "hook_warm_ms": med(warm_commit) * 1000,
                   "hook_cold_ms": med(cold_commit) * 1000, "daemon_peak_mb": peak_mb}  # fmt: skip
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.exit(main())
