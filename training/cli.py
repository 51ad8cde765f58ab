"""`cmc data`, `cmc train`, `cmc eval` and `cmc checkpoint`: the training side's commands."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from cmc import CmcError
from cmc.training import require_train_extra
from cmc.training.config import TrainConfig, click_options


@click.group()
def data() -> None:
    """Mine git repositories and process commits into datasets (CommitChronicle rules)."""


@data.command("mine")
@click.argument("repos", nargs=-1)
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
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="A TSV of repositories (columns repo, and optionally language and license), "
                   "e.g. ../shared/data/more-repos.tsv; `repo` is a path or OWNER/NAME under --root.")  # fmt: skip
@click.option("--root", type=click.Path(file_okay=False),
              help="Where OWNER/NAME of --list are found: ROOT/OWNER+NAME[/repo] or ROOT/OWNER/NAME.")  # fmt: skip
@click.option("--workers", default=1, show_default=True, help="Repositories mined at once.")
@click.option("--redo", is_flag=True, help="Mine again repositories already mined completely.")
def data_mine(repos, out, since, max_commits, list_file, root, workers, redo):
    """Mine git repositories into raw CommitChronicle rows (one shard folder per repository).

    Resumable: a repository mined completely is skipped the next time (unless --redo)."""
    from cmc.training.mine import read_repo_list

    jobs = [{"path": r} for r in repos] + (read_repo_list(list_file, root) if list_file else [])
    if not jobs:
        raise CmcError("give repositories or --list FILE")
    mine_all(jobs, out, since, max_commits, workers, redo)


def mine_all(jobs, out, since, max_commits, workers: int = 1, redo: bool = False) -> int:
    """Mine each job (``path``, optional ``name``/``language``/``license_``); a summary at the end."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from cmc.training.mine import mine_job

    jobs = [j if isinstance(j, dict) else {"path": j} for j in jobs]
    results = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(mine_job, j, out, since, max_commits, redo, False) for j in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                click.echo(results[-1]["line"], err=True)
    else:
        for job in jobs:
            results.append(mine_job(job, out, since, max_commits, redo, True))
            click.echo(results[-1]["line"], err=True)
    mined = sum(r["commits"] for r in results if r["status"] == "mined")
    counts = {s: sum(r["status"] == s for r in results) for s in ("mined", "done before", "failed")}
    click.echo(f"{counts['mined']} mined ({mined:,} commits), {counts['done before']} already "
               f"mined, {counts['failed']} failed", err=True)  # fmt: skip
    if counts["failed"] == len(jobs):
        raise CmcError("nothing was mined")
    return mined


@data.command("build")
@click.argument("repos", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--since", default="2017-01-01", show_default=True, help="Only commits since this date."
)
@click.option(
    "--max-commits", type=int, default=None, help="At most this many commits per repository."
)
@click.option(
    "--split-by",
    type=click.Choice(["repo", "time"]),
    default=None,
    help="Default: time for one repository, repo for several.",
)
@click.option("--seed", default=42, show_default=True, help="Seed of the split and sampling.")
def data_build(repos, out, since, max_commits, split_by, seed):
    """Mine REPOS, then process them: `cmc data mine` + `cmc data process` in one go."""
    from cmc.training.process import load_raw, process_rows, save_processed

    raw = Path(out) / "raw"
    mine_all(list(repos), raw, since, max_commits)
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
@click.option("--seed", default=42, show_default=True, help="Seed of the split and sampling.")
@click.option(
    "--outliers",
    type=click.Choice(["published", "percentiles"]),
    default="published",
    show_default=True,
    help="Length limits: the paper's published ones, or this data's percentiles.",
)
def data_process(raw, out, split_by, seed, outliers):
    """Filter, clean, deduplicate and split RAW rows (parquet files/folders, a saved dataset, or a hub id)."""
    from cmc.training.process import load_raw, process_rows, save_processed

    rows = load_raw(raw)
    if not rows:
        raise CmcError("no rows to process")
    per_split, funnel = process_rows(rows, split_by=split_by, seed=seed, outliers=outliers)
    final = save_processed(per_split, funnel, out)
    click.echo(funnel.table(final))


@data.command("pack")
@click.argument("processed", type=click.Path(exists=True))
@click.option("--tokenizer", required=True,
              help="Model folder whose tokenizer and prompt budget (cmc.json) the packs are cut for.")  # fmt: skip
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder for the packs."
)
@click.option("--split", default="train", show_default=True, help="Which split to pack.")
@click.option("--name", default=None, help="Prefix of the packs' names (default: the split).")
@click.option("--max-mib", default=40.0, show_default=True, help="Largest size of one pack.")
@click.option("--file-history-tokens", type=int, default=None,
              help="Budget of the file-history section (default: the model's; 0: none).")  # fmt: skip
@click.option("--recall-tokens", type=int, default=None,
              help="Budget of the recall section: the repository memory's most alike commits' "
                   "messages (default: the model's; 0: none).")  # fmt: skip
