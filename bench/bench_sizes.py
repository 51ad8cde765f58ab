"""Model size against quality and CPU latency: the table the default model was chosen from.

    python bench/bench_sizes.py --data runs/data/commits MODEL_DIR... [--limit 300]

For each model: median latency of a whole-message completion (beam 5, as the hook runs it) and of a
keystroke completion (greedy, one line), on test commits; and B-Norm / EM@1 at 0% and 50% typed
with history, by the same harness as `cmc eval`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--latency-only", action="store_true")
    args = ap.parse_args()
    from cmc.complete import complete_context, context_from_row
    from cmc.decoding import KEYSTROKE, DecodeSettings
    from cmc.model import load_model
    from cmc.training.evaluate import load_split, run_eval, sample_rows

    rows = sample_rows(load_split(args.data, "test"), 30, seed=1)
    print(
        f"{'model':<28}{'params':>8}{'hook ms':>9}{'key ms':>8}{'B-Norm 0%':>11}{'EM@1 0%':>9}{'B-Norm 50%':>12}{'EM@1 50%':>10}"
    )
    for spec in args.models:
        lm = load_model(spec)
        params = lm.model.num_parameters
        hook_t, key_t = [], []
        for row in rows[:5]:  # first calls of a model build its kernels: not what a user waits for
            complete_context(lm, context_from_row(row), "", DecodeSettings())
        for row in rows:
            ctx = context_from_row(row)
            t = time.perf_counter()
            complete_context(lm, ctx, "", DecodeSettings())
            hook_t.append(time.perf_counter() - t)
            typed = row["message"][: len(row["message"]) // 2]
            t = time.perf_counter()
            complete_context(lm, ctx, typed, KEYSTROKE)
            key_t.append(time.perf_counter() - t)
        if args.latency_only:
            s0 = s5 = dict.fromkeys(("B-Norm", "EM@1"), float("nan"))
        else:
            with tempfile.TemporaryDirectory() as out:
                res = run_eval(
                    args.data,
                    spec,
                    [0.0, 0.5],
                    [True],
                    args.limit,
                    out,
                    settings=DecodeSettings(max_new_tokens=15),
                    progress=False,
                )
            s0, s5 = res["scores"]["history@0"], res["scores"]["history@0.5"]
        name = Path(spec).name if Path(spec).exists() else spec
        print(f"{name[-28:]:<28}{params / 1e6:>7.1f}M{statistics.median(hook_t) * 1000:>9.0f}{statistics.median(key_t) * 1000:>8.0f}"
              f"{s0['B-Norm']:>11.2f}{s0['EM@1']:>9.2f}{s5['B-Norm']:>12.2f}{s5['EM@1']:>10.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
