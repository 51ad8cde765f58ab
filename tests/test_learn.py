"""Learning each repository in the background: when the daemon may start `cmc train`, how it
yields the machine, what it records, and a real run started by a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cmc_env, git
from test_personalize import history_repo

from cmc import learn
from cmc.gitctx import GitRepo
from cmc.settings import Settings


def test_when_it_may_learn(tmp_path: Path, monkeypatch):
    repo = history_repo(tmp_path / "repo", 12)
    r = GitRepo(repo)
    settings = Settings.load(repo, r.common_dir)
    assert learn.why_not(r, settings, 12) == f"12 commits; learning starts at {learn.MIN_COMMITS}"
    assert learn.why_not(r, settings, learn.MIN_COMMITS) is None
    learn.write_state(r.common_dir, commits_at_last_run=learn.MIN_COMMITS)
    said = learn.why_not(r, settings, learn.MIN_COMMITS + 10)
    assert said == f"10 new commits since it last learned; again at {learn.GROWTH}"
    assert learn.why_not(r, settings, learn.MIN_COMMITS + learn.GROWTH) is None
    git(repo, "config", "cmc.learn", "false")
    off = Settings.load(repo, r.common_dir)
    assert learn.why_not(r, off, 10_000).startswith("off")
    git(repo, "config", "--unset", "cmc.learn")
    monkeypatch.setenv("CMC_LEARN", "0")
    assert learn.why_not(r, Settings.load(repo, r.common_dir), 10_000).startswith("off")


def test_other_work_on_the_cores_is_seen_and_the_learner_pauses(tmp_path: Path):
    machine = learn.Machine()
    machine.busy(None)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        assert machine.busy(None)  # a process using a whole core is the user's work
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=os.setpgrp)
        common = tmp_path / "git"
        (common / "cmc").mkdir(parents=True)
        learner = learn.Learner("repo", common, sleeper)

        def state(wanted: str) -> str:  # signals arrive soon, not at once: wait for it
            deadline = time.time() + 30
            while True:
                stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
                now = stat[stat.rindex(")") + 2]
                if now in wanted or time.time() > deadline:
                    return now
                time.sleep(0.05)

        learner.pause(True)
        assert state("T") == "T" and learn.read_state(common)["status"].startswith("paused")
        learner.pause(False)
        assert state("SR") in "SR" and learn.read_state(common)["status"] == "learning"
        learner.stop()
        sleeper.wait(timeout=30)
        assert learner.finish()
        assert learn.read_state(common)["status"].startswith("stopped")
    finally:
        spinner.kill()


def test_the_hook_says_it_once(tmp_path: Path):
    common = tmp_path / "git"
    learn.write_state(common, status="learning", announced=False)
    first = learn.announce_once(common)
    assert first and "git config cmc.learn false" in first
    assert learn.announce_once(common) is None


@pytest.mark.slow
def test_the_daemon_learns_a_repository_by_itself(tmp_path: Path, tiny_model: Path):
    from test_interactive import Daemon

    repo = history_repo(tmp_path / "repo", learn.MIN_COMMITS)
    git(repo, "config", "cmc.model", str(tiny_model))
    git(repo, "config", "cmc.learnSteps", "2")
    (repo / "notes.txt").write_text("a change to complete\n")
    git(repo, "add", ".")
    d = Daemon(tmp_path / "run" / "cmc.sock", idle=900)
    try:
        out = subprocess.run(["cmc", "complete", "--prefix", "Fix"], cwd=repo, env=d.env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        state_file = learn.state_path(repo / ".git")

        def state() -> dict:
            return json.loads(state_file.read_text()) if state_file.exists() else {}

        started = time.time() + 120  # two idle looks 15 s apart, on a machine that is idle
        while state().get("status") in (None, learn.WAITING):
            if time.time() > started:
                if state().get("status") == learn.WAITING:  # right, on a machine never idle
                    pytest.skip("the machine stayed busy: the learner rightly waited")
                raise AssertionError(f"{state()}\n{d.log.read_text()[-3000:]}")
            time.sleep(1)
        finished = time.time() + 600
        while not state().get("finished"):
            assert time.time() < finished, f"{state()}\n{d.log.read_text()[-3000:]}"
            time.sleep(1)
        state = json.loads(state_file.read_text())
        assert state["status"] == "installed" or state["status"].startswith("not installed")
        assert set(state["before"]) == {"0", "0.25", "0.5"} and state["cpu_seconds"] > 0
        status = subprocess.run(["cmc", "hook", "status"], cwd=repo, env=cmc_env(),
                                capture_output=True, text=True).stdout  # fmt: skip
        assert "learning: " in status and "at 0 / 25 / 50% typed" in status
    finally:
        d.kill()


def test_a_failed_run_waits_for_the_repository_to_grow(tmp_path: Path):
    common = tmp_path / "git"
    (common / "cmc").mkdir(parents=True)
    learn.write_state(common, commits_at_last_run=400, status="learning")
    (common / "cmc" / "learn.log").write_text(
        'cmc train: mines 400 commits\n{"installed": false, "error": "too few commits to learn from: 9"}\n'
    )
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    failed.wait()
    assert learn.Learner("repo", common, failed).finish()
    state = learn.read_state(common)
    assert state["status"] == "failed: too few commits to learn from: 9"
    assert state["commits_at_last_run"] == 400  # not retried at the next idle minute


def test_hook_status_says_why_it_does_not_learn_yet(tmp_path: Path):
    repo = history_repo(tmp_path / "repo", 12)
    out = subprocess.run(["cmc", "hook", "status"], cwd=repo, env=cmc_env(), capture_output=True,
                         text=True).stdout  # fmt: skip
    assert f"learning: 12 commits; learning starts at {learn.MIN_COMMITS}" in out
    common = repo / ".git"
    learn.write_state(common, commits_at_last_run=None, status="stopped; resumes next time")
    assert learn.why_not(GitRepo(repo), Settings.load(repo, common), learn.MIN_COMMITS) is None
