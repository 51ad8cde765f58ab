"""Universal checkpoints: sharded DCP saves in ``step-N`` folders, loadable at any world size and layout.

* Saved with `torch.distributed.checkpoint` from `get_state_dict` (fully-qualified names, no
  ``module.`` prefixes, DTensor shards under FSDP2), so DDP, FSDP2 and a single process read each
  other's checkpoints, at any number of processes: DCP reshards on load.
* A folder counts only once its ``.metadata`` and ``trainer.json`` exist; resume takes the newest
  valid one and falls back to older ones if a load fails, but never to step 0 while any exist;
  the newest ``keep`` are kept.
* Besides model and optimizer: step, consumed samples, RNG states and the run config
  (``trainer.json``, written after the shards, beside ``.metadata``).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

STEP_DIR = re.compile(r"^step-(\d+)$")
# DCP reports failures of any rank as CheckpointException, a BaseException: catch it explicitly.
SAVE_ERRORS = (OSError, CheckpointException)
LOAD_ERRORS = (Exception, CheckpointException)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_dist() else 0


def _barrier() -> None:
    if _is_dist():
        dist.barrier()


def out_of_space(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is ENOSPC (DCP wraps the ranks' errors)."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class TrainState(Stateful):
    """Model + optimizer + counters + RNG, as one Stateful for DCP."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.step = 0
        self.consumed = 0

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=StateDictOptions())
        rng = pickle.dumps(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            }
        )
        return {
            "model": model_sd,
            "optim": optim_sd,
            "step": torch.tensor(self.step),
            "consumed": torch.tensor(self.consumed),
            # RNG of rank 0 (a pickled object in DCP): at another world size there is no per-rank map.
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self.step = int(state["step"])
        self.consumed = int(state["consumed"])
        rng = pickle.loads(state["rng"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(rng["cuda"])
            except RuntimeError:
                pass  # fewer GPUs now than at save time


def step_dirs(root: str | Path, valid_only: bool = True) -> list[tuple[int, Path]]:
    """``(step, folder)`` of checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
        if m and child.is_dir() and (not valid_only or is_valid(child)):
            found.append((int(m.group(1)), child))
    return sorted(found)


def is_valid(folder: Path) -> bool:
    return (folder / ".metadata").is_file() and (folder / "trainer.json").is_file()


@dataclass
class SaveHandle:
    """A save in flight (async) or done (sync)."""

    folder: Path
    info: dict[str, Any]
    future: Any = None

    def wait(self) -> None:
        if self.future is not None:
            result = self.future
            # async_save returns a Future, or an AsyncSaveResponse holding one.
            fut = getattr(result, "upload_completion", None) or result
            fut.result()
            self.future = None


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2, async_save: bool = False):
        self.root = Path(root)
        self.keep = max(2, keep)
        self.async_save = async_save
        self.pending: SaveHandle | None = None
        self._stager = None

    def save(self, state: TrainState, info: dict[str, Any]) -> SaveHandle:
        """Save ``state`` as ``step-N``; ``info`` (run config, layout) goes to ``trainer.json``."""
        self.wait()
        folder = self.root / f"step-{state.step}"
        if _rank() == 0:
            if folder.exists():
                shutil.rmtree(folder)  # an invalid leftover of a crashed save
            folder.mkdir(parents=True)
        _barrier()
        sd = {"train": state}
        if self.async_save:
            future = dcp.async_save(sd, checkpoint_id=str(folder), async_stager=self._cpu_stager())
            handle = SaveHandle(folder, info, future)
            self.pending = handle
            return handle
        try:
            dcp.save(sd, checkpoint_id=str(folder))
        except SAVE_ERRORS as exc:
            raise self._discard(folder, exc) from exc
        self._finish(folder, info)
        return SaveHandle(folder, info)

    def wait(self) -> None:
        """Block until an async save in flight is on disk, then mark it valid."""
        if self.pending is None:
            return
        handle, self.pending = self.pending, None
        try:
            handle.wait()
        except SAVE_ERRORS as exc:
            raise self._discard(handle.folder, exc) from exc
        self._finish(handle.folder, handle.info)

    def _cpu_stager(self):
        # The default stager wants pinned memory and CUDA streams; on a CPU-only machine, stage
        # synchronously to plain memory and let the write happen in the background thread.
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            gpu = torch.cuda.is_available()
            self._stager = DefaultStager(StagingOptions(gpu, False, gpu, gpu))
        return self._stager

    def close(self) -> None:
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _finish(self, folder: Path, info: dict[str, Any]) -> None:
        _barrier()
        if _rank() == 0:
            tmp = folder / "trainer.json.tmp"
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, folder / "trainer.json")
            for _, old in step_dirs(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()

    def _discard(self, folder: Path, exc: Exception) -> OSError:
        """Remove a failed save; the error to raise (errno ENOSPC when the disk is full)."""
        full = out_of_space(exc) or self._short_of_space(folder)
        if _rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
            if not full:  # out of space is the caller's to say, once
                print(
                    f"checkpoint {folder.name} failed ({exc}); the previous one stays valid",
                    file=sys.stderr,
                )
        if full:
            return OSError(errno.ENOSPC, f"no space left on device for checkpoint {folder.name}")
        return OSError(f"checkpoint {folder.name} not saved")

    def _short_of_space(self, failed: Path) -> bool:
        """The serializer often hides ENOSPC behind its own error: is there room for another
        checkpoint as large as the newest one?"""
        found = step_dirs(self.root)
        if not found:
            return False
        newest = sum(f.stat().st_size for f in found[-1][1].iterdir() if f.is_file())
        try:
            partial = sum(f.stat().st_size for f in failed.iterdir() if f.is_file())
        except OSError:
            partial = 0
        return shutil.disk_usage(self.root).free + partial < newest

    def load_latest(self, state: TrainState) -> Path | None:
        """Load the newest checkpoint that loads, saying so when one has to be skipped.

        None only when there is no checkpoint at all: when every one fails, this raises
        (`UnloadableCheckpoints`) instead of letting a run start over from step 0 and later purge
        the folders it could not read.
        """
        found = step_dirs(self.root)
        reasons = []
        for _step, folder in reversed(found):
            try:
                dcp.load({"train": state}, checkpoint_id=str(folder))
                return folder
            except LOAD_ERRORS as exc:  # a corrupt or truncated checkpoint
                text = str(exc).strip()
                reason = text.splitlines()[-1][:200] if text else type(exc).__name__
                reasons.append(f"{folder.name}: {reason}")
                if _rank() == 0:
                    print(f"checkpoint {folder.name} is unreadable ({reason}); trying an older one",
                          file=sys.stderr)  # fmt: skip
        if found:
            raise UnloadableCheckpoints(
                f"no checkpoint in {self.root} loads ({'; '.join(reasons)}); "
                "move the folder away to start over, or use the code that wrote them"
            )
        return None


class UnloadableCheckpoints(RuntimeError):
    """Checkpoints exist but none loads (corrupt, or written by other code)."""


def find_checkpoint(path: str | Path) -> Path:
    """A valid ``step-N`` folder: ``path`` itself, or the newest under it. ``path`` may be that
    folder, a checkpoints folder, a trainer's run folder (``RUN/checkpoints``) or the folder
    `cmc train --out` names (``OUT/run/checkpoints``)."""
    path = Path(path)
    if is_valid(path):
        return path
    for root in (path, path / "checkpoints", path / "run" / "checkpoints"):
        found = step_dirs(root)
        if found:
            return found[-1][1]
    raise FileNotFoundError(
        f"{path}: no valid checkpoint (a step-N folder with .metadata and trainer.json)"
    )


def checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """What ``cmc checkpoint info`` shows: from trainer.json and DCP's metadata."""
    folder = find_checkpoint(folder)
    info = json.loads((folder / "trainer.json").read_text())
    reader = dcp.FileSystemReader(str(folder))
    meta = reader.read_metadata()
    params = 0
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("train.model.") and hasattr(md, "size"):
            params += int(np.prod(md.size))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {
        "folder": str(folder),
        "step": info.get("step"),
        "consumed_samples": info.get("consumed"),
        "world_size": info.get("world_size"),
        "layout": info.get("layout"),
        "parameters": params,
        "bytes": size,
        "files": sorted(f.name for f in folder.iterdir()),
    }
