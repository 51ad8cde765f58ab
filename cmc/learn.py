"""Learning each repository in the background: `cmc train` started by the daemon, when it may.

`cmc train` fine-tunes the model on a repository's own history and installs the result only if it
beats the current model on the newest commits; it was measured to lift B-Norm by up to 11 points,
but it is a long command that few users would start. The daemon starts it by itself, for a
repository it serves, when all of these hold (`why_not`):

* learning is on (``git config cmc.learn``, ``CMC_LEARN``) and the training extra is installed;
* the repository has at least `MIN_COMMITS` commits and `GROWTH` new ones since its last run;
* the machine is not on battery, and nobody else is using the cores (`Machine.busy`).

The learner runs at the lowest CPU and I/O priority, one at a time for the user (a lock in the
daemon's private folder); it is paused (SIGSTOP) while other work needs the cores and continued
(SIGCONT) when they are idle again; killed, it resumes from its checkpoint the next time. What it
did is in ``$GIT_DIR/cmc/learn.json`` (`cmc hook status` says it); the hook mentions it once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_COMMITS = 300  # below this, the newest tenth (what a result is judged on) is too few commits
GROWTH = 100  # new commits since the last run before learning again
BUSY_SHARE = 0.5  # of one core used by other processes: the user's work needs the machine
STATE = "learn.json"
WAITING = "waiting for an idle machine"


def state_path(common_dir: str | os.PathLike) -> Path:
    return Path(common_dir) / "cmc" / STATE


def read_state(common_dir: str | os.PathLike) -> dict:
    try:
        data = json.loads(state_path(common_dir).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(common_dir: str | os.PathLike, **changes: Any) -> dict:
    """Update ``learn.json`` (written beside and renamed over)."""
    state = {**read_state(common_dir), **changes}
    path = state_path(common_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # a full disk: learning stops with its line in `cmc hook status`, nothing else
    return state


def train_extra_missing() -> str | None:
    from importlib.util import find_spec

    missing = [m for m in ("torch", "transformers", "datasets") if find_spec(m) is None]
    return f"needs pip install 'cmc[train]' ({', '.join(missing)} missing)" if missing else None


def why_not(repo: Any, settings: Any, commits: int) -> str | None:
    """Why the daemon should not start learning ``repo`` now (None: it may)."""
    if not settings.learn:
        return "off (git config cmc.learn false, or CMC_LEARN=0)"
    missing = train_extra_missing()
    if missing:
        return missing
    if commits < MIN_COMMITS:
        return f"{commits} commits; learning starts at {MIN_COMMITS}"
    last = read_state(repo.common_dir).get("commits_at_last_run")
    grown = commits - int(last or 0)
    if last is not None and grown < GROWTH:
        return f"{grown} new commits since it last learned; again at {GROWTH}"
    return None


class Machine:
    """Whether the user's own work needs the machine: the CPU time of every process but the
    learner's, between two looks (from /proc)."""

    def __init__(self):
        self.last: tuple[float, float] | None = None

    @staticmethod
    def _total_busy() -> float:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle

    @staticmethod
    def _tree_busy(pgid: int | None) -> float:
        if pgid is None:
            return 0.0
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # its process group: the learner, torchrun, its workers
                total += float(fields[11]) + float(fields[12])
        return total

    def busy(self, learner_pgid: int | None) -> bool:
        """Since the previous call: did other processes use more than `BUSY_SHARE` of a core?"""
        try:
            now = (time.monotonic(), self._total_busy() - self._tree_busy(learner_pgid))
        except OSError:
            return False
        last, self.last = self.last, now
        if last is None:
            return False
        ticks = os.sysconf("SC_CLK_TCK")
        others = (now[1] - last[1]) / ticks / max(1e-3, now[0] - last[0])
        return others > BUSY_SHARE

    @staticmethod
    def on_battery() -> bool:
        for supply in Path("/sys/class/power_supply").glob("*"):
            try:
                if (supply / "type").read_text().strip() == "Battery" and (
                    supply / "status"
                ).read_text().strip() == "Discharging":
                    return True
            except OSError:
                continue
        return False


@dataclass
class Learner:
    """A `cmc train --json` child of the daemon, for one repository."""

    repo: str
    common_dir: Path
    proc: subprocess.Popen
    paused: bool = False

    @classmethod
    def start(cls, repo: Any, folder: Path, commits: int, steps: int) -> Learner:
        from cmc.spawn import die_with_parent, lowest_priority, python_argv, safe_env

        def prepare() -> None:  # its own group (paused as one), lowest priority, ends with us
            os.setpgrp()
            lowest_priority()
            die_with_parent()

        log_path = repo.common_dir / "cmc" / "learn.log"
        if log_path.exists() and log_path.stat().st_size > 1_000_000:
            log_path.replace(log_path.with_suffix(".log.1"))
        log = open(log_path, "ab")  # noqa: SIM115 (the child's)
        try:
            proc = subprocess.Popen(
                python_argv("cmc.cli", "train", "--repo", str(repo.cwd), "--json",
                            "--max-steps", str(steps)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder, env=safe_env(),
                preexec_fn=prepare,
            )  # fmt: skip
        finally:
            log.close()
        write_state(repo.common_dir, status="learning", started=_now(), commits_at_last_run=commits,
                    announced=read_state(repo.common_dir).get("announced", False), pid=proc.pid)  # fmt: skip
        return cls(str(repo.cwd), repo.common_dir, proc)

    def pause(self, on: bool) -> None:
        if on != self.paused and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)
            except OSError:
                return
            self.paused = on
            write_state(self.common_dir, status="paused: the machine is busy" if on else "learning")

    def finish(self) -> bool:
        """Record how it ended; True once it has."""
        code = self.proc.poll()
        if code is None:
            return False
        result_file = self.common_dir / "cmc" / "train" / "result.json"
        try:
            result = json.loads(result_file.read_text())
        except (OSError, ValueError):
            result = {}
        if code == 0 and result:
            write_state(self.common_dir, status="installed" if result.get("installed") else
                        "not installed: " + str(result.get("not_installed", "")), finished=_now(),
                        before=_summary(result.get("before")), after=_summary(result.get("after")),
                        cpu_seconds=result.get("cpu_seconds"))  # fmt: skip
        elif code < 0 or code in (130, 143):  # stopped by a signal: it resumes next time
            write_state(self.common_dir, status="stopped; resumes next time", finished=_now(),
                        commits_at_last_run=None)  # fmt: skip
        else:  # it failed: tried again once the repository has grown (not every idle minute)
            write_state(self.common_dir, status=f"failed: {_last_error(self.common_dir)}",
                        finished=_now())  # fmt: skip
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass


