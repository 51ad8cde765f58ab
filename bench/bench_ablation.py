"""The objective × context ablation of the model issue, at CPU scale (a 5M model, the same examples).

    python bench/bench_ablation.py --processed runs/processed --work runs/ablation [--steps 150]

Four arms trained from scratch on the same 24,000-row train sample (seeded) and the same steps:
objective message-only vs + context loss (``--context-loss-weight``), context author history vs
+ file history (the prompt's file-history section). Each is then measured by its message-token
validation loss (1,000 validation rows, the same ones) and by `cmc eval` on 300 test commits
(history on, 0 / 25 / 50 % typed). Stages are skipped when their output exists, so the script can be
run again after an interruption, or with ``--report`` alone once the arms are done. The arms run
two at a time with one thread each (``--parallel``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmc.prompt import Budget  # noqa: E402

BUDGET = Budget(diff_tokens=256, history_tokens=128, history_message_tokens=32, message_tokens=64)
FILES = replace(BUDGET, file_history_tokens=96, file_history_message_tokens=24)
ARMS = {  # name → (data variant, context loss weight)
    "author-msg": ("author", 0.0),
    "author-ctx": ("author", 0.1),
    "files-msg": ("files", 0.0),
    "files-ctx": ("files", 0.1),
}
RATIOS = (0.0, 0.25, 0.5)


def prepare(args) -> None:
    from datasets import load_from_disk

    from cmc.training.process import add_file_history
    from cmc.training.tokens import pretokenize_split

    for variant, budget in (("author", BUDGET), ("files", FILES)):
        out = args.work / f"data-{variant}"
        if (out / "validation.meta.json").exists():
            continue
        dd = load_from_disk(str(args.processed / "dataset"))
        for split, seed, n in (("train", 0, args.train_rows), ("validation", 1, 1000)):
            picked = random.Random(seed).sample(range(len(dd[split])), n)
            rows = dd[split].select(picked).to_list()
            if variant == "files" and "file_history" not in dd[split].column_names:
                # From the whole split (the repository's earlier commits), then the sample's rows.
                whole = dd[split].select_columns(["repo", "mods", "message"]).to_list()
                add_file_history(whole)
                for row, i in zip(rows, picked):
                    row["file_history"] = whole[i]["file_history"]
            pretokenize_split(rows, args.tokenizer, out, split, budget, progress=False)


def train(args) -> None:
    procs = []
    todo = [a for a in ARMS if not (args.work / a / "val_loss.json").exists()]
    for name in todo:
        variant, weight = ARMS[name]
        cmd = [sys.executable, "-m", "cmc.training.train", "--data", str(args.work / f"data-{variant}"),
               "--out", str(args.work / name), "--config", "5m", "--tokenizer", str(args.tokenizer),
               "--max-steps", str(args.steps), "--global-batch-size", "32", "--micro-batch-size", "16",
               "--warmup-steps", str(args.steps // 10), "--lr", "2e-3", "--no-progress",
               "--save-every", "25", "--eval-examples", "1000", "--context-loss-weight", str(weight)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(args.work / f"{name}.log", "a") as log:  # the child keeps its own copy
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        while sum(p.poll() is None for p in procs) >= args.parallel:
            time.sleep(5)
    for p in procs:
        p.wait()


def evaluate(args) -> None:
    from cmc.decoding import DecodeSettings
    from cmc.training.evaluate import run_eval
    from cmc.training.export import export_checkpoint

    for name in ARMS:
        model = args.work / name / "model"
        if not (model / "config.json").exists():
            export_checkpoint(args.work / name, model)
        if not (args.work / name / "eval" / "metrics.json").exists():
            run_eval(str(args.eval_data), str(model), list(RATIOS), [True], args.eval_limit,
                     args.work / name / "eval", settings=DecodeSettings(num_beams=5, max_new_tokens=15),
                     progress=False, resume=True)  # fmt: skip


def report(args) -> str:
    lines = ["| objective | context | val loss | " + " | ".join(
        f"{int(r * 100)}%: B-Norm / EditSim / EM@1 / EM@2" for r in RATIOS) + " |",
        "|---|---|---|" + "---|" * len(RATIOS)]  # fmt: skip
    for name, (variant, weight) in ARMS.items():
        val = json.loads((args.work / name / "val_loss.json").read_text())["val_loss"]
        scores = json.loads((args.work / name / "eval" / "metrics.json").read_text())["scores"]
        cells = []
        for r in RATIOS:
            s = scores[f"history@{r:g}"]
            cells.append(
                f"{s['B-Norm']:.2f} / {s['EditSim']:.2f} / {s['EM@1']:.1f} / {s['EM@2']:.1f}"
            )
        objective = "message only" if weight == 0 else f"+ context loss {weight:g}"
        context = "author history" if variant == "author" else "+ file history"
        lines.append(f"| {objective} | {context} | {val:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--processed", type=Path, default=ROOT / "runs" / "processed")
    p.add_argument(
        "--eval-data",
        type=Path,
        default=None,
        help="processed data whose test rows carry file_history (default: --processed)",
    )
    p.add_argument("--tokenizer", type=Path, default=ROOT / "cmc" / "default_model")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation")
    p.add_argument("--train-rows", type=int, default=24000)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--eval-limit", type=int, default=300)
    p.add_argument("--report", action="store_true", help="only print the table of finished arms")
    args = p.parse_args()
    args.eval_data = args.eval_data or args.processed
    if not args.report:
        args.work.mkdir(parents=True, exist_ok=True)
        prepare(args)
        train(args)
        evaluate(args)
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
