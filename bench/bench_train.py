"""Trainer throughput against a plain Hugging Face `Trainer`, and the checkpoint stall, sync vs async.

    pip install accelerate   # the HF Trainer needs it
    python bench/bench_train.py [--data runs/tokens] [--size 9m] [--steps 12]

Same model (fresh `--size` Llama), same examples, same micro-batch and precision (fp32 CPU), one
process each, run one after the other in this process. Tokens/s counts real (unpadded) tokens of
steps after the first two. Then: how long `CheckpointManager.save` blocks training for that model
and its AdamW state, synchronous vs asynchronous DCP.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic(folder: Path, n: int = 512, vocab: int = 16384) -> Path:
    rng = np.random.default_rng(0)
    lengths = rng.integers(120, 800, n)
    tokens = rng.integers(5, vocab, int(lengths.sum())).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    index = np.stack([offsets, lengths, lengths - rng.integers(8, 30, n)], 1).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    tokens.tofile(folder / "train.tokens.u16")
    np.save(folder / "train.index.npy", index)
    return folder


def ours(data: Path, tok: Path, size: str, steps: int, batch: int, micro: int, out: Path) -> float:
    import json

    from cmc.training.train import main

    main(["--data", str(data), "--out", str(out), "--config", size, "--tokenizer", str(tok), "--max-steps", str(steps),
          "--global-batch-size", str(batch), "--micro-batch-size", str(micro), "--save-every", "100000",
          "--no-progress", "--precision", "fp32", "--eval-examples", "0"])  # fmt: skip
    rates = [
        json.loads(x)["tokens_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines()
    ][2:]
    return statistics.median(rates)


def hf_trainer(
    data: Path, tok: Path, size: str, steps: int, batch: int, micro: int, out: Path
) -> float:
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from cmc.training.modeling import new_model
    from cmc.training.tokens import TokenDataset

    tokenizer = AutoTokenizer.from_pretrained(tok)
    model = new_model(tokenizer, size)
    ds = TokenDataset(data)
    order = np.random.default_rng(0).permutation(len(ds))

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            ids, start = ds[int(order[i])]
            labels = ids.copy()
            labels[:start] = -100
            return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}

    counted = {"tokens": 0}

    def collate(items):
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), tokenizer.pad_token_id)
        labels = torch.full((len(items), width), -100)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, x in enumerate(items):
            n = len(x["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = x["input_ids"], x["labels"], 1
            counted["tokens"] += n
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    times: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append((time.perf_counter(), counted["tokens"]))

    targs = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro, learning_rate=1e-3, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    Trainer(
        model=model,
        args=targs,
        train_dataset=Examples(),
        data_collator=collate,
        callbacks=[Clock()],
    ).train()
    rates = [(t1[1] - t0[1]) / (t1[0] - t0[0]) for t0, t1 in itertools.pairwise(times)]
    return statistics.median(rates)


def checkpoint_stall(size: str, tok: Path, root: Path, saves: int = 3) -> tuple[float, float]:
    from transformers import AutoTokenizer

    from cmc.training.checkpoint import CheckpointManager, TrainState
    from cmc.training.modeling import new_model

    model = new_model(AutoTokenizer.from_pretrained(tok), size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(
        input_ids=torch.randint(0, 100, (1, 16)), labels=torch.randint(0, 100, (1, 16))
    ).loss.backward()
    opt.step()
    result = []
    for async_save in (False, True):
        mgr = CheckpointManager(root / f"async{int(async_save)}", keep=2, async_save=async_save)
        state = TrainState(model, opt)
        blocked = []
        for i in range(saves):
            state.step = i + 1
            start = time.perf_counter()
            mgr.save(state, {"step": state.step})
            blocked.append(time.perf_counter() - start)
            time.sleep(2.0)  # training goes on meanwhile
        mgr.close()
        result.append(statistics.median(blocked))
    return result[0], result[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("runs/tokens"))
    ap.add_argument("--tokenizer", type=Path, default=Path("cmc/default_model"))
    ap.add_argument("--size", default="9m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data if (args.data / "train.index.npy").exists() else synthetic(tmp / "data")
        ours_rate = ours(
            data, args.tokenizer, args.size, args.steps, args.batch, args.micro, tmp / "ours"
        )
        hf_rate = hf_trainer(
            data, args.tokenizer, args.size, args.steps, args.batch, args.micro, tmp / "hf"
        )
        print(f"our trainer:        {ours_rate:9.0f} tokens/s")
        print(f"HF Trainer:         {hf_rate:9.0f} tokens/s")
        print(f"ratio (ours / HF):  {ours_rate / hf_rate:9.2f}")
        shutil.rmtree(tmp / "ours", ignore_errors=True)
        sync_s, async_s = checkpoint_stall(args.size, args.tokenizer, tmp / "ckpt")
        print(f"checkpoint stall ({args.size} + AdamW): sync {sync_s * 1000:.0f} ms, async {async_s * 1000:.0f} ms "
              f"(ratio {sync_s / max(async_s, 1e-9):.1f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
