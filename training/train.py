"""The trainer: ``torchrun --nproc-per-node N -m training.train --data DIR --out DIR ...``.

One command for one CPU, one GPU or many: gloo on CPU, NCCL on GPU; DDP by default, FSDP2
(`fully_shard`) with ``--fsdp``; bf16 autocast on GPUs; gradient accumulation; warmup + cosine LR.

The math of a step does not depend on the number of processes: step ``s`` trains on global samples
``[s*B, (s+1)*B)`` (`training.sampler`), the loss is the sum of message-token losses over the whole
global batch divided by its message-token count, and each process takes B/N samples in micro-batches
of similar length (padding to the right, so causal attention never sees padding: no mask needed).
Only the positions that predict message tokens go through the LM head. Checkpoints are universal
(`training.checkpoint`): kill a run, start the same command with another N or layout, and it goes on
with exactly the next samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.checkpoint import CheckpointManager, TrainState
from training.sampler import GlobalOrder
from training.tokens import TokenDataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="pre-tokenized data folder (training.tokens)")
    p.add_argument(
        "--out", required=True, help="run folder: checkpoints, metrics.jsonl, model_init"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--base", help="initialize from a transformers causal-LM folder or hub id")
    src.add_argument("--config", help="train from scratch: a size from training.modeling.SIZES")
    p.add_argument("--tokenizer", help="tokenizer folder (with --config)")
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--global-batch-size", type=int, default=32, help="examples per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=8, help="examples per forward pass")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--eval-every", type=int, default=0, help="validation loss every K steps (0: at the end)"
    )
    p.add_argument("--eval-examples", type=int, default=512)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU runs)")
    p.add_argument(
        "--stop-after-seconds",
        type=float,
        default=0,
        help="stop cleanly (with a checkpoint) after this long",
    )
    return p.parse_args(argv)


# --- process group --------------------------------------------------------------------------------


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    span = max(1, args.max_steps - args.warmup_steps)
    progress = min(1.0, (step - args.warmup_steps) / span)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))


# --- model ----------------------------------------------------------------------------------------


def prepare_init(args: argparse.Namespace, out: Path, rank: int) -> Path:
    """``OUT/model_init``: the starting weights, config and tokenizer, written once by rank 0."""
    init = out / "model_init"
    if rank == 0 and not (init / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if args.base:
            model = AutoModelForCausalLM.from_pretrained(args.base)
            tokenizer = AutoTokenizer.from_pretrained(args.base)
        else:
            if not args.config or not args.tokenizer:
                raise SystemExit(
                    "training.train: give --base MODEL, or --config SIZE with --tokenizer DIR"
                )
            from training.modeling import new_model

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            model = new_model(tokenizer, args.config, seed=args.seed)
        tmp = out / "model_init.tmp"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        budget = Path(args.data) / "train.meta.json"
        if budget.exists():
            (tmp / "cmc.json").write_text(
                json.dumps({"budget": json.loads(budget.read_text())["budget"]})
            )
        os.replace(tmp, init)
    if dist.is_initialized():
        dist.barrier()
    return init


def wrap_model(
    model: torch.nn.Module, args: argparse.Namespace, world: int, device: torch.device, bf16: bool
):
    if args.fsdp and world > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else None
        )
        kw = {"mp_policy": mp} if mp else {}
        for layer in model.model.layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        return model, "fsdp2"
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids), "ddp"
    return model, "single"


def no_sync(model: torch.nn.Module, layout: str, sync: bool):
    """Skip the gradient reduction of a micro-batch that is not the step's last."""
    if layout == "fsdp2":
        model.set_requires_gradient_sync(sync)
    elif layout == "ddp" and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def build(
    args: argparse.Namespace, out: Path, rank: int, world: int, device: torch.device, bf16: bool
):
    """Model (from ``OUT/model_init``), its parallel wrapper, and the optimizer."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    init = prepare_init(args, out, rank)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32).to(device)
    model.config.use_cache = False
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    model, layout = wrap_model(model, args, world, device, bf16)
    fused = device.type == "cuda"
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )
    return model, layout, optimizer, init, pad_id


def make_batch(data: TokenDataset, examples: list[int], pad_id: int, device: torch.device):
    """Right-padded ids, the positions whose next token is a message token, and those targets."""
    items = [data[i] for i in examples]
    width = max(len(ids) for ids, _ in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    for row, (tok, _) in enumerate(items):
        ids[row, : len(tok)] = tok
    spans = [np.arange(start - 1, len(tok) - 1) for tok, start in items]
    positions = np.unique(np.concatenate(spans)) if spans else np.zeros(0, dtype=np.int64)
    targets = np.full((len(items), len(positions)), -100, dtype=np.int64)
    for row, ((tok, start), span) in enumerate(zip(items, spans)):
        targets[row, np.searchsorted(positions, span)] = tok[start:]
    ntok = sum(len(t) for t, _ in items)
    return (
        torch.from_numpy(ids).to(device),
        torch.from_numpy(positions).to(device),
        torch.from_numpy(targets).to(device),
        ntok,
    )


def loss_tokens(data: TokenDataset, examples) -> int:
    idx = data.index[np.asarray(examples, dtype=np.int64)]
    return int((idx[:, 1] - idx[:, 2]).sum())


def forward_loss_sum(model, batch, bf16: bool, device: torch.device) -> torch.Tensor:
    ids, positions, targets, _ = batch
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=ids, logits_to_keep=positions, use_cache=False).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


@torch.no_grad()
def evaluate(
    model,
    data: TokenDataset,
    count: int,
    rank: int,
    world: int,
    mb: int,
    pad: int,
    bf16: bool,
    device,
):
    model.eval()
    examples = list(range(min(count, len(data))))[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for k in range(0, len(examples), mb):
        chunk = examples[k : k + mb]
        batch = make_batch(data, chunk, pad, device)
        total[0] += forward_loss_sum(model, batch, bf16, device).double()
        total[1] += float((batch[2] != -100).sum())
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train()
    return float(total[0] / max(1.0, float(total[1])))


# --- loop -----------------------------------------------------------------------------------------


class StopFlag:
    """SIGINT/SIGTERM ask for a clean stop at the next step boundary (agreed by all ranks)."""

    def __init__(self, deadline: float = 0.0):
        self.requested = False
        self.signalled = False
        self.deadline = deadline
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.requested = self.signalled = True

    def agreed(self, device: torch.device) -> bool:
        if self.deadline and time.time() > self.deadline:
            self.requested = True
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (they will be produced again, identically)."""
    if not path.exists():
        return
    kept = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    path.write_text("".join(ln + "\n" for ln in kept))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if args.global_batch_size % world:
        raise SystemExit(
            f"--global-batch-size {args.global_batch_size} must be divisible by {world} processes"
        )
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    torch.manual_seed(args.seed)

    model, layout, optimizer, init, pad_id = build(args, out, rank, world, device, bf16)
    forward_model = torch.compile(model) if args.compile else model

    data = TokenDataset(args.data, "train")
    val = (
        TokenDataset(args.data, "validation")
        if (Path(args.data) / "validation.index.npy").exists()
        else None
    )
    lengths = data.lengths()
    order = GlobalOrder(len(data), args.seed)
    per_rank = args.global_batch_size // world
    n_micro = max(1, -(-per_rank // args.micro_batch_size))

    state = TrainState(model, optimizer)
    ckpt = CheckpointManager(out / "checkpoints", keep=args.keep, async_save=args.async_save)
    resumed = ckpt.load_latest(state)
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        trim_metrics(metrics_path, state.step)
        if resumed:
            print(
                f"resumed from {resumed} (step {state.step}, {state.consumed} samples) at {world} process(es), {layout}",
                file=sys.stderr,
            )
    run_info = {
        "data": str(args.data),
        "global_batch_size": args.global_batch_size,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "lr": args.lr,
        "model_init": str(init),
    }

    def save(reason: str) -> None:
        info = {
            **run_info,
            "step": state.step,
            "consumed": state.consumed,
            "world_size": world,
            "layout": layout,
            "reason": reason,
        }
        try:
            ckpt.save(state, info)
        except OSError:
            pass  # reported by the manager; the previous checkpoint stays valid

    stop = StopFlag(time.time() + args.stop_after_seconds if args.stop_after_seconds else 0.0)
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(
            total=args.max_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True
        )
    last_saved = state.step
    tok_window, time_window = 0, time.perf_counter()
    model.train()
    while state.step < args.max_steps:
        step = state.step
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        all_examples = [
            order.example(g)
            for g in range(step * args.global_batch_size, (step + 1) * args.global_batch_size)
        ]
        total_tokens = loss_tokens(data, all_examples)
        mine = all_examples[rank::world]
        groups = [
            g.tolist()
            for g in np.array_split(
                np.asarray(sorted(mine, key=lambda i: (int(lengths[i]), i))), n_micro
            )
        ]
        local = torch.zeros((), dtype=torch.float64, device=device)
        for k, group in enumerate(groups):
            sync = k == len(groups) - 1
            with no_sync(model, layout, sync):
                batch = make_batch(data, group, pad_id, device)
                loss_sum = forward_loss_sum(forward_model, batch, bf16, device)
                (loss_sum * (world / total_tokens)).backward()
            local += loss_sum.detach().double()
            tok_window += batch[3]
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.all_reduce(local)
        loss = float(local) / total_tokens
        state.step += 1
        state.consumed += args.global_batch_size

        record = {"step": state.step, "loss": loss, "lr": lr, "samples": state.consumed}
        if args.eval_every and val is not None and state.step % args.eval_every == 0:
            record["val_loss"] = evaluate(
                model,
                val,
                args.eval_examples,
                rank,
                world,
                args.micro_batch_size,
                pad_id,
                bf16,
                device,
            )
        if rank == 0 and state.step % args.log_every == 0:
            elapsed = time.perf_counter() - time_window
            tok_total = tok_window * world
            record["tokens_per_s"] = round(tok_total / max(elapsed, 1e-9), 1)
            tok_window, time_window = 0, time.perf_counter()
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if progress is not None:
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if progress is not None:
            progress.update(1)
        stopping = stop.agreed(device)
        if state.step % args.save_every == 0 or state.step == args.max_steps or stopping:
            save("stop" if stopping else "periodic")
            last_saved = state.step
        if stopping:
            if rank == 0:
                print(
                    f"stopped at step {state.step}; run the same command to resume", file=sys.stderr
                )
            break
    if state.step != last_saved:
        save("end")
    ckpt.close()
    if val is not None and not stop.signalled:
        val_loss = evaluate(
            model, val, args.eval_examples, rank, world, args.micro_batch_size, pad_id, bf16, device
        )
        if rank == 0:
            (out / "val_loss.json").write_text(
                json.dumps({"step": state.step, "val_loss": val_loss}) + "\n"
            )
    if progress is not None:
        progress.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter teardown: freeing DDP's reducer there joins gloo threads that wait
    # for the GIL (a deadlock seen here about once in a few dozen runs). Everything is saved by now.
    os._exit(code)
