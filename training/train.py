"""The trainer: ``torchrun --nproc-per-node N -m cmc.training.train --data DIR --out DIR ...``.

One command for one CPU, one GPU or many: gloo on CPU, NCCL on GPU; DDP by default, FSDP2
(`fully_shard`) with ``--fsdp``; bf16 autocast on GPUs; gradient accumulation; warmup + cosine LR.

The math of a step does not depend on the number of processes: a step trains on the next B global samples
``[consumed, consumed+B)`` (`cmc.training.sampler`), the loss is the sum of message-token losses over the whole
global batch (plus ``--context-loss-weight`` times the diff and history tokens' losses) divided by its
message-token count, and each process takes B/N samples in micro-batches
of similar length (padding to the right, so causal attention never sees padding: no mask needed).
Only the positions that are scored go through the LM head. Checkpoints are universal
(`cmc.training.checkpoint`): kill a run, start the same command with another N or layout, and it goes on
with exactly the next samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cmc.training.checkpoint import (
    CheckpointManager,
    TrainState,
    UnloadableCheckpoints,
    out_of_space,
)
from cmc.training.config import TrainConfig, resume_conflicts
from cmc.training.sampler import GlobalOrder
from cmc.training.tokens import TokenDataset

# --- process group --------------------------------------------------------------------------------


class Batch(NamedTuple):
    ids: torch.Tensor  # (B, T) right-padded token ids
    positions: torch.Tensor  # (P,) the positions whose next token is scored
    targets: torch.Tensor  # (B, P) next tokens, -100 where nothing is scored
    message: torch.Tensor  # (B, P) True where the target is a message token
    weights: torch.Tensor  # (B, P) the context weight where the target is a context token, else 0
    tokens: int  # real tokens in the batch


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


# --- model ----------------------------------------------------------------------------------------


def prepare_init(cfg: TrainConfig, out: Path, rank: int) -> Path:
    """``OUT/model_init``: the starting weights, config and tokenizer, written once by rank 0."""
    init = out / "model_init"
    if rank == 0 and not (init / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.base:
            model = AutoModelForCausalLM.from_pretrained(cfg.base)
            tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        else:
            if not cfg.config or not cfg.tokenizer:
                raise SystemExit(
                    "cmc.training.train: give --base MODEL, or --config SIZE with --tokenizer DIR"
                )
            from cmc.training.modeling import new_model

            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
            model = new_model(tokenizer, cfg.config, seed=cfg.seed)
        tmp = out / "model_init.tmp"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from cmc.model import write_model_meta
        from cmc.prompt import Budget

        # The budget the data was cut with is the model's from now on (exports carry it along).
        data_meta = json.loads((Path(cfg.data) / "train.meta.json").read_text())
        from cmc.model import read_model_meta

        # a pretrained base is named in every model made from it (`cmc hook status` says so)
        base = read_model_meta(cfg.base).get("base") if cfg.base else None
        write_model_meta(tmp, Budget(**data_meta["budget"]), **({"base": base} if base else {}))
        if cfg.base:
            from cmc.base import carry_notice

            carry_notice(cfg.base, tmp)  # a licensed base's LICENSE and NOTICE go where it goes
        os.replace(tmp, init)
    if dist.is_initialized():
        dist.barrier()
    return init


def wrap_model(
    model: torch.nn.Module, cfg: TrainConfig, world: int, device: torch.device, bf16: bool
):
    if cfg.fsdp and world > 1:
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


def build(cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device, bf16: bool):
    """Model (from ``OUT/model_init``), its parallel wrapper, and the optimizer."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    init = prepare_init(cfg, out, rank)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32).to(device)
    model.config.use_cache = False
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    if cfg.train_layers:
        freeze_all_but_last(model, cfg.train_layers)
    if cfg.lora_rank:
        if cfg.fsdp or cfg.train_layers:
            raise SystemExit(
                "cmc.training.train: --lora-rank trains adapters alone (no --fsdp, --train-layers)"
            )
        model = with_lora(model, cfg.lora_rank)
    model, layout = wrap_model(model, cfg, world, device, bf16)
    fused = device.type == "cuda"
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2]
    no_decay = [p for n, p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )
    return model, layout, optimizer, init, pad_id


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def with_lora(model, rank: int):
    """``model`` with LoRA adapters of ``rank`` on every projection (peft), only they trained:
    a per-repository delta of a few MB instead of the model (alpha 2·rank, no dropout, so the
    same steps give the same adapters)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SystemExit("cmc.training.train: --lora-rank needs peft: pip install peft") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS,
                        bias="none", task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, config)


def freeze_all_but_last(model, layers: int) -> None:
    """Train only the last ``layers`` decoder layers, the final norm and the output head (a
    cheaper fine-tune: the backward pass stops there). The input embedding stays frozen unless the
    head shares it."""
    blocks = model.model.layers
    keep = {id(p) for block in blocks[-layers:] for p in block.parameters()}
    keep |= {id(p) for p in model.model.norm.parameters()}
    keep |= {id(p) for p in model.lm_head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def make_batch(
    data: TokenDataset,
    examples: list[int],
    pad_id: int,
    device: torch.device,
    context_weight: float = 0.0,
):
    """Right-padded ids, the positions whose next token is scored, their targets and weights.

    With ``context_weight`` 0 only the positions that predict message tokens are kept (weight 1);
    otherwise every position that predicts a real token is, the context's (diff, history) with
    weight ``context_weight``.
    """
    items = [data[i] for i in examples]
    width = max(len(ids) for ids, _ in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    for row, (tok, _) in enumerate(items):
        ids[row, : len(tok)] = tok
    first = [start - 1 if context_weight == 0 else 0 for _, start in items]
    spans = [np.arange(lo, len(tok) - 1) for (tok, _), lo in zip(items, first)]
    positions = np.unique(np.concatenate(spans)) if spans else np.zeros(0, dtype=np.int64)
    targets = np.full((len(items), len(positions)), -100, dtype=np.int64)
    message = np.zeros((len(items), len(positions)), dtype=bool)
    weights = np.zeros((len(items), len(positions)), dtype=np.float32)
    for row, ((tok, start), span, lo) in enumerate(zip(items, spans, first)):
        cols = np.searchsorted(positions, span)
        targets[row, cols] = tok[lo + 1 :]
        is_message = span >= start - 1
        message[row, cols] = is_message
        weights[row, cols] = np.where(is_message, 0.0, context_weight)
    ntok = sum(len(t) for t, _ in items)
    return Batch(
        torch.from_numpy(ids).to(device),
        torch.from_numpy(positions).to(device),
        torch.from_numpy(targets).to(device),
        torch.from_numpy(message).to(device),
        torch.from_numpy(weights).to(device),
        ntok,
    )


def loss_tokens(data: TokenDataset, examples) -> int:
    idx = data.index[np.asarray(examples, dtype=np.int64)]
    return int((idx[:, 1] - idx[:, 2]).sum())


def forward_loss_sums(model, batch: Batch, bf16: bool, device: torch.device):
    """Summed cross-entropy of the message tokens, and the weighted sum of the context tokens'."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=batch.ids, logits_to_keep=batch.positions, use_cache=False).logits
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="none"
    ).reshape(batch.targets.shape)
    return (losses * batch.message).sum(), (losses * batch.weights).sum()


