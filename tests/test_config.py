"""`TrainConfig` is the one description of a run: flags, torchrun argv, checkpoints, resume check."""

from __future__ import annotations

import pytest

from cmc.training.config import TrainConfig, resume_conflicts


def test_argv_round_trip_keeps_every_field():
    cfg = TrainConfig(data="d", out="o", base="b", max_steps=7, lr=3e-4, fsdp=True, seed=3,
                      precision="bf16", stop_after_seconds=12.5)  # fmt: skip
    assert TrainConfig.from_argv(cfg.to_argv()) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg


def test_from_argv_refuses_base_and_config_together(capsys):
    with pytest.raises(SystemExit):
        TrainConfig.from_argv(["--data", "d", "--out", "o", "--base", "b", "--config", "tiny"])
    assert "not both" in capsys.readouterr().err


def test_resume_conflicts_name_the_flag_and_the_data():
    now = TrainConfig(data="d", out="o", seed=2, global_batch_size=8)
    saved = TrainConfig(data="d", out="o", seed=1, global_batch_size=16).to_json()
    problems = resume_conflicts(saved, now, 100, 90)
    assert any(p.startswith("--seed was 1") for p in problems)
    assert any("100 examples" in p for p in problems)
    # the batch size may change: samples come from the consumed count, not the step
    assert resume_conflicts({**saved, "seed": 2}, now, 90, 90) == []
