"""What `cmc train` buys per CPU-minute: variants of the personalization on real repositories.

    python bench/bench_learn.py REPO [REPO ...] [--variants full-200 last2-200 full-60]
                                [--eval-limit 60] [--out runs/bench-learn]

For each repository (a clone or a fetched snapshot), each variant is a whole `cmc train --json
--no-install` in its own run folder, as the background learner runs it: mining, scoring the
current model on the newest commits (with the repository's memory, as completions use it),
training, scoring the result. Every variant is judged on the same newest commits. Prints B-Norm and
EM@1 before → after at 0 / 25 / 50% typed, the variant's CPU minutes in all, and the smallest
B-Norm gain of the three typed shares per CPU-minute. Each variant resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {  # name: extra `cmc train` flags
    "full-200": [],
    "last2-200": ["--train-layers", "2"],
    "full-60": ["--max-steps", "60"],
    "last2-60": ["--train-layers", "2", "--max-steps", "60"],
}


def run_variant(repo: Path, out: Path, flags: list[str], eval_limit: int) -> dict:
    cmd = [sys.executable, "-m", "cmc.cli", "train", "--repo", str(repo), "--out", str(out),
           "--no-install", "--json", "--eval-limit", str(eval_limit), *flags]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{repo} {out.name}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("repos", nargs="+", type=Path)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--eval-limit", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-learn")
    args = ap.parse_args()
    rows = []
    for repo in args.repos:
        name = repo.resolve().parent.name if repo.name == "repo" else repo.name
        for variant in args.variants:
            out = args.out / name / variant
            result = run_variant(repo, out, VARIANTS[variant], args.eval_limit)
            minutes = result["cpu_seconds"] / 60
            cells = []
            gains = []
            for share in ("0", "0.25", "0.5"):
                b, a = result["before"][f"history@{share}"], result["after"][f"history@{share}"]
                cells.append(
                    f"{b['B-Norm']:.1f} → {a['B-Norm']:.1f} / {b['EM@1']:.0f} → {a['EM@1']:.0f}"
                )
                gains.append(a["B-Norm"] - b["B-Norm"])
            rows.append(f"| {name} | {variant} | {' | '.join(cells)} | {minutes:.1f} "
                        f"| {min(gains) / minutes:+.2f} |")  # fmt: skip
            print(rows[-1], flush=True)
    print(
        f"\n`cmc train`, newest {args.eval_limit} commits scored with the repository's memory;"
        " B-Norm / EM@1 before → after at 0 | 25 | 50% typed"
    )
    print(
        "| repository | variant | 0% | 25% | 50% | CPU-minutes | least B-Norm gain per CPU-minute |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
