"""Packing vs bucketed padding for training steps: which is faster on the same examples?

    python bench/bench_packing.py [--data runs/tokens] [--size 9m] [--examples 64] [--rounds 3]

(a) what the trainer does: examples sorted by length, right-padded micro-batches, no attention mask;
(b) packing: examples concatenated into rows of at most 1,024 tokens, a block-diagonal causal 4D mask
so attention never crosses examples, positions restarting per example.
Both do forward + backward with the LM head only where message tokens are predicted; tokens/s of
real tokens, alternated in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("runs/tokens"))
    ap.add_argument("--tokenizer", type=Path, default=Path("cmc/default_model"))
    ap.add_argument("--size", default="9m")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from cmc.training.modeling import new_model
    from cmc.training.tokens import TokenDataset
    from cmc.training.train import forward_loss_sum, make_batch

    torch.set_num_threads(2)
    data = TokenDataset(args.data)
    picks = np.random.default_rng(0).choice(len(data), args.examples, replace=False).tolist()
    model = new_model(AutoTokenizer.from_pretrained(args.tokenizer), args.size)
    model.config.use_cache = False
    real = int(sum(data[i][0].shape[0] for i in picks))
    dev = torch.device("cpu")

    def padded() -> None:
        order = sorted(picks, key=lambda i: len(data[i][0]))
        for k in range(0, len(order), args.micro):
            forward_loss_sum(
                model, make_batch(data, order[k : k + args.micro], 0, dev), False, dev
            ).backward()

    rows: list[list[int]] = [[]]
    for i in sorted(picks, key=lambda i: -len(data[i][0])):  # first-fit decreasing into 1,024 slots
        for row in rows:
            if sum(len(data[j][0]) for j in row) + len(data[i][0]) <= 1024:
                row.append(i)
                break
        else:
            rows.append([i])

    def packed_batch(row_ids: list[list[int]]):
        width = max(sum(len(data[i][0]) for i in r) for r in row_ids)
        ids = torch.zeros((len(row_ids), width), dtype=torch.long)
        pos = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        mask = torch.full((len(row_ids), 1, width, width), float("-inf"))
        for b, r in enumerate(row_ids):
            at = 0
            for i in r:
                tok, start = data[i]
                n = len(tok)
                ids[b, at : at + n] = torch.from_numpy(tok)
                pos[b, at : at + n] = torch.arange(n)
                labels[b, at + start : at + n] = torch.from_numpy(tok[start:])
                mask[b, 0, at : at + n, at : at + n] = torch.triu(
                    torch.full((n, n), float("-inf")), 1
                )
                at += n
        return ids, pos, labels, mask

    def packed() -> None:
        per = max(1, args.micro // 3)  # a packed row holds ~3 examples: similar tokens per forward
        for k in range(0, len(rows), per):
            ids, pos, labels, mask = packed_batch(rows[k : k + per])
            # As the trainer does: the LM head only where a message token is predicted.
            keep = torch.nonzero((labels[:, 1:] != -100).any(0)).flatten()
            logits = model(
                input_ids=ids, position_ids=pos, attention_mask=mask, logits_to_keep=keep
            ).logits
            target = labels[:, 1:][:, keep]
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            ).backward()

    times = {"padded": [], "packed": []}
    for _ in range(args.rounds):
        for name, fn in (("padded", padded), ("packed", packed)):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    pad_rate = real / statistics.median(times["padded"])
    pack_rate = real / statistics.median(times["packed"])
    print(f"{args.examples} examples, {real} real tokens; {len(rows)} packed rows of <= 1024")
    print(f"bucketed padding: {pad_rate:8.0f} tokens/s")
    print(f"packing + 4D mask: {pack_rate:7.0f} tokens/s")
    print(f"ratio (padding / packing): {pad_rate / pack_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
