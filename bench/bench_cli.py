"""Front-door timings: `cmc --help`, the cold `git commit` hook, and cold `cmc complete`.

    python bench/bench_cli.py [--runs 5] [--model PATH]

Uses the bundled default model unless --model is given. The hook's cost is the time of a real
`git commit` with the hook minus the same commit with CMC_DISABLE=1 (the baseline, same run).
Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # An editor that keeps a proposed message and writes one when there is none (hook disabled).
        editor = Path(tmp) / "editor.sh"
        editor.write_text('#!/bin/sh\ngrep -q "^[^#]" "$1" || echo "Manual message" > "$1"\n')
        editor.chmod(0o755)
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GIT_EDITOR": str(editor),
        }
        env.pop("CMC_DISABLE", None)
        repo = Path(tmp) / "repo"
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        for key, value in (
            ("user.name", "Bench"),
            ("user.email", "bench@example.com"),
            ("cmc.timeout", "60"),
        ):
            subprocess.run(["git", "config", key, value], cwd=repo, check=True)
        if args.model:
            subprocess.run(["git", "config", "cmc.model", args.model], cwd=repo, check=True)
        src = repo / "src" / "server.py"
        src.parent.mkdir()
        src.write_text(
            "".join(
                f"def handler_{i}(request):\n    return respond(request, {i})\n" for i in range(40)
            )
        )
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(
            ["git", "commit", "-q", "-m", "Add the request handlers"], cwd=repo, check=True, env=env
        )
        subprocess.run(
            [str(BIN / "cmc"), "hook", "install"], cwd=repo, check=True, capture_output=True
        )

        def one_commit(disabled: bool, i: int) -> float:
            src.write_text(
                src.read_text() + f"def extra_{i}_{int(disabled)}(request):\n    return None\n"
            )
            subprocess.run(["git", "add", "."], cwd=repo, check=True)
            e = {**env, "CMC_DISABLE": "1"} if disabled else env
            return timed(["git", "commit", "-q"], repo, e)

        help_t = [timed([str(BIN / "cmc"), "--help"], repo, env) for _ in range(args.runs * 2)]
        base_t = [one_commit(True, i) for i in range(args.runs)]
        hook_t = [one_commit(False, i) for i in range(args.runs)]
        src.write_text(src.read_text() + "def staged_only(request):\n    return 1\n")
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        comp_t = [
            timed([str(BIN / "cmc"), "complete", "--prefix", "Add sta"], repo, env)
            for _ in range(args.runs)
        ]
        last = subprocess.run(
            ["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    med = statistics.median
    print(f"cmc --help:                     {med(help_t) * 1000:7.0f} ms")
    print(f"git commit, hook disabled:      {med(base_t) * 1000:7.0f} ms (baseline)")
    print(
        f"git commit, cold hook:          {med(hook_t) * 1000:7.0f} ms  → hook adds {(med(hook_t) - med(base_t)) * 1000:.0f} ms"
    )
    print(f"cmc complete (cold process):    {med(comp_t) * 1000:7.0f} ms")
    print(f"last hook message: {last!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
