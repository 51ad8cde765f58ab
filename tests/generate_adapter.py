"""cmc's (numpy) logits processors as transformers' `generate` calls them: how cmc's own search is
pinned to `generate` (tests/test_beam.py, bench/bench_decode.py). Test code, not cmc's."""

from __future__ import annotations

from typing import Any

import torch


class HFProcessor:
    def __init__(self, proc: Any):
        self.proc = proc

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.proc(input_ids.tolist(), scores.numpy().copy()))
