"""Mining speed against plain `git log -p --no-merges` on the same repository, and peak memory.

    python bench/bench_mine.py [--commits 5000] [--repo PATH]

Without --repo it generates a repository with `git fast-import`: COMMITS commits over 200 files of
source-like text, each commit editing a few hunks in 1–4 files (a few large ones among them).
Prints commits/s for both, their ratio, and the miner's peak RSS (measured in a child process).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(path: Path, commits: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    files = {
        f"src/module_{i}.py": [f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(40)]
        for i in range(200)
    }
    words = [
        "fix",
        "add",
        "update",
        "refactor",
        "parser",
        "cache",
        "request",
        "handle",
        "error",
        "config",
        "test",
        "docs",
        "build",
    ]
    out = []
    t0 = 1_500_000_000
    for c in range(commits):
        changed = rng.sample(sorted(files), rng.randint(1, 4))
        for name in changed:
            body = files[name]
            for _ in range(rng.randint(1, 3 if c % 97 else 60)):
                k = rng.randrange(len(body))
                body[k] = (
                    f"def g{c}_{k}(value):\n    return helper(value, {rng.randint(0, 999)})  # {rng.choice(words)}\n"
                )
        msg = f"{rng.choice(words).capitalize()} {rng.choice(words)} in {changed[0]}\n".encode()
        out.append(
            f"commit refs/heads/main\nauthor Dev{c % 7} <dev{c % 7}@example.com> {t0 + c * 600} +0000\n".encode()
        )
        out.append(
            f"committer Dev <dev@example.com> {t0 + c * 600} +0000\ndata {len(msg)}\n".encode()
            + msg
        )
        for name in changed:
            data = "".join(files[name]).encode()
            out.append(f"M 100644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=b"".join(out), check=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=path, check=True)


def time_git_log(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with subprocess.Popen(
        ["git", "log", "-p", "--no-merges", "--since=2017-01-01"], cwd=path, stdout=subprocess.PIPE
    ) as p:
        while p.stdout.read(1 << 20):
            pass
    elapsed = time.perf_counter() - start
    count = int(
        subprocess.run(
            ["git", "rev-list", "--count", "--no-merges", "--since=2017-01-01", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
        ).stdout
    )
    return elapsed, count


MINER = """
import json, resource, sys, time
from cmc.training.mine import mine_repository
start = time.perf_counter()
stats = mine_repository(sys.argv[1], sys.argv[2], progress=False)
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "commits": stats.commits, "skipped": sum(stats.skipped.values()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=5000)
    ap.add_argument("--repo", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo
        if repo is None:
            repo = Path(tmp) / "repo"
            t = time.perf_counter()
            generate(repo, args.commits)
            print(f"generated {args.commits} commits in {time.perf_counter() - t:.1f}s")
        git_s, count = time_git_log(repo)
        res = subprocess.run(
            [sys.executable, "-c", MINER, str(repo), str(Path(tmp) / "out")],
            capture_output=True,
            text=True,
            check=True,
        )
        mined = json.loads(res.stdout.strip().splitlines()[-1])
        git_rate = count / git_s
        mine_rate = (mined["commits"] + mined["skipped"]) / mined["seconds"]
        print(f"git log -p --no-merges: {count} commits in {git_s:.2f}s = {git_rate:.0f} commits/s")
        print(
            f"cmc data mine:          {mined['commits']} commits (+{mined['skipped']} skipped) in {mined['seconds']:.2f}s = {mine_rate:.0f} commits/s"
        )
        print(
            f"ratio (mine / git log): {mine_rate / git_rate:.2f}   peak RSS of the miner: {mined['peak_rss_mb']:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