@click.option("--limit", type=int, default=None, help="Pack a seeded sample of this many rows.")
@click.option("--seed", default=0, show_default=True, help="Seed of the shuffle and the sample.")
def data_pack(processed, tokenizer, out, split, name, max_mib, file_history_tokens, recall_tokens,
              limit, seed):  # fmt: skip
    """Tokenize a processed split into compact packs that travel to a GPU machine (`cmc data unpack`)."""
    from dataclasses import replace

    from cmc.model import read_budget
    from cmc.training.evaluate import load_split, sample_rows
    from cmc.training.pack import write_packs
    from cmc.training.process import add_file_history, add_recalled

    budget = read_budget(tokenizer)
    if file_history_tokens is not None:
        budget = replace(budget, file_history_tokens=file_history_tokens)
    if recall_tokens is not None:
        budget = replace(budget, recall_tokens=recall_tokens)
    rows = load_split(processed, split)
    if not rows:
        raise CmcError(f"{processed}: the {split} split is empty")
    if budget.file_history_tokens > 0 and any("file_history" not in r for r in rows):
        add_file_history(rows)  # processed before the section existed: rows are in date order
    if budget.recall_tokens > 0 and any("recalled" not in r for r in rows):
        add_recalled(rows)  # over the whole split, before sampling: every earlier row is memory
    rows = sample_rows(rows, limit, seed)
    written = write_packs(rows, tokenizer, out, name or split, budget, max_mib, seed,
                          source=f"{Path(processed).resolve().name}:{split}")  # fmt: skip
    examples = sum(w["examples"] for w in written)
    mib = sum(w["bytes"] for w in written) / 2**20
    click.echo(f"{len(written)} pack(s), {examples:,} examples, {mib:.1f} MiB: "
               f"{examples / mib:,.0f} examples/MiB")  # fmt: skip


@data.command("unpack")
@click.argument("packs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the trainer's data (SPLIT.tokens.u16, SPLIT.index.npy).")  # fmt: skip
@click.option("--split", default="train", show_default=True, help="Which split they become.")
def data_unpack(packs, out, split):
    """Assemble packs into the trainer's pre-tokenized data (no tokenizer needed)."""
    import time

    from cmc.training.pack import unpack

    started = time.perf_counter()
    meta = unpack(list(packs), out, split)
    click.echo(f"{meta['examples']:,} examples, {meta['tokens']:,} tokens from {len(packs)} "
               f"pack(s) in {time.perf_counter() - started:.1f}s → {out}")  # fmt: skip


@data.command("stats")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def data_stats(folder):
    """Sizes, languages and length quantiles of a processed dataset."""
    from cmc.training.stats import dataset_stats

    click.echo(dataset_stats(folder))


@click.group()
def checkpoint() -> None:
    """Inspect and export training checkpoints."""


@checkpoint.command("info")
@click.argument("path", type=click.Path(exists=True))
def checkpoint_info(path):
    """Step, world size, layout, parameters and size of the newest valid checkpoint under PATH."""
    from cmc.training.checkpoint import checkpoint_info as info

    try:
        click.echo(json.dumps(info(path), indent=2))
    except FileNotFoundError as exc:
        raise CmcError(str(exc)) from exc


@checkpoint.command("export")
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Model folder to write."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Weights' type in the exported folder.",
)
def checkpoint_export(path, out, dtype):
    """Write a save_pretrained folder (safetensors + tokenizer) that `cmc complete` loads."""
    from cmc.training.export import export_checkpoint

    try:
        folder = export_checkpoint(path, out, dtype=dtype)
    except FileNotFoundError as exc:
        raise CmcError(str(exc)) from exc
    click.echo(f"exported → {folder}", err=True)


@checkpoint.command("delta")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--base", "base", type=click.Path(exists=True, file_okay=False), default=None,
              help="The base's model folder (default: the installed base, `cmc base`).")  # fmt: skip
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Delta folder to write."
)
@click.option("--int4", "int4", multiple=True, metavar="TENSOR",
              help="A tensor kept in int4 rather than int8 (repeatable).")  # fmt: skip
def checkpoint_delta(model, base, out, int4):
    """Write what the exported MODEL changed from its pretrained base (`cmc.delta`): shipped in
    place of the model, which is built from base + delta on first use."""
    from cmc.delta import write_delta

    if base is None:
        from cmc.base import base_folder

        base = base_folder()
    stats = write_delta(base, model, out, low_bits=tuple(int4))
    click.echo(f"{stats['tensors']} tensors, {stats['values'] / 1e6:.1f}M values → "
               f"{stats['bytes'] / 2**20:.1f} MiB in {out} (largest error {stats['max_error']:.2g})",
               err=True)  # fmt: skip


