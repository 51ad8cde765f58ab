"""`cmc data`, `cmc train`, `cmc eval` and `cmc checkpoint`: the training side's commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cmc import CmcError


@click.group()
def data() -> None:
    """Mine git repositories and process commits into datasets (CommitChronicle rules)."""


@data.command("mine")
@click.argument("repos", nargs=-1, required=True)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder for parquet shards."
)
@click.option(
    "--since", default="2017-01-01", show_default=True, help="Only commits since this date."
)
@click.option(
    "--max-commits",
    type=int,
    default=None,
    help="At most this many (most recent) commits per repository.",
)
def data_mine(repos, out, since, max_commits):
    """Mine git repositories into raw CommitChronicle rows (one shard folder per repository)."""
    mine_all(repos, out, since, max_commits)


def mine_all(repos, out, since, max_commits) -> int:
    from training.mine import mine_repository

    mined, failed = 0, 0
    for repo in repos:
        try:
            stats = mine_repository(repo, out, since=since, max_commits=max_commits)
        except CmcError as exc:
            click.echo(f"cmc: error: {exc}", err=True)
            failed += 1
            continue
        click.echo(stats.line(), err=True)
        mined += stats.commits
    if failed == len(repos):
        raise CmcError("nothing was mined")
    return mined


@data.command("build")
@click.argument("repos", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--since", default="2017-01-01", show_default=True)
@click.option("--max-commits", type=int, default=None)
@click.option("--split-by", type=click.Choice(["repo", "time"]), default=None)
@click.option("--seed", default=42, show_default=True)
def data_build(repos, out, since, max_commits, split_by, seed):
    """Mine REPOS, then process them: `cmc data mine` + `cmc data process` in one go."""
    from training.process import load_raw, process_rows, save_processed

    raw = Path(out) / "raw"
    mine_all(repos, raw, since, max_commits)
    per_split, funnel = process_rows(load_raw([str(raw)]), split_by=split_by, seed=seed)
    click.echo(funnel.table(save_processed(per_split, funnel, out)))


@data.command("process")
@click.argument("raw", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--split-by",
    type=click.Choice(["repo", "time"]),
    default=None,
    help="Default: given splits, else time for one repository, repo for several.",
)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--outliers",
    type=click.Choice(["published", "percentiles"]),
    default="published",
    show_default=True,
)
def data_process(raw, out, split_by, seed, outliers):
    """Filter, clean, deduplicate and split RAW rows (parquet files/folders, a saved dataset, or a hub id)."""
    from training.process import load_raw, process_rows, save_processed

    rows = load_raw(raw)
    if not rows:
        raise CmcError("no rows to process")
    per_split, funnel = process_rows(rows, split_by=split_by, seed=seed, outliers=outliers)
    final = save_processed(per_split, funnel, out)
    click.echo(funnel.table(final))


@data.command("stats")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def data_stats(folder):
    """Sizes, languages and length quantiles of a processed dataset."""
    from training.stats import dataset_stats

    click.echo(dataset_stats(folder))


@click.group()
def checkpoint() -> None:
    """Inspect and export training checkpoints."""


@checkpoint.command("info")
@click.argument("path", type=click.Path(exists=True))
def checkpoint_info(path):
    """Step, world size, layout, parameters and size of the newest valid checkpoint under PATH."""
    from training.checkpoint import checkpoint_info as info

    try:
        click.echo(json.dumps(info(path), indent=2))
    except FileNotFoundError as exc:
        raise CmcError(str(exc)) from exc


@checkpoint.command("export")
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
)
def checkpoint_export(path, out, dtype):
    """Write a save_pretrained folder (safetensors + tokenizer) that `cmc complete` loads."""
    from training.export import export_checkpoint

    try:
        folder = export_checkpoint(path, out, dtype=dtype)
    except FileNotFoundError as exc:
        raise CmcError(str(exc)) from exc
    click.echo(f"exported → {folder}", err=True)


@click.command("eval")
@click.option(
    "--data", required=True, help="Processed dataset folder (cmc data process) or a parquet file."
)
@click.option(
    "--model",
    required=True,
    help="Model folder / hub id, `default`, or `nngen` (retrieval baseline).",
)
@click.option("--split", default="test", show_default=True)
@click.option(
    "--train",
    "train_data",
    default=None,
    help="Training data for nngen (default: --data's train split).",
)
@click.option("--context-ratios", default="0,0.25,0.5", show_default=True)
@click.option(
    "--history/--no-history",
    "history",
    default=None,
    help="Only with / only without history (default: both).",
)
@click.option(
    "--limit", type=int, default=None, help="Evaluate a fixed random sample of this many commits."
)
@click.option("--beams", default=5, show_default=True)
@click.option("--max-new-tokens", default=15, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def evaluate(
    data, model, split, train_data, context_ratios, history, limit, beams, max_new_tokens, out
):
    """Score completions by the CommitChronicle protocol; writes metrics.json, predictions, a plot."""
    from training.evaluate import run_eval, table

    try:
        ratios = [float(x) for x in context_ratios.split(",") if x.strip()]
    except ValueError as exc:
        raise CmcError(f"--context-ratios: {exc}") from exc
    histories = [True, False] if history is None else [history]
    settings = None
    if model != "nngen":
        from cmc.complete import DecodeSettings
        from cmc.model import BUNDLED_MODEL

        settings = DecodeSettings(num_beams=beams, max_new_tokens=max_new_tokens)
        model = str(BUNDLED_MODEL) if model == "default" else model
    results = run_eval(
        data, model, ratios, histories, limit, out, split=split, train=train_data, settings=settings
    )
    click.echo(table(results))
    click.echo(f"→ {out}/metrics.json, predictions.jsonl, metrics.png", err=True)


@click.command("train")
@click.option("--repo", default=None, help="Repository to learn from (default: the current one).")
@click.option(
    "--data",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="A processed dataset instead of --repo.",
)
@click.option(
    "--base", default=None, help="Model to fine-tune (default: the one cmc uses here now)."
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Run folder (default: $GIT_DIR/cmc/train).",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes (torchrun).",
)
@click.option("--max-steps", default=200, show_default=True, type=click.IntRange(1))
@click.option("--save-every", default=50, show_default=True, type=click.IntRange(1))
@click.option("--global-batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--micro-batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--fsdp", is_flag=True, help="Shard with FSDP2 instead of DDP.")
@click.option(
    "--eval-limit",
    default=200,
    show_default=True,
    help="Validation commits scored before and after.",
)
@click.option("--no-install", is_flag=True, help="Do not make the result this repository's model.")
def train(
    repo,
    data,
    base,
    out,
    nproc,
    max_steps,
    save_every,
    global_batch_size,
    micro_batch_size,
    lr,
    seed,
    fsdp,
    eval_limit,
    no_install,
):
    """Personalize the model on this repository's history (resumable: run it again to continue)."""
    from training.personalize import TrainOptions, personalize, report

    if global_batch_size % nproc:
        raise CmcError(
            f"--global-batch-size {global_batch_size} must be divisible by --nproc {nproc}"
        )
    opts = TrainOptions(
        repo=repo, data=data, base=base, out=out, nproc=nproc, max_steps=max_steps, save_every=save_every,
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, lr=lr, seed=seed, fsdp=fsdp,
        eval_limit=eval_limit, install=not no_install,
    )  # fmt: skip
    click.echo(report(personalize(opts)))


def register(main: click.Group) -> None:
    main.add_command(train)
    main.add_command(data)
    main.add_command(checkpoint)
    main.add_command(evaluate)


if __name__ == "__main__":
    sys.exit(0)
