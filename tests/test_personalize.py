"""`cmc train` on a real repository: interrupt with Ctrl-C, resume, install the model; bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cmc_env, plant_modules
from test_data import RepoBuilder

VERBS = ["Add", "Fix", "Remove", "Refactor", "Document", "Improve"]
THINGS = [
    "the request handler",
    "config parsing",
    "the cache layer",
    "error reporting",
    "the CLI options",
    "logging",
]


def history_repo(path: Path, commits: int) -> Path:
    b = RepoBuilder(path)
    for i in range(commits):
        b.commit(f"{VERBS[i % 6]} {THINGS[(i * 5) % 6]} for module {i}")
    return b.path


@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, tiny_model: Path):
    repo = history_repo(tmp_path / "repo", 40)
    # Untracked modules in the work tree must never be imported by cmc or torchrun's workers.
    markers = plant_modules(repo, tmp_path / "markers")
    cmd = ["cmc", "train", "--base", str(tiny_model), "--max-steps", "40", "--save-every", "4", "--nproc", "2",
           "--global-batch-size", "4", "--micro-batch-size", "2", "--eval-limit", "8", "--force"]  # fmt: skip
    env = cmc_env({"OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = repo / ".git" / "cmc" / "train" / "run" / "checkpoints"
    deadline = time.time() + 240
    while not any((d / "trainer.json").exists() for d in ckpts.glob("step-*")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "run the same command to resume" in err
    from cmc.training.checkpoint import step_dirs

    stopped_at = step_dirs(ckpts)[-1][0]
    assert 0 < stopped_at < 40
    assert not (repo / ".git" / "cmc" / "model").exists()

    again = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {stopped_at}" in again.stderr
    assert "EM@1 before" in again.stdout and "now uses" in again.stdout
    status = subprocess.run(
        ["cmc", "hook", "status"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert str(repo / ".git" / "cmc" / "model") in status.stdout
    steps = [
        line for line in (ckpts.parent / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    assert len(steps) == 40  # no step lost or logged twice across the interruption
    assert not [m.name for m in markers if m.exists()]
    # The run `cmc train` names, its trainer's run folder and the checkpoints: each is accepted.
    train_out = repo / ".git" / "cmc" / "train"
    for where in (train_out, train_out / "run", ckpts):
        info = subprocess.run(["cmc", "checkpoint", "info", str(where)], cwd=repo, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert info.returncode == 0, info.stderr
        assert '"step": 40' in info.stdout


def test_too_few_commits_is_a_clear_error(tmp_path: Path, tiny_model: Path):
    repo = history_repo(tmp_path / "small", 6)
    as_json = subprocess.run(["cmc", "train", "--base", str(tiny_model), "--json"], cwd=repo,
                             env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert as_json.returncode == 1
    import json

    said = json.loads(as_json.stdout)
    assert said["installed"] is False and said["error"].startswith("too few commits to learn from")
    result = subprocess.run(
        ["cmc", "train", "--base", str(tiny_model)],
        cwd=repo,
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("cmc: error: too few commits to learn from")
    )


def test_no_model_is_a_clear_error(tmp_path: Path):
    repo = history_repo(tmp_path / "r", 20)
    result = subprocess.run(
        ["cmc", "train", "--base", str(tmp_path / "missing-model")],
        cwd=repo,
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "cmc: error:" in result.stderr.strip().splitlines()[-1]


def run_processes(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (torchrun and its workers)."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit() and int(pid_dir.name) != os.getpid():
            try:
                if marker in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid_dir.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_one_run_per_folder_and_workers_die_with_cmc_train(tmp_path: Path, tiny_model: Path):
    repo = history_repo(tmp_path / "repo", 40)
    run_dir = tmp_path / "the-run"
    cmd = ["cmc", "train", "--base", str(tiny_model), "--max-steps", "400", "--save-every", "2",
           "--global-batch-size", "4", "--micro-batch-size", "2", "--eval-limit", "4", "--out", str(run_dir)]  # fmt: skip
    env = cmc_env({"OMP_NUM_THREADS": "1"})
    first = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while not list((run_dir / "run" / "checkpoints").glob("step-*/trainer.json")):
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert (
            second.stderr.strip()
            .splitlines()[-1]
            .startswith("cmc: error: another cmc train is running")
        )
        workers = run_processes(str(run_dir / "run"))
        assert workers, "no torchrun worker found"
        first.kill()  # SIGKILL to `cmc train` alone, not its process group
        first.wait(timeout=30)
        deadline = time.time() + 120
        while run_processes(str(run_dir / "run")):
            assert time.time() < deadline, "torchrun or its workers outlived cmc train"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            first.kill()
        for pid in run_processes(str(run_dir / "run")):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_result_no_better_than_the_base_is_not_installed(tmp_path: Path, tiny_model: Path):
    repo = history_repo(tmp_path / "repo", 40)
    # lr 0: the weights do not move, so the scores tie, and a tie is not better.
    # (a relative --out: torchrun's workers run elsewhere, the paths they get must not be relative)
    cmd = ["cmc", "train", "--base", str(tiny_model), "--max-steps", "2", "--lr", "0", "--out", "rel-run",
           "--global-batch-size", "4", "--micro-batch-size", "2", "--eval-limit", "6", "--json"]  # fmt: skip
    result = subprocess.run(cmd, cwd=repo, env=cmc_env({"OMP_NUM_THREADS": "1"}), capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.startswith("cmc train: mines 40 commits of this repository")
    import json

    out = json.loads(result.stdout)  # one object, for scripts: the progress went to stderr
    assert set(out["before"]) == set(out["after"]) == {"history@0", "history@0.25", "history@0.5"}
    assert all("B-Norm" in s and "EM@1" in s for s in out["after"].values())
    assert out["installed"] is False and out["not_installed"].startswith("it did not beat")
    assert out["steps"] == 2 and out["cpu_seconds"] > 0 and out["memory"] is True
    assert not (repo / ".git" / "cmc" / "model").exists()
    assert (repo / "rel-run" / "run" / "checkpoints").is_dir()
