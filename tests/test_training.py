"""The trainer under real torchrun (gloo, several processes): universal checkpoints, resume, export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cmc_env

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6

pytestmark = pytest.mark.slow  # torchrun / daemons: deselect with -m 'not slow'


def torchrun(nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
    ]


def train_cmd(data: Path, tok: Path, out: Path, nproc: int, *extra: str) -> list[str]:
    cmd = torchrun(nproc)
    cmd += [
        "-m",
        "cmc.training.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        "tiny",
        "--tokenizer",
        str(tok),
    ]
    cmd += [
        "--max-steps",
        str(STEPS),
        "--global-batch-size",
        "6",
        "--micro-batch-size",
        "2",
        "--save-every",
        "2",
    ]
    cmd += [
        "--warmup-steps",
        "2",
        "--lr",
        "1e-3",
        "--no-progress",
        "--eval-examples",
        "6",
        "--seed",
        "7",
        *extra,
    ]
    return cmd


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**cmc_env(), "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines}


def dump(run_dir: Path, nproc: int, target: Path, *extra: str) -> dict:
    cmd = torchrun(nproc)
    cmd += [str(ROOT / "tests" / "dump_checkpoint.py"), str(run_dir), str(target), *extra]
    run(cmd)
    return torch.load(target, weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optim"]["state"], b["optim"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[k][field]), torch.as_tensor(sb[k][field])), (
                k,
                field,
            )


@pytest.fixture(scope="session")
def reference_run(token_data, tmp_path_factory) -> Path:
    """An uninterrupted 2-process DDP run: the yardstick for every resumed run."""
    data, tok = token_data
    out = tmp_path_factory.mktemp("ref") / "run"
    run(train_cmd(data, tok, out, 2))
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    return out


def resumable_copy(reference: Path, tmp_path: Path, name: str) -> Path:
    """The reference run as it was after step 4's checkpoint (step-6 gone, metrics to step 6 kept)."""
    copy = tmp_path / name
    shutil.copytree(reference, copy)
    shutil.rmtree(copy / "checkpoints" / f"step-{STEPS}")
    return copy


def test_saved_at_2_loads_bitwise_at_1_2_3_processes_and_across_ddp_fsdp2(
    reference_run: Path, tmp_path: Path
):
    at4 = resumable_copy(reference_run, tmp_path, "at4")
    base = dump(at4, 2, tmp_path / "ddp2.pt")
    assert base["step"] == 4 and base["layout"] == "ddp"
    for nproc, extra in ((1, ()), (3, ()), (2, ("--fsdp",)), (3, ("--fsdp",))):
        other = dump(at4, nproc, tmp_path / f"{nproc}{extra}.pt", *extra)
        assert other["layout"] == ("single" if nproc == 1 else ("fsdp2" if extra else "ddp"))
        assert_same_state(base, other)


@pytest.mark.parametrize(
    ("nproc", "extra", "exact"), [(2, (), True), (1, (), False), (3, ("--fsdp",), False)]
)
def test_resumed_losses_match_the_uninterrupted_run(
    reference_run, token_data, tmp_path, nproc, extra, exact
):
    data, tok = token_data
    resumed = resumable_copy(reference_run, tmp_path, f"resume{nproc}")
    result = run(train_cmd(data, tok, resumed, nproc, *extra))
    assert "resumed from" in result.stderr and "step 4" in result.stderr
    ref, got = losses(reference_run), losses(resumed)
    assert sorted(got) == list(range(1, STEPS + 1))  # steps 5–6 again, none repeated in the log
    for step in (5, 6):
        if exact:
            assert got[step] == ref[step]
        else:
            assert abs(got[step] - ref[step]) < 1e-6, (step, got[step], ref[step])