def forward_loss_sum(model, batch: Batch, bf16: bool, device: torch.device) -> torch.Tensor:
    """Summed cross-entropy of the message tokens (what validation and the metrics report)."""
    return forward_loss_sums(model, batch, bf16, device)[0]


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
        total[1] += float(batch.message.sum())
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train()
    return float(total[0] / max(1.0, float(total[1])))


# --- loop -----------------------------------------------------------------------------------------


class Throughput:
    """Tokens per second over the steps since the last report (all of them, not the last one's)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> float:
        now = self.clock()
        rate = self.tokens / max(now - self.start, 1e-9)
        self.start, self.tokens = now, 0
        return rate


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


class DiskFull(Exception):
    """A checkpoint could not be written for lack of space: training on would only lose work."""


class Trainer:
    """One training run: `build` (in __init__), `step`, `validate`, `save`; `run` loops them."""

    def __init__(self, cfg: TrainConfig):
        from cmc.spawn import die_with_parent

        die_with_parent()  # SIGTERM when torchrun goes: a clean stop, not an orphan training on
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed()
        self.out = Path(cfg.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.global_batch_size % self.world:
            raise SystemExit(
                f"--global-batch-size {cfg.global_batch_size} must be divisible by {self.world} processes"
            )
        self.bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda"
        )
        torch.manual_seed(cfg.seed)
        self.model, self.layout, self.optimizer, self.init, self.pad_id = build(
            cfg, self.out, self.rank, self.world, self.device, self.bf16
        )
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        self.data = TokenDataset(cfg.data, "train")
        has_val = (Path(cfg.data) / "validation.index.npy").exists()
        self.val = TokenDataset(cfg.data, "validation") if has_val else None
        self.lengths = self.data.lengths()
        self.order = GlobalOrder(len(self.data), cfg.seed)
        self.n_micro = max(1, -(-(cfg.global_batch_size // self.world) // cfg.micro_batch_size))
        self.state = TrainState(self.model, self.optimizer)
        self.ckpt = CheckpointManager(
            self.out / "checkpoints", keep=cfg.keep, async_save=cfg.async_save
        )
        self.metrics_path = self.out / "metrics.jsonl"
        self._resume()

    def _resume(self) -> None:
        try:
            resumed = self.ckpt.load_latest(self.state)
        except UnloadableCheckpoints as exc:
            raise SystemExit(f"cmc.training.train: {exc}") from exc
        if resumed is None:
            return
        saved = json.loads((resumed / "trainer.json").read_text())
        problems = resume_conflicts(
            saved.get("config", {}), self.cfg, saved.get("train_examples"), len(self.data)
        )
        if problems:
            raise SystemExit(
                f"cannot resume {resumed}: "
                + "; ".join(problems)
                + " (use another --out to start over)"
            )
        if self.rank == 0:
            trim_metrics(self.metrics_path, self.state.step)
            print(
                f"resumed from {resumed} (step {self.state.step}, {self.state.consumed} samples) "
                f"at {self.world} process(es), {self.layout}",
                file=sys.stderr,
            )

    def step(self) -> dict:
        """One optimizer step on the next ``global_batch_size`` samples; its metrics record."""
        cfg, state = self.cfg, self.state
        lr = lr_at(state.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The sample order is a function of the global sample index: resume at any world size or
        # batch size continues with exactly the next samples.
        start = state.consumed
        all_examples = [self.order.example(g) for g in range(start, start + cfg.global_batch_size)]
        total_tokens = loss_tokens(self.data, all_examples)
        mine = all_examples[self.rank :: self.world]
        by_length = sorted(mine, key=lambda i: (int(self.lengths[i]), i))
        groups = [g.tolist() for g in np.array_split(np.asarray(by_length), self.n_micro)]
        local = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        for k, group in enumerate(groups):
            with no_sync(self.model, self.layout, k == len(groups) - 1):
                batch = make_batch(self.data, group, self.pad_id, self.device,
                                   cfg.context_loss_weight)  # fmt: skip
                loss_sum, context_sum = forward_loss_sums(
                    self.forward_model, batch, self.bf16, self.device
                )
                ((loss_sum + context_sum) * (self.world / total_tokens)).backward()
            local += loss_sum.detach().double()
            tokens += batch.tokens
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.all_reduce(local)
        state.step += 1
        state.consumed += cfg.global_batch_size
        record = {"step": state.step, "loss": float(local) / total_tokens, "lr": lr,
                  "samples": state.consumed, "tokens": tokens * self.world}  # fmt: skip
        if cfg.eval_every and self.val is not None and state.step % cfg.eval_every == 0:
            record["val_loss"] = self.validate()
        return record

    def validate(self) -> float:
        cfg = self.cfg
        return evaluate(self.model, self.val, cfg.eval_examples, self.rank, self.world,
                        cfg.micro_batch_size, self.pad_id, self.bf16, self.device)  # fmt: skip

    def save(self, reason: str) -> None:
        info = {
            "step": self.state.step,
            "consumed": self.state.consumed,
            "world_size": self.world,
            "layout": self.layout,
            "reason": reason,
            "model_init": str(self.init),
            "train_examples": len(self.data),
            "config": self.cfg.to_json(),
        }
        try:
            self.ckpt.save(self.state, info)
        except OSError as exc:  # reported by the manager; the previous checkpoint stays valid
            if out_of_space(exc):
                raise DiskFull from exc

    def run(self) -> int:
        cfg, state, rank = self.cfg, self.state, self.rank
        stop = StopFlag(time.time() + cfg.stop_after_seconds if cfg.stop_after_seconds else 0.0)
        progress = None
        if rank == 0 and not cfg.no_progress:
            from tqdm import tqdm

            progress = tqdm(total=cfg.max_steps, initial=state.step, desc="train", unit="step",
                            dynamic_ncols=True)  # fmt: skip
        last_saved = state.step
        rate = Throughput()
        self.model.train()
        while state.step < cfg.max_steps:
            record = self.step()
            rate.add(record.pop("tokens"))
            if rank == 0 and state.step % cfg.log_every == 0:
                record["tokens_per_s"] = round(rate.take(), 1)
                with self.metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}"
                    )
            if progress is not None:
                progress.update(1)
            stopping = stop.agreed(self.device)
            if state.step % cfg.save_every == 0 or state.step == cfg.max_steps or stopping:
                self.save("stop" if stopping else "periodic")
                last_saved = state.step
            if stopping:
                if rank == 0:
                    print(
                        f"stopped at step {state.step}; run the same command to resume",
                        file=sys.stderr,
                    )
                break
        if state.step != last_saved:
            self.save("end")
        self.ckpt.close()
        if self.val is not None and not stop.signalled:
            val_loss = self.validate()
            if rank == 0:
                (self.out / "val_loss.json").write_text(
                    json.dumps({"step": state.step, "val_loss": val_loss}) + "\n"
                )
        if progress is not None:
            progress.close()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return 0


_ALIVE: list[Trainer] = []  # see the end of this file


def main(argv: list[str] | None = None) -> int:
    trainer = Trainer(TrainConfig.from_argv(argv))
    # Kept referenced until os._exit: freeing it when main() returns would free DDP's reducer,
    # whose teardown is the deadlock the exit below avoids (seen hung at that return, too).
    _ALIVE.append(trainer)
    try:
        return trainer.run()
    except DiskFull:
        if trainer.rank == 0:
            print(
                f"no space left on device in {trainer.out}: stopped at step {trainer.state.step}; "
                "the previous checkpoint is kept: free space and run the same command to resume",
                file=sys.stderr,
            )
        return 28


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter teardown: freeing DDP's reducer there joins gloo threads that wait
    # for the GIL (a deadlock seen here about once in a few dozen runs). Everything is saved by now.
    os._exit(code)
