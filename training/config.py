"""`TrainConfig`: the one description of a training run.

It feeds the trainer's command line (`parser`, `to_argv`), `cmc train`'s options (`click_options`),
and is saved whole in every checkpoint (``trainer.json``) and compared on resume: a flag that would
change which samples come next (`ORDER_FIELDS`) is refused with its name.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any


def _opt(help: str, **extra: Any) -> dict:
    return {"help": help, **extra}


@dataclass
class TrainConfig:
    data: str = field(default="", metadata=_opt("pre-tokenized data folder (cmc.training.tokens)"))
    out: str = field(
        default="", metadata=_opt("run folder: checkpoints, metrics.jsonl, model_init")
    )
    base: str | None = field(
        default=None, metadata=_opt("initialize from a transformers causal-LM folder or hub id")
    )
    config: str | None = field(
        default=None, metadata=_opt("train from scratch: a size of cmc.training.modeling.SIZES")
    )
    tokenizer: str | None = field(default=None, metadata=_opt("tokenizer folder (with --config)"))
    max_steps: int = field(default=1000, metadata=_opt("optimizer steps in all"))
    global_batch_size: int = field(default=32, metadata=_opt("examples per optimizer step"))
    micro_batch_size: int = field(default=8, metadata=_opt("examples per forward pass"))
    lr: float = field(default=1e-3, metadata=_opt("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_opt("final LR as a share of the peak"))
    warmup_steps: int = field(default=100, metadata=_opt("steps of linear warmup"))
    weight_decay: float = field(default=0.1, metadata=_opt("AdamW weight decay"))
    grad_clip: float = field(default=1.0, metadata=_opt("gradient norm clip (0: none)"))
    train_layers: int = field(
        default=0, metadata=_opt("train only the last N layers and the head (0: all)")
    )
    lora_rank: int = field(
        default=0,
        metadata=_opt("train LoRA adapters of this rank on every projection (peft), not weights"),
    )
    context_loss_weight: float = field(
        default=0.0,
        metadata=_opt("weight of the loss on the diff and history tokens (0: message tokens only)"),
    )
    seed: int = field(default=42, metadata=_opt("seed of the initialization and sample order"))
    save_every: int = field(default=500, metadata=_opt("checkpoint every K steps"))
    keep: int = field(default=2, metadata=_opt("checkpoints kept (at least 2)"))
    async_save: bool = field(default=False, metadata=_opt("write checkpoints in the background"))
    fsdp: bool = field(default=False, metadata=_opt("shard with FSDP2 instead of DDP"))
    precision: str = field(
        default="auto",
        metadata=_opt("auto: bf16 on GPU, fp32 on CPU", choices=("auto", "fp32", "bf16")),
    )
    eval_every: int = field(
        default=0, metadata=_opt("validation loss every K steps (0: at the end)")
    )
    eval_examples: int = field(default=512, metadata=_opt("validation examples scored"))
    log_every: int = field(default=1, metadata=_opt("a metrics line every K steps"))
    no_progress: bool = field(default=False, metadata=_opt("no progress bar"))
    compile: bool = field(default=False, metadata=_opt("torch.compile the model (GPU runs)"))
    stop_after_seconds: float = field(
        default=0.0, metadata=_opt("stop cleanly (with a checkpoint) after this long")
    )

    # --- the trainer's command line ---------------------------------------------------------

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog="cmc.training.train", description="Train or fine-tune a cmc model (torchrun)."
        )
        cls.add_arguments(p, {f.name: f.default for f in fields(cls)})
        return p

    @classmethod
    def add_arguments(cls, parser: Any, names: dict[str, Any]) -> None:
        """argparse flags for the named fields (``{name: default}``), with the trainer's help: how
        a recipe offers the trainer's flags without declaring them again."""
        by_name = {f.name: f for f in fields(cls)}
        for name, default in names.items():
            f = by_name[name]
            flag = "--" + name.replace("_", "-")
            meta = dict(f.metadata)
            if f.type in ("bool", bool):
                parser.add_argument(flag, action="store_true", help=meta["help"])
            else:
                kind = {"int": int, "float": float}.get(str(f.type), str)
                parser.add_argument(flag, type=kind, default=default, **meta)

    @classmethod
    def pick(cls, args: Any, names: Any) -> dict[str, Any]:
        """The values of the named fields in parsed ``args`` (for `TrainConfig(**…)`)."""
        return {name: getattr(args, name) for name in names}

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> TrainConfig:
        cfg = cls(**vars(cls.parser().parse_args(argv)))
        if not cfg.data or not cfg.out:
            cls.parser().error("--data and --out are required")
        if cfg.base and cfg.config:
            cls.parser().error("give --base or --config, not both")
        return cfg

    def to_argv(self) -> list[str]:
        """Flags that rebuild this config through `from_argv` (only those off their default)."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            argv += [flag] if isinstance(value, bool) else [flag, str(value)]
        return argv

    # --- saved in checkpoints ---------------------------------------------------------------

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# Fields whose change would change the samples that come next after a resume.
ORDER_FIELDS = ("seed",)


def resume_conflicts(
    saved: dict, now: TrainConfig, saved_examples: int | None, examples: int
) -> list[str]:
    """Why resuming ``saved`` (a checkpoint's ``config``) as ``now`` would break the sample order."""
    problems = []
    for name in ORDER_FIELDS:
        if name in saved and saved[name] != getattr(now, name):
            flag = "--" + name.replace("_", "-")
            problems.append(
                f"{flag} was {saved[name]!r} when the checkpoints were made, now {getattr(now, name)!r}"
            )
    if saved_examples is not None and saved_examples != examples:
        problems.append(
            f"the training data had {saved_examples} examples when the checkpoints were made, now {examples}"
        )
    return problems


def click_options(names: dict[str, Any]):
    """Click options for the named `TrainConfig` fields (``{name: default}``), with their help."""
    import click

    by_name = {f.name: f for f in fields(TrainConfig)}

    def decorate(fn):
        for name, default in reversed(list(names.items())):
            f = by_name[name]
            flag = "--" + name.replace("_", "-")
            if f.type in ("bool", bool):
                fn = click.option(flag, is_flag=True, help=f.metadata["help"])(fn)
            else:
                low = 0 if name in ("train_layers", "lora_rank") else 1
                kind = {"int": click.IntRange(low) if name != "seed" else int, "float": float}.get(
                    str(f.type), str
                )
                fn = click.option(
                    flag, default=default, show_default=True, type=kind, help=f.metadata["help"]
                )(fn)
        return fn

    return decorate
