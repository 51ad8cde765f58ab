"""`cmc data stats`: what a processed dataset holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cmc.diffs import process_diff


def _quantiles(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    return " / ".join(str(int(v)) for v in np.percentile(values, [10, 50, 90]))


def dataset_stats(folder: str | Path) -> str:
    from datasets import load_from_disk

    folder = Path(folder)
    dd = load_from_disk(str(folder / "dataset" if (folder / "dataset").exists() else folder))
    lines = []
    for split, ds in dd.items():
        langs = Counter(ds["language"])
        msg = np.array([len(m) for m in ds["message"]])
        diff = np.array([len(process_diff(m)) for m in ds["mods"]])
        hist = (
            np.array([len(h or []) for h in ds["history"]])
            if "history" in ds.column_names
            else np.zeros(1)
        )
        lines.append(
            f"{split}: {len(ds)} commits, {len(set(ds['repo']))} repositories, {len(set(ds['author']))} authors"
        )
        lines.append("  languages: " + ", ".join(f"{k} {v}" for k, v in langs.most_common()))
        lines.append(f"  message chars p10/p50/p90: {_quantiles(msg)}")
        lines.append(f"  diff chars    p10/p50/p90: {_quantiles(diff)}")
        lines.append(f"  history msgs  p10/p50/p90: {_quantiles(hist)}")
    return "\n".join(lines)