@click.command("eval")
@click.option(
    "--data", required=True, help="Processed dataset folder (cmc data process) or a parquet file."
)
@click.option(
    "--model",
    required=True,
    help="Model folder / hub id, `default`, or `nngen` (retrieval baseline).",
)
@click.option(
    "--decider",
    default=None,
    help="With --model a message model: the keystroke model (folder / hub id / `default`) that "
    "chooses between the memory and --model's text with nothing typed, as the hook does with "
    "cmc.messageModel set.",
)
@click.option("--split", default="test", show_default=True, help="Which split to score.")
@click.option(
    "--train",
    "train_data",
    default=None,
    help="Training data for nngen (default: --data's train split).",
)
@click.option(
    "--context-ratios",
    default="0,0.25,0.5",
    show_default=True,
    help="Shares of each message given as typed text, comma-separated.",
)
@click.option(
    "--history/--no-history",
    "history",
    default=None,
    help="Only with / only without history (default: both).",
)
@click.option(
    "--limit", type=int, default=None, help="Evaluate a fixed random sample of this many commits."
)
@click.option("--beams", default=5, show_default=True, help="Beam width.")
@click.option("--max-new-tokens", default=15, show_default=True, help="Most tokens the model adds.")
@click.option(
    "--repos",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of the rows' repositories (OWNER+NAME/repo): use each one's memory.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for metrics and predictions.",
)
def evaluate(
    data, model, decider, split, train_data, context_ratios, history, limit, beams, max_new_tokens, repos,
    out,
):  # fmt: skip
    """Score completions by the CommitChronicle protocol; writes metrics.json, predictions, a plot."""
    from cmc.training.evaluate import run_eval, table

    try:
        ratios = [float(x) for x in context_ratios.split(",") if x.strip()]
    except ValueError as exc:
        raise CmcError(f"--context-ratios: {exc}") from exc
    histories = [True, False] if history is None else [history]
    settings = None
    if model != "nngen":
        from cmc.decoding import DecodeSettings
        from cmc.settings import BUNDLED_MODEL

        settings = DecodeSettings(num_beams=beams, max_new_tokens=max_new_tokens)
        model = str(BUNDLED_MODEL) if model == "default" else model
        decider = str(BUNDLED_MODEL) if decider == "default" else decider
    elif decider:
        raise CmcError("--decider chooses for a model: nngen has none")
    results = run_eval(
        data,
        model,
        ratios,
        histories,
        limit,
        out,
        split=split,
        train=train_data,
        settings=settings,
        repos=repos,
        decider=decider,
    )
    click.echo(table(results))
    click.echo(f"→ {out}/metrics.json, predictions.jsonl, metrics.png", err=True)


# `cmc train`'s defaults: a short fine-tune of a small repository's history.
PERSONALIZE_DEFAULTS = {"max_steps": 200, "save_every": 50, "global_batch_size": 16,
                        "micro_batch_size": 4, "lr": 3e-4, "seed": 42, "fsdp": False,
                        "train_layers": 0, "lora_rank": 0}  # fmt: skip


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
@click_options(PERSONALIZE_DEFAULTS)
@click.option(
    "--eval-limit",
    default=100,
    show_default=True,
    help="Newest commits scored before and after (each is completed at 3 typed shares).",
)
@click.option("--no-install", is_flag=True, help="Do not make the result this repository's model.")
@click.option("--force", is_flag=True, help="Install the result even if it does not beat the base.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The result as one JSON object on stdout (scores, CPU seconds, installed or why not).",
)
def train(repo, data, base, out, nproc, eval_limit, no_install, force, as_json, **trainer):
    """Personalize the model on this repository's history (resumable: run it again to continue)."""
    from cmc.training.personalize import TrainOptions, personalize, report

    if trainer["global_batch_size"] % nproc:
        raise CmcError(
            f"--global-batch-size {trainer['global_batch_size']} must be divisible by --nproc {nproc}"
        )
    config = TrainConfig(**trainer, warmup_steps=max(1, trainer["max_steps"] // 10))
    opts = TrainOptions(repo=repo, data=data, base=base, out=out, nproc=nproc, eval_limit=eval_limit,
                        install=not no_install, force=force, train=config)  # fmt: skip
    if not as_json:
        click.echo(report(personalize(opts)))
        return
    try:
        result = personalize(opts)
    except CmcError as exc:  # a script reads why in the same place as a result
        click.echo(json.dumps({"installed": False, "error": str(exc)}))
        raise
    click.echo(json.dumps(result, indent=2))


def _needs_train_extra(cmd: click.Command, name: str) -> None:
    """Check for the [train] extra before the command runs (one line, not a ModuleNotFoundError)."""
    if isinstance(cmd, click.Group):
        for sub_name, sub in cmd.commands.items():
            _needs_train_extra(sub, f"{name} {sub_name}")
        return
    callback = cmd.callback

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        require_train_extra(name)
        return callback(*args, **kwargs)

    cmd.callback = checked


def register(main: click.Group) -> None:
    for cmd in (train, data, checkpoint, evaluate):
        _needs_train_extra(cmd, cmd.name)
        main.add_command(cmd)
