"""Run under torchrun: load a run's newest checkpoint at this world size / layout, write its full state.

torchrun --nproc-per-node N tests/dump_checkpoint.py RUN_DIR OUT.pt [--fsdp]
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from cmc.training.checkpoint import CheckpointManager, TrainState
from cmc.training.config import TrainConfig
from cmc.training.train import build, setup_distributed

run, target = sys.argv[1], sys.argv[2]
cfg = TrainConfig.from_argv(["--data", "unused", "--out", run, "--max-steps", "1", *sys.argv[3:]])
rank, world, device = setup_distributed()
model, layout, optimizer, _, _ = build(cfg, Path(run), rank, world, device, bf16=False)
state = TrainState(model, optimizer)
folder = CheckpointManager(Path(run) / "checkpoints").load_latest(state)
model_sd, optim_sd = get_state_dict(
    model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
)
if rank == 0:
    torch.save(
        {
            "folder": str(folder),
            "layout": layout,
            "model": model_sd,
            "optim": optim_sd,
            "step": state.step,
        },
        target,
    )
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # no interpreter teardown: see training/train.py
