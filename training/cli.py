"""`cmc data`, `cmc train`, `cmc eval` and `cmc checkpoint`: the training side's commands."""

from __future__ import annotations

import json
import sys

import click

from cmc import CmcError


@click.group()
def data() -> None:
    """Mine git repositories and process commits into datasets (CommitChronicle rules)."""


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


def register(main: click.Group) -> None:
    main.add_command(data)
    main.add_command(checkpoint)


if __name__ == "__main__":
    sys.exit(0)
