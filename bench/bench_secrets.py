"""Secret masking: recall and false positives on the test corpus, and what it touches in real diffs.

    python bench/bench_secrets.py [--rows 5000] [--show 40]

Corpus (tests/secret_corpus.py): recall = share of secrets no longer present after masking,
false positives = share of look-alikes changed. Real diffs: rows sampled from every repository of
../shared/data/commits (train, validation and test), raw hunks as git prints them; prints the share
of diffs and of added/removed lines in which anything was masked (an upper bound on the
false-positive rate: what was masked there is listed for review), and the throughput.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "commits"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--show", type=int, default=40)
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import pyarrow.parquet as pq
    from secret_corpus import negatives, positives

    from cmc.secrets import MASK, mask_secrets

    pos, neg = positives(), negatives()
    missed = [(f, t) for f, t, s in pos if s in mask_secrets(t)]
    changed = [(f, t) for f, t in neg if mask_secrets(t) != t]
    families = len({f for f, _, _ in pos})
    print(f"corpus: {len(pos)} secrets in {families} families, recall {100 * (1 - len(missed) / len(pos)):.1f}%; "
          f"{len(neg)} look-alikes, false positives {100 * len(changed) / len(neg):.1f}%")  # fmt: skip
    for f, t in missed:
        print(f"  missed {f}: {t[:100]!r}")

    files = sorted(DATA.glob("*/*.parquet"))
    rng = random.Random(0)
    per_file = max(1, args.rows // len(files))
    diffs = []
    for f in files:
        table = pq.read_table(f, columns=["mods"]).to_pylist()
        for row in rng.sample(table, min(per_file, len(table))):
            diffs.append("\n".join(m["diff"] or "" for m in row["mods"]))
    started = time.perf_counter()
    masked = [mask_secrets(d) for d in diffs]
    elapsed = time.perf_counter() - started
    touched_diffs, lines, touched_lines, examples = 0, 0, 0, []
    for before, after in zip(diffs, masked):
        if before == after:
            lines += sum(1 for ln in before.split("\n") if ln[:1] in "+-")
            continue
        touched_diffs += 1
        for a, b in zip(before.split("\n"), after.split("\n")):
            if a[:1] in "+-":
                lines += 1
                if a != b:
                    touched_lines += 1
                    examples.append(b.strip()[:140])
    mb = sum(len(d) for d in diffs) / 1e6
    print(
        f"real diffs: {len(diffs)} from {len(files)} repositories, {mb:.1f} MB, {mb / elapsed:.1f} MB/s"
    )
    print(f"  diffs with anything masked: {touched_diffs} ({100 * touched_diffs / len(diffs):.2f}%); "
          f"changed lines {touched_lines} of {lines} ({100 * touched_lines / max(1, lines):.3f}%)")  # fmt: skip
    for line in rng.sample(examples, min(args.show, len(examples))):
        print("   ", line.replace(MASK, "▇"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
