"""`cmc train`: fine-tune the current model on one repository's own history and make it that repo's model.

Steps, each skipped when its output is already there (so the same command resumes):
mine + process the repository (time split: oldest 90% train, newest 10% validation) → tokenize with
the base model's tokenizer → score the base model on validation → fine-tune with torchrun (resumable,
universal checkpoints) → export → score again → install as ``$GIT_DIR/cmc/model``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from cmc import CmcError
from cmc.training.config import TrainConfig
from cmc.training.evaluate import EVAL_RATIOS, not_better

MIN_TRAIN_EXAMPLES = 16


@dataclass
class TrainOptions:
    """What `cmc train` does around the trainer; the trainer's own settings are ``train``."""

    repo: str | None = None
    data: str | None = None
    base: str | None = None
    out: str | None = None
    nproc: int = 1
    eval_limit: int = 100
    install: bool = True
    force: bool = False  # install even when the result does not beat the base model
    train: TrainConfig = field(default_factory=TrainConfig)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_data(opts: TrainOptions, out: Path) -> Path:
    """A processed dataset folder: ``--data``, or mined from ``--repo`` into ``OUT/data``."""
    if opts.data:
        return Path(opts.data)
    processed = out / "data"
    if (processed / "funnel.json").exists():  # written last: the dataset is complete
        return processed
    from cmc.training.mine import mine_repository
    from cmc.training.process import load_raw, process_rows, save_processed

    _say("mining the repository's history…")
    stats = mine_repository(opts.repo, out / "raw")
    _say(stats.line())
    per_split, funnel = process_rows(
        load_raw([str(out / "raw")]), split_by="time", seed=opts.train.seed
    )
    final = save_processed(per_split, funnel, processed)
    _say(funnel.table(final))
    return processed


def tokenize(data: Path, base: str, out: Path) -> Path:
    from datasets import load_from_disk

    from cmc.model import read_budget
    from cmc.training.tokens import pretokenize_split

    tokens = out / "tokens"
    dd = load_from_disk(str(data / "dataset" if (data / "dataset").exists() else data))
    n_train = len(dd["train"]) if "train" in dd else 0
    if n_train < MIN_TRAIN_EXAMPLES:
        raise CmcError(
            f"too few commits to learn from: {n_train} usable training examples after filtering "
            f"(need at least {MIN_TRAIN_EXAMPLES})"
        )
    budget = read_budget(base) if Path(base).exists() else None
    for split in ("train", "validation"):
        if split in dd and not (tokens / f"{split}.meta.json").exists():  # written last
            kwargs = {"budget": budget} if budget else {}
            pretokenize_split(dd[split], base, tokens, split, **kwargs)
    return tokens


def score_model(
    model: str, data: Path, out: Path, limit: int, repository: str | None = None
) -> dict:
    """`cmc eval` of ``model`` on the newest commits (the validation part), history on; with
    ``repository``, with its memory as each commit's author had it (as completions will be)."""
    from cmc.training.evaluate import run_eval

    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    return run_eval(str(data), model, list(EVAL_RATIOS), [True], limit, out, split="validation",
                    resume=True, repository=repository)  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (torchrun and its workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_trainer(opts: TrainOptions, tokens: Path, base: str, run: Path) -> int:
    """torchrun in a child; Ctrl-C / SIGTERM reach it (same process group) and we wait for its clean stop."""
    from cmc.spawn import die_with_parent, python_argv, safe_cwd, safe_env

    config = replace(opts.train, data=str(tokens), out=str(run), base=base, config=None)
    cmd = python_argv("torch.distributed.run", "--standalone", f"--nproc-per-node={opts.nproc}")
    cmd += ["-m", "cmc.training.train", *config.to_argv()]
    env = {
        **safe_env(),  # torchrun's workers run `python -m`: keep the repository off their path
        "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // opts.nproc))
        ),
    }
    # torchrun stops its workers when it gets SIGTERM; it gets one when `cmc train` dies.
    proc = subprocess.Popen(cmd, env=env, cwd=safe_cwd(run), preexec_fn=die_with_parent)
    interrupted = []

    def forward(signum, frame):
        interrupted.append(signum)
        if signum == signal.SIGTERM:  # a terminal's Ctrl-C already reached the whole group
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()  # our handler replaced KeyboardInterrupt: this waits for the clean stop
        return 130 if interrupted and code == 0 else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def hold_run_lock(out: Path):
    """An exclusive lock on the run folder for the life of this process: two `cmc train` runs in
    one folder would write the same checkpoints."""
    import fcntl

    f = open(out / "lock", "a+")  # noqa: SIM115 (kept open: the lock lives as long as the file)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CmcError(
            f"another cmc train is running in {out}; wait for it or stop it first"
        ) from None
    return f


def finished_step(run: Path) -> int:
    from cmc.training.checkpoint import step_dirs

    found = step_dirs(run / "checkpoints")
    if not found:
        return 0
    return json.loads((found[-1][1] / "trainer.json").read_text()).get("step", 0)