def kill_run(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own)."""
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmdline:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_during_save_keeps_previous_checkpoint_and_resume_is_bitwise(
    reference_run, token_data, tmp_path
):
    data, tok = token_data
    out = tmp_path / "killed"
    # Stretch the moment between the shards (and .metadata) and trainer.json, to kill a save in it.
    site = tmp_path / "slow-save"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "from cmc.training.checkpoint import CheckpointManager\n"
        "finish = CheckpointManager._finish\n"
        "def slow(self, folder, info):\n"
        "    time.sleep(120)\n"
        "    finish(self, folder, info)\n"
        "CheckpointManager._finish = slow\n"
    )
    env = {**cmc_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site)}
    proc = subprocess.Popen(
        train_cmd(data, tok, out, 2),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step-2" / ".metadata").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(0.5)
        kill_run(proc, out)  # shards and .metadata written, trainer.json not yet
    finally:
        kill_run(proc, out)
    assert not (out / "checkpoints" / "step-2" / "trainer.json").exists()
    from cmc.training.checkpoint import step_dirs

    assert step_dirs(out / "checkpoints") == []  # step-2 is not valid: resume must start over
    shutil.rmtree(out / "checkpoints" / "step-2")
    shutil.copytree(reference_run / "checkpoints" / "step-4", out / "checkpoints" / "step-4")
    (out / "checkpoints" / "step-5").mkdir()  # a save that died before writing anything
    result = run(train_cmd(data, tok, out, 2))
    assert "step 4" in result.stderr
    ref, got = losses(reference_run), losses(out)
    assert got[5] == ref[5] and got[6] == ref[6]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(reference_run, token_data, tmp_path):
    data, tok = token_data
    copy = tmp_path / "corrupt"
    shutil.copytree(reference_run, copy)
    shard = next((copy / "checkpoints" / f"step-{STEPS}").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    result = run(train_cmd(data, tok, copy, 1, "--max-steps", "7"))
    assert f"step-{STEPS} is unreadable" in result.stderr
    assert "resumed from" in result.stderr and "step 4" in result.stderr
    assert max(losses(copy)) == 7


def test_checkpoint_info_and_export_load_in_cmc_complete(reference_run, tmp_path):
    info = subprocess.run(
        ["cmc", "checkpoint", "info", str(reference_run / "checkpoints")],
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert (meta["step"], meta["world_size"], meta["layout"]) == (STEPS, 2, "ddp")
    assert meta["parameters"] > 10_000
    model = tmp_path / "exported"
    exp = subprocess.run(
        ["cmc", "checkpoint", "export", str(reference_run), "--out", str(model)],
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert exp.returncode == 0, exp.stderr
    assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    # checked on export: the numpy runtime gives transformers' logits for this model
    meta = json.loads((model / "cmc.json").read_text())
    verdict = meta["runtime"]
    assert verdict["name"] == "numpy" and verdict["max_logit_diff"] < 1e-3

    # and int8 products against float32 on the same probe: the precision completion uses
    def kept(precision: str) -> bool:
        check = verdict.get(precision)
        return bool(check) and check["same_top_token"] and check["logit_corr"] >= 0.995

    assert meta["precision"] == next((p for p in ("int8", "int8w") if kept(p)), "float32")
    from cmc.model import runtime_for

    assert runtime_for(str(model)).startswith("numpy")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps(
            {"id": 1, "diff": "src/parser.py\n+ parser_1 = build_parser(1)", "prefix": "Fix pa"}
        )
        + "\n"
    )
    done = subprocess.run(
        [
            "cmc",
            "complete",
            "--model",
            str(model),
            "--batch",
            str(rows),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--max-new-tokens",
            "4",
        ],
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text())["id"] == 1


def test_disk_full_during_save_keeps_the_previous_checkpoint(token_data, tmp_path):
    data, tok = token_data
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    # Room for the initial model and one checkpoint, not two: the second save runs out of space.
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2400k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = mnt / "run"
        env = {**cmc_env(), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(train_cmd(data, tok, out, 1), cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert result.returncode != 0, result.stderr[-2000:]  # stops: training on could not save
        assert result.stderr.lower().count("no space left on device") == 1, result.stderr[-2000:]
        assert max(losses(out)) < STEPS
        from cmc.training.checkpoint import step_dirs

        assert [s for s, _ in step_dirs(out / "checkpoints")] == [2]
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
    finally:
        subprocess.run(["umount", str(mnt)])
    result = run(train_cmd(data, tok, moved, 1))
    assert "step 2" in result.stderr


def test_every_checkpoint_unloadable_is_an_error_not_a_restart(reference_run, token_data, tmp_path):
    data, tok = token_data
    copy = tmp_path / "unloadable"
    shutil.copytree(reference_run, copy)
    for step_dir in (copy / "checkpoints").glob("step-*"):
        for shard in step_dir.glob("*.distcp"):
            shard.write_bytes(b"not a checkpoint")
    env = {**cmc_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        train_cmd(data, tok, copy, 1),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "no checkpoint in" in result.stderr and "loads" in result.stderr
    assert len(list((copy / "checkpoints").glob("step-*"))) == 2  # nothing purged
    assert losses(copy) == losses(reference_run)  # and nothing trained from step 0


def test_resume_with_another_seed_is_refused_with_the_flag_named(
    reference_run, token_data, tmp_path
):
    data, tok = token_data
    copy = resumable_copy(reference_run, tmp_path, "reseeded")
    cmd = [*train_cmd(data, tok, copy, 1), "--seed", "8"]
    env = {**cmc_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--seed was 7" in result.stderr


def test_resume_with_another_batch_size_continues_from_the_consumed_samples(
    reference_run, token_data, tmp_path
):
    data, tok = token_data
    copy = resumable_copy(reference_run, tmp_path, "rebatched")
    run([*train_cmd(data, tok, copy, 1), "--global-batch-size", "3", "--max-steps", "7"])
    info = json.loads(
        next((copy / "checkpoints").glob("step-7")).joinpath("trainer.json").read_text()
    )
    assert info["consumed"] == 4 * 6 + 3 * 3  # 24 samples at step 4, then 3 a step
    assert info["config"]["global_batch_size"] == 3 and info["config"]["seed"] == 7


def test_training_only_the_last_layers_leaves_the_others_as_they_were(token_data, tmp_path):
    """--train-layers 1: the cheaper fine-tune changes the last layer and the head only."""
    from safetensors.torch import load_file

    data, tok = token_data
    out = tmp_path / "last-layer"
    cmd = train_cmd(data, tok, out, 1, "--train-layers", "1")
    cmd[cmd.index("--max-steps") + 1] = "2"
    run(cmd)
    before = load_file(str(out / "model_init" / "model.safetensors"))
    exported = tmp_path / "exported"
    run(["cmc", "checkpoint", "export", str(out), "--out", str(exported)])
    after = load_file(str(exported / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    last = max(int(k.split(".")[2]) for k in before if k.startswith("model.layers."))
    tied = json.loads((out / "model_init" / "config.json").read_text()).get("tie_word_embeddings")
    allowed = (f"model.layers.{last}.", "model.norm", "lm_head")
    allowed += ("model.embed_tokens",) if tied else ()  # a tied head is the embedding
    assert changed and all(k.startswith(allowed) for k in changed), changed
    assert any(k.startswith(f"model.layers.{last}.") for k in changed)
    assert not any(k.startswith("model.layers.0.") for k in changed)


def test_lora_trains_adapters_resumes_at_two_processes_and_exports_merged(token_data, tmp_path):
    """--lora-rank 4: only the adapters train (the base weights stay in the checkpoint as they
    were), a run stopped at one process resumes at two, and the export folds the adapters into
    plain Llama weights that differ from the start only in the adapted projections."""
    from safetensors.torch import load_file

    pytest.importorskip("peft")
    data, tok = token_data
    out = tmp_path / "lora"
    cmd = train_cmd(data, tok, out, 1, "--lora-rank", "4")
    cmd[cmd.index("--max-steps") + 1] = "2"
    run(cmd)
    cmd = train_cmd(data, tok, out, 2, "--lora-rank", "4")
    cmd[cmd.index("--max-steps") + 1] = "4"
    assert "resumed from" in run(cmd).stderr
    assert max(losses(out)) == 4
    before = load_file(str(out / "model_init" / "model.safetensors"))
    exported = tmp_path / "exported"
    run(["cmc", "checkpoint", "export", str(out), "--out", str(exported)])
    after = load_file(str(exported / "model.safetensors"))
    assert after.keys() == before.keys()  # no adapter left: a plain model cmc's runtime runs
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    assert changed and all(
        k.split(".")[-2]
        in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for k in changed
    ), changed


def test_throughput_counts_every_step_since_the_last_report():
    """With --log-every 5 the rate once divided one step's tokens by five steps' time."""
    from cmc.training.train import Throughput

    ticks = iter([0.0, 5.0, 7.0])
    rate = Throughput(clock=lambda: next(ticks))
    for _ in range(5):  # five steps of 1,000 tokens in 5 s
        rate.add(1_000)
    assert rate.take() == 1_000.0
    rate.add(3_000)  # then one step in 2 s: the window starts again
    assert rate.take() == 1_500.0
