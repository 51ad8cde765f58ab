"""Recipes: the exact runs that produced cmc's shipped artifacts, kept so they can be redone.

What they share: starting the trainer in a child (`launch`), and sizing a run to a deadline from a
short probe of the trainer's own throughput (`probe_rate`, `steps_within`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from statistics import median

from cmc.spawn import python_argv
from cmc.training.config import TrainConfig


def launch(config: TrainConfig, log: Path) -> subprocess.Popen:
    """The trainer (`cmc.training.train`) on ``config`` in a child, its output in ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen([*python_argv("cmc.training.train"), *config.to_argv()],
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip


def probe_rate(run: Path) -> float:
    """Tokens per second of a probe run: the median of its steps after the first third (the
    first steps warm up allocators and compilers)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return float(median(x["tokens_per_s"] for x in lines[len(lines) // 3 :]))


def steps_within(
    rate: float, seconds: float, tokens_per_example: float, global_batch_size: int, least: int
) -> int:
    """How many steps of ``global_batch_size`` examples fit ``seconds`` at ``rate`` tokens/s."""
    return max(least, int(rate * seconds / (tokens_per_example * global_batch_size)))
