"""The pretrained base's learning curve: B-Norm and EM@1 as fine-tuning sees more tokens.

    python bench/bench_base.py --run RUN --data DATA [--every 1000000] [--limit 100] [--watch]

RUN is a `cmc.training.recipes.base_cpu` folder; DATA the `cmc data process` folder it was made
from. Each time the run's checkpoints pass another ``--every`` tokens (counted as consumed examples
× the tokenized train split's mean length), the newest is exported (``RUN/curve/step-N/model``) and
scored with `cmc eval` on a fixed sample of the tuning repositories (validation split, history on,
0 / 25 / 50 % typed, the model alone: no repository memory), beside the bundled 9M model on the same
commits (``RUN/curve/9m``). ``--watch`` keeps doing so until the trainer has ended (run it beside
the training, in the background). Prints one row per point; every eval resumes from its own
predictions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATIOS = "0,0.25,0.5"


def score(model: str, data: Path, out: Path, limit: int, threads: int) -> dict:
    """`cmc eval` of ``model`` (its metrics.json; resumed from its predictions)."""
    metrics = out / "metrics.json"
    if not metrics.exists():
        env = {**__import__("os").environ, "CMC_THREADS": str(threads), "CMC_NO_DAEMON": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "cmc.cli", "eval", "--data", str(data), "--model", model,
             "--split", "validation", "--history", "--limit", str(limit),
             "--context-ratios", RATIOS, "--out", str(out)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"cmc eval of {model} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(metrics.read_text())


def row_of(metrics: dict) -> tuple[list[float], list[float]]:
    """B-Norm and EM@1 at each typed share (history on)."""
    scores = [metrics["scores"][f"history@{float(x):g}"] for x in RATIOS.split(",")]
    return [s["B-Norm"] for s in scores], [s["EM@1"] for s in scores]


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    from cmc.training.checkpoint import is_valid

    folder = run / "run" / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("step-*") if is_valid(p)]
    return sorted(found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--every", type=float, default=1e6, help="tokens between two points")
    p.add_argument("--limit", type=int, default=100, help="commits scored (× 3 typed shares)")
    p.add_argument("--threads", type=int, default=1, help="eval threads (the trainer has the rest)")
    p.add_argument("--watch", action="store_true", help="keep scoring until the trainer ends")
    args = p.parse_args()

    from cmc.settings import BUNDLED_MODEL
    from cmc.training.export import export_checkpoint

    data = args.data / "dataset" if (args.data / "dataset").is_dir() else args.data
    curve = args.run / "curve"
    curve.mkdir(parents=True, exist_ok=True)
    meta = json.loads((args.run / "tokens" / "train.meta.json").read_text())
    per_example = meta["tokens"] / meta["examples"]
    baseline = row_of(score(str(BUNDLED_MODEL), data, curve / "9m", args.limit, args.threads))
    print(f"{'model':<28} {'tokens':>8} {'B-Norm 0/25/50':>20} {'EM@1 0/25/50':>20}")
    print(f"{'bundled 9M (model alone)':<28} {'':>8} {fmt(baseline[0]):>20} {fmt(baseline[1]):>20}",
          flush=True)  # fmt: skip
    done: set[int] = {int(d.name.split("-")[1]) for d in curve.glob("step-*")}
    for step in sorted(done):
        show(curve / f"step-{step}", step, None, data, args)
    while True:
        points = checkpoints(args.run)
        if points:
            step, folder = points[-1]
            info = json.loads((folder / "trainer.json").read_text())
            tokens = info["consumed"] * per_example
            last = max(done, default=0)
            last_tokens = 0 if not done else last * tokens / max(step, 1)
            if step not in done and (tokens - last_tokens >= args.every or not args.watch):
                target = curve / f"step-{step}"
                export_checkpoint(folder, target / "model")
                done.add(step)
                show(target, step, tokens, data, args)
        if not args.watch or trainer_ended(args.run):
            return 0
        time.sleep(30)


def trainer_ended(run: Path) -> bool:
    return (run / "run" / "val_loss.json").exists()


def show(target: Path, step: int, tokens: float | None, data: Path, args) -> None:
    if tokens is None:
        info = json.loads((target / "model" / "cmc.json").read_text())
        meta = json.loads((args.run / "tokens" / "train.meta.json").read_text())
        tokens = info.get("consumed_samples", 0) * meta["tokens"] / meta["examples"]
    b, e = row_of(score(str(target / "model"), data, target / "eval", args.limit, args.threads))
    print(f"{'SmolLM2-135M step ' + str(step):<28} {tokens / 1e6:>7.2f}M {fmt(b):>20} {fmt(e):>20}",
          flush=True)  # fmt: skip


def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