def personalize(opts: TrainOptions) -> dict:
    from cmc.gitctx import GitRepo
    from cmc.model import check_model_spec
    from cmc.settings import Settings, resolve_model

    if not opts.repo and not opts.data:
        opts.repo = "."
    git_repo = GitRepo(opts.repo) if opts.repo else None
    git_dir = git_repo.common_dir if git_repo else None
    out = Path(opts.out) if opts.out else (git_dir / "cmc" / "train" if git_dir else None)
    if out is None:
        raise CmcError("--out is needed with --data outside a repository")
    # Absolute: torchrun's workers run from the run folder, not from here.
    out = out.resolve()
    if opts.data:
        opts.data = str(Path(opts.data).resolve())
    if opts.base and Path(opts.base).expanduser().exists():
        opts.base = str(Path(opts.base).expanduser().resolve())
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_run_lock(out)  # noqa: F841 (held until this process ends)
    base = opts.base or (
        json.loads((out / "base.json").read_text())["base"]
        if (out / "base.json").exists()
        else None
    )
    if base is None:
        base = (
            Settings.load(git_repo.cwd, git_dir).model
            if git_repo
            else resolve_model(None, None, None)
        )
    check_model_spec(base)
    (out / "base.json").write_text(json.dumps({"base": base}))
    if git_repo is not None:
        opts.repo = str(git_repo.root or opts.repo)

    commits = git_repo.commit_count() if git_repo is not None and not opts.data else None
    _say(plan_line(opts, commits))
    spent = _CpuLedger(out / "cpu.json")
    try:
        return _personalize(
            opts, out, base, git_dir, spent, repository=None if opts.data else opts.repo
        )
    finally:
        spent.close()


class _CpuLedger:
    """CPU seconds spent on a run folder, across the invocations that resumed it."""

    def __init__(self, path: Path):
        self.path, self.started = path, cpu_seconds()
        try:
            self.before = float(json.loads(path.read_text())["cpu_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            self.before = 0.0

    def total(self) -> float:
        return self.before + cpu_seconds() - self.started

    def close(self) -> None:
        try:
            self.path.write_text(json.dumps({"cpu_seconds": round(self.total(), 1)}))
        except OSError:
            pass


def _personalize(opts: TrainOptions, out: Path, base: str, git_dir: Path | None,
                 spent: _CpuLedger, repository: str | None) -> dict:  # fmt: skip
    from cmc.settings import personalized_model_dir

    data = prepare_data(opts, out)
    tokens = tokenize(data, base, out)
    before = score_model(base, data, out / "eval-before", opts.eval_limit, repository)
    run = out / "run"
    code = run_trainer(opts, tokens, base, run)
    step = finished_step(run)
    if code != 0 or step < opts.train.max_steps:
        raise CmcError(
            f"training stopped at step {step} of {opts.train.max_steps}"
            + (
                ""
                if step == 0
                else f"; the checkpoint in {run / 'checkpoints'} is kept — run the same command to resume"
            )
        )
    from cmc.training.export import export_checkpoint

    model_dir = export_checkpoint(run, out / "model")
    shutil.rmtree(out / "eval-after", ignore_errors=True)
    after = score_model(str(model_dir), data, out / "eval-after", opts.eval_limit, repository)
    result = {
        "base": base,
        "model": str(model_dir),
        "before": before["scores"],
        "after": after["scores"],
        "steps": step,
        "scored_commits": before.get("examples"),
        "memory": repository is not None,
    }
    worse = not_better(result["after"], result["before"])
    result["better"] = not worse
    result["installed"] = False
    if not opts.install or git_dir is None:
        result["not_installed"] = "--no-install" if not opts.install else "no repository (--data)"
    elif not (result["better"] or opts.force):
        result["not_installed"] = (
            "it did not beat the current model on this repository's newest commits: "
            + "; ".join(worse)
        )
    else:
        target = personalized_model_dir(git_dir)
        tmp = target.with_name("model.new")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_dir, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        result["installed"] = str(target)
    result["cpu_seconds"] = round(spent.total(), 1)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


# Rough costs on a 2-core laptop (bundled 9M model, 1 thread): for the first line's estimate.
SECONDS_PER_COMPLETION = 0.6
TOKENS_PER_SECOND_TRAINING = 2500
TOKENS_PER_EXAMPLE = 450


def plan_line(opts: TrainOptions, commits: int | None) -> str:
    evals = 2 * len(EVAL_RATIOS) * opts.eval_limit
    train_s = (
        opts.train.max_steps
        * opts.train.global_batch_size
        * TOKENS_PER_EXAMPLE
        / TOKENS_PER_SECOND_TRAINING
    )
    minutes = (evals * SECONDS_PER_COMPLETION + train_s) / 60 + 1
    source = (f"mines {commits} commits of this repository" if commits is not None
              else "uses the given data")  # fmt: skip
    return (
        f"cmc train: {source} (newest 10% to score on), scores the current model on up to "
        f"{opts.eval_limit} of them at 0/25/50% typed, fine-tunes it for {opts.train.max_steps} steps of "
        f"{opts.train.global_batch_size} on {opts.nproc} process(es), scores it again and installs it "
        f"only if it is better; roughly {minutes:.0f} minutes here (resumable: run it again after Ctrl-C)"
    )


def report(result: dict) -> str:
    lines = [
        f"{'typed':<8}{'EM@1 before':>13}{'EM@1 after':>12}{'B-Norm before':>15}{'B-Norm after':>14}"
    ]
    for key in result["before"]:
        b, a = result["before"][key], result["after"][key]
        lines.append(
            f"{key.split('@')[1]:<8}{b['EM@1']:>13.2f}{a['EM@1']:>12.2f}{b['B-Norm']:>15.2f}{a['B-Norm']:>14.2f}"
        )
    if result.get("installed"):
        lines.append(f"this repository now uses {result['installed']}")
    elif result.get("not_installed", "").startswith("it did not beat"):
        lines.append(f"not installed: {result['not_installed']} (--force installs it anyway)")
    elif result.get("not_installed"):
        lines.append(f"not installed: {result['not_installed']}")
    if result.get("cpu_seconds") is not None:
        lines.append(
            f"{result['steps']} steps, {result['cpu_seconds'] / 60:.1f} CPU-minutes in all"
        )
    return "\n".join(lines)