def _last_error(common_dir: Path) -> str:
    """The error line `cmc train --json` left in the learner's log (its last JSON object)."""
    try:
        with open(common_dir / "cmc" / "learn.log", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "see .git/cmc/learn.log"
    for line in reversed(tail):
        if line.startswith("{") and '"error"' in line:
            try:
                return str(json.loads(line)["error"])
            except (ValueError, KeyError):
                break
    return tail[-1][:200] if tail else "see .git/cmc/learn.log"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def _summary(scores: Any) -> dict | None:
    if not isinstance(scores, dict):
        return None
    return {k.split("@")[-1]: {m: round(v[m], 2) for m in ("B-Norm", "EM@1") if m in v}
            for k, v in scores.items()}  # fmt: skip


def status_line(repo: Any, settings: Any) -> str:
    """What `cmc hook status` says about learning this repository (a `cmc.gitctx.GitRepo`)."""
    if not settings.learn:
        return "learning: off (git config cmc.learn false, or CMC_LEARN=0)"
    state = read_state(repo.common_dir)
    if not state:
        reason = why_not(repo, settings, repo.commit_count())
        return f"learning: {reason or 'not yet (the daemon starts when the machine is idle)'}"
    line = f"learning: {state.get('status', '?')}"
    if state.get("finished"):
        line += f", {state['finished']}"
    before, after = state.get("before"), state.get("after")
    if before and after:
        shares = [s for s in ("0", "0.25", "0.5") if s in before and s in after]
        line += "; B-Norm " + " / ".join(f"{before[s]['B-Norm']:.1f}→{after[s]['B-Norm']:.1f}"
                                         for s in shares) + " at 0 / 25 / 50% typed"  # fmt: skip
    return line


def announce_once(common_dir: str | os.PathLike) -> str | None:
    """The hook's one-time comment line while this repository is being learned."""
    state = read_state(common_dir)
    if state.get("status") in ("learning", "paused: the machine is busy") and not state.get(
        "announced"
    ):
        write_state(common_dir, announced=True)
        return ("cmc is learning this repository's history in the background, at the lowest "
                "priority (git config cmc.learn false turns that off)")  # fmt: skip
    return None


def learn_loop(service: Any, folder: Path, every: float = 15.0) -> None:
    """The daemon's learner: at most one `cmc train` at a time for this user (a lock in the
    daemon's folder), started for a repository it served when `why_not` allows and the machine
    has been idle for two looks in a row; paused while other work needs the cores or the
    machine runs on battery. Runs until the daemon exits (the learner is stopped then: it resumes
    from its checkpoint next time)."""
    import fcntl
    import sys

    from cmc import one_line
    from cmc.gitctx import repo_at

    machine = Machine()
    learner: Learner | None = None
    idle_looks = 0
    counted: dict[str, tuple[Any, int]] = {}  # repository: (HEAD, commits) — counted once per HEAD
    lock = os.open(folder / "learn.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            time.sleep(every)
            try:
                busy = machine.busy(learner.proc.pid if learner else None) or machine.on_battery()
                idle_looks = 0 if busy else idle_looks + 1
                if learner is not None:
                    if learner.finish():
                        learner = None
                        fcntl.flock(lock, fcntl.LOCK_UN)
                    else:
                        learner.pause(busy)
                    continue
                for path, settings in list(service.seen.items()):
                    repo = repo_at(path)
                    head = repo.head_from_files()
                    if counted.get(path, (None,))[0] != head:
                        counted[path] = (head, repo.commit_count())
                    commits = counted[path][1]
                    if why_not(repo, settings, commits) is not None:
                        continue
                    if idle_looks < 2:  # eligible, but the machine is in use: said, and waited
                        if read_state(repo.common_dir).get("status") != WAITING:
                            write_state(repo.common_dir, status=WAITING)
                        continue
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        break  # another daemon of this user is learning
                    learner = Learner.start(repo, folder, commits, settings.learn_steps)
                    break
            except Exception as exc:  # never take the daemon down
                print(f"{time.strftime('%F %T')} learning: {one_line(exc)}", file=sys.stderr,
                      flush=True)  # fmt: skip
    finally:
        if learner is not None:
            learner.stop()
        os.close(lock)
