"""Train candidate sizes of the default model at once on one GPU, within a wall-clock budget.

    python -m cmc.training.recipes.default_model_gpu --data DIR --tokenizer DIR --out DIR \
        --seconds 390 --sizes 5m 9m 15m

Each size first runs a short probe (all sizes together, as they will share the GPU) to measure its
throughput; its step count is then set so it ends in about ``--seconds``, and a deadline stops it
cleanly (with a checkpoint) if the estimate was off. Then each run is exported (bf16 safetensors).
Data may arrive as ``train.tokens.u16.zst`` (zstd), as it travels to a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cmc.training.config import TrainConfig
from cmc.training.recipes import launch as launch_trainer
from cmc.training.recipes import probe_rate, steps_within

# The trainer's flags this recipe offers, with its defaults.
TRAINER_FLAGS = {"global_batch_size": 128, "micro_batch_size": 64, "lr": 2e-3,
                 "eval_examples": 2000}  # fmt: skip


def unpack(data: Path) -> None:
    packed = data / "train.tokens.u16.zst"
    target = data / "train.tokens.u16"
    if packed.exists() and not target.exists():
        import pyarrow as pa

        raw = json.loads((data / "train.zst.json").read_text())["raw_bytes"]
        target.write_bytes(
            pa.Codec("zstd").decompress(packed.read_bytes(), decompressed_size=raw).to_pybytes()
        )


def launch(
    args, size: str, out: Path, steps: int, warmup: int, save_every: int, seconds: float
) -> subprocess.Popen:
    config = TrainConfig(
        data=str(args.data), out=str(out), config=size, tokenizer=str(args.tokenizer),
        max_steps=steps, warmup_steps=warmup, save_every=save_every, no_progress=True,
        stop_after_seconds=seconds, **TrainConfig.pick(args, TRAINER_FLAGS),
    )  # fmt: skip
    return launch_trainer(config, out.parent / f"{out.name}.log")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=390)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument(
        "--steps", type=int, default=0, help="skip the probe: this many steps for every size"
    )
    p.add_argument("--sizes", nargs="+", default=["5m", "9m", "15m"])
    TrainConfig.add_arguments(p, TRAINER_FLAGS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    unpack(args.data)
    meta = json.loads((args.data / "train.meta.json").read_text())
    per_example = meta["tokens"] / meta["examples"]
    print(
        f"unpacked in {time.time() - t0:.0f}s; {meta['examples']} examples, {per_example:.0f} tokens each",
        flush=True,
    )

    probe_sizes = [] if args.steps else args.sizes
    probes = {
        s: launch(args, s, args.out / f"probe-{s}", args.probe_steps, 5, 10**9, 0)
        for s in probe_sizes
    }
    for proc in probes.values():
        proc.wait()
    steps = {s: args.steps for s in args.sizes}
    for s in probe_sizes:
        rate = probe_rate(args.out / f"probe-{s}")
        steps[s] = steps_within(rate, args.seconds, per_example, args.global_batch_size, least=50)
        print(f"{s}: probe {rate:.0f} tokens/s → {steps[s]} steps", flush=True)
    print(f"probes done at {time.time() - t0:.0f}s", flush=True)

    runs = {
        s: launch(
            args,
            s,
            args.out / f"run-{s}",
            steps[s],
            min(200, steps[s] // 10),
            max(100, steps[s] // 5),
            args.seconds * 1.08,
        )
        for s in args.sizes
    }
    for proc in runs.values():
        proc.wait()
    print(f"training done at {time.time() - t0:.0f}s", flush=True)

    from cmc.training.export import export_checkpoint

    for s in args.sizes:
        run = args.out / f"run-{s}"
        try:
            export_checkpoint(run, args.out / f"model-{s}", dtype="bfloat16", max_shard_size="2GB")
        except Exception as exc:
            print(f"{s}: export failed: {exc}", flush=True)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        val = (
            (run / "val_loss.json").read_text().strip()
            if (run / "val_loss.json").exists()
            else "n/a"
        )
        print(
            f"{s}: {len(lines)} steps logged; last {lines[-1] if lines else 'none'}; val {val}",
            flush=True,
        )
    print(f"all done at {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
