"""Subject line or body: score `cmc eval` predictions as generated and cut to their first line,
grouped by whether the author's last ten history messages have bodies (see the README).

    python bench/bench_subject_only.py --predictions EVAL/predictions.jsonl --data runs/processed
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmc.training.evaluate import load_split, score  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--data", required=True, help="the processed data the predictions were made on")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--share", type=float, default=0.3, help="share of bodies that counts as 'writes bodies'"
    )
    args = p.parse_args()
    records = [json.loads(line) for line in args.predictions.read_text().splitlines()]
    wanted = {r["id"] for r in records}
    history = {
        row["hash"]: row["history"] or []
        for row in load_split(args.data, args.split)
        if row["hash"] in wanted
    }
    groups = defaultdict(list)
    for r in records:
        recent = history.get(r["id"], [])[-10:]
        bodies = (
            sum("\n" in m.strip() for m in recent) >= args.share * len(recent) if recent else False
        )
        groups["writes bodies" if bodies else "no bodies"].append(r)
        groups["all"].append(r)
    for name, rows in groups.items():
        targets = [r["target"] for r in rows]
        full = score([r["prediction"] for r in rows], targets)
        cut = score([r["prediction"].split("\n")[0] for r in rows], targets)
        with_body = sum("\n" in r["prediction"] for r in rows) / len(rows)
        print(f"{name}: {len(rows)} predictions ({with_body:.0%} with a body; "
              f"{sum(chr(10) in t for t in targets) / len(rows):.0%} of targets)")  # fmt: skip
        for m in ("B-Norm", "EditSim", "EM@1"):
            print(f"  {m}: as generated {full[m]:.2f}, subject line only {cut[m]:.2f} "
                  f"({cut[m] / max(full[m], 1e-9):.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
