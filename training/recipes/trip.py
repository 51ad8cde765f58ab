"""A GPU trip that continues the shipped model, and the judgement that decides whether it is kept.

GPU time comes in short trips, so a trip trains on packs (`cmc.training.pack`) the model has not
seen, starting from its weights, and the model's ``cmc.json`` carries a ledger of everything that
went into it: which packs and how many of their examples, the objective and the config of every
trip, and each trip's verdict. Two commands:

    # on the GPU machine (one call; --seconds of training within it)
    python -m cmc.training.recipes.trip train --packs PACKS --base cmc/default_model --out OUT \\
        --seconds 420 [--context-loss-weight 0.1]

Unpacks the ``train-*`` packs the base's ledger has not used up (and ``validation-*`` for the
validation loss), probes the throughput, sets the step count to end within ``--seconds`` (a
deadline stops it cleanly either way), fine-tunes from the base's weights with a fresh optimizer
and a short warmup, exports ``OUT/model`` (bf16) with the ledger extended, and reports the
validation loss of the base and of the result on the same examples.

    # back here (the metrics' libraries are not on the GPU machine)
    python -m cmc.training.recipes.trip judge --base cmc/default_model --candidate OUT/model \\
        --data runs/processed --limit 1000 --out OUT/judge

Runs `cmc eval` on the test repositories for both (history on, 0 / 25 / 50 % typed), writes the
side-by-side table, and keeps the candidate (verdict ``kept`` in its ledger) only if it beats the
base by the one rule for "better" (`cmc.training.evaluate.not_better`, shared with `cmc train`);
``--install`` then copies it over the base.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cmc.model import read_model_meta, update_model_meta
from cmc.training.config import TrainConfig
from cmc.training.evaluate import EVAL_RATIOS, JUDGED, not_better
from cmc.training.recipes import launch, probe_rate, steps_within

# The trainer's flags a trip offers, with the trip's defaults.
TRAINER_FLAGS = {"global_batch_size": 128, "micro_batch_size": 64, "lr": 5e-4,
                 "context_loss_weight": 0.0, "eval_examples": 2000, "seed": 42}  # fmt: skip


def ledger_of(model: str | Path) -> dict:
    """A model's ledger (``cmc.json``); an empty one for a model without."""
    ledger = read_model_meta(model).get("ledger") or {}
    return {"examples_seen": 0, "packs": {}, "trips": [], **ledger}


def unseen_packs(pack_dir: Path, prefix: str, ledger: dict) -> list[Path]:
    """The ``PREFIX-*.cmcpack`` packs the ledger has not used up (by content hash, not by name)."""
    from cmc.training.pack import SUFFIX, file_sha256

    used = {sha for sha, p in ledger["packs"].items() if p.get("seen", 0) >= p["examples"]}
    return [p for p in sorted(pack_dir.glob(f"{prefix}-*{SUFFIX}")) if file_sha256(p) not in used]


def validation_loss(model: Path, data: Path, examples: int, micro: int) -> float:
    """Message-token loss of ``model`` on the first ``examples`` validation examples."""
    import torch
    from transformers import AutoModelForCausalLM

    from cmc.training.tokens import TokenDataset
    from cmc.training.train import evaluate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device)
    pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    val = TokenDataset(data, "validation")
    return evaluate(lm, val, examples, 0, 1, micro, pad, device.type == "cuda", device)


def train(args: argparse.Namespace) -> int:
    from cmc.training.checkpoint import find_checkpoint
    from cmc.training.export import export_checkpoint
    from cmc.training.pack import read_pack, tokenizer_fingerprint, unpack

    t0 = time.time()
    out, base = args.out.resolve(), str(Path(args.base).resolve())
    out.mkdir(parents=True, exist_ok=True)
    ledger = ledger_of(base)
    packs = unseen_packs(args.packs, "train", ledger)
    if not packs:
        raise SystemExit(f"{args.packs}: no train-*.cmcpack the base has not already seen")
    from transformers import AutoTokenizer

    want = tokenizer_fingerprint(AutoTokenizer.from_pretrained(base))
    if read_pack(packs[0])[0]["tokenizer"] != want:
        raise SystemExit(f"{packs[0]}: packed for another tokenizer than {base}'s")
    data = out / "data"
    meta = unpack(packs, data, "train")
    validation = sorted(args.packs.glob("validation-*.cmcpack"))
    if validation:
        unpack(validation, data, "validation")
    per_example = meta["tokens"] / meta["examples"]
    print(f"[{time.time() - t0:.0f}s] unpacked {len(packs)} pack(s): {meta['examples']:,} "
          f"examples, {per_example:.0f} tokens each", flush=True)  # fmt: skip

    def config(run: Path, steps: int, warmup: int, seconds: float) -> TrainConfig:
        return TrainConfig(
            data=str(data), out=str(run), base=base, max_steps=steps, warmup_steps=warmup,
            min_lr_ratio=0.1, save_every=max(50, steps // 4), no_progress=True,
            stop_after_seconds=seconds, **TrainConfig.pick(args, TRAINER_FLAGS),
        )  # fmt: skip

    steps = args.steps
    if not steps:
        probe = out / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        launch(config(probe, args.probe_steps, 2, 0), out / "probe.log").wait()
        rate = probe_rate(probe)
        left = args.seconds - (time.time() - t0) - args.reserve_seconds
        steps = steps_within(rate, left, per_example, args.global_batch_size, least=10)
        print(f"[{time.time() - t0:.0f}s] probe: {rate:,.0f} tokens/s → {steps} steps", flush=True)
    run = out / "run"
    left = args.seconds - (time.time() - t0) - args.reserve_seconds
    code = launch(config(run, steps, max(1, min(100, steps // 20)), max(30.0, left)),
                  out / "run.log").wait()  # fmt: skip
    if code != 0:
        raise SystemExit(f"training failed ({code}): see {out / 'run.log'}")
    print(f"[{time.time() - t0:.0f}s] trained", flush=True)

    model = export_checkpoint(run, out / "model.tmp", dtype="bfloat16", max_shard_size="15MB")
    info = json.loads((find_checkpoint(run) / "trainer.json").read_text())
    consumed = int(info["consumed"])
    share = min(1.0, consumed / meta["examples"])  # the order is a shuffle of all packs' examples
    for p in meta["packs"]:
        entry = ledger["packs"].setdefault(p["sha256"], {**p, "seen": 0})
        entry["seen"] = min(p["examples"], entry["seen"] + round(share * p["examples"]))
    ledger["examples_seen"] += consumed
    trip = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": base,
        "packs": [p["name"] for p in meta["packs"]],
        "steps": int(info["step"]),
        "samples": consumed,
        "config": {k: v for k, v in info["config"].items() if k not in ("data", "out", "base")},
        "seconds": round(time.time() - t0),
        "verdict": "unjudged",
    }
    if validation:
        trip["val_loss"] = {
            "base": validation_loss(Path(base), data, args.eval_examples, args.micro_batch_size),
            "trip": validation_loss(model, data, args.eval_examples, args.micro_batch_size),
        }
        print(f"validation loss: base {trip['val_loss']['base']:.4f} → "
              f"{trip['val_loss']['trip']:.4f}", flush=True)  # fmt: skip
    ledger["trips"].append(trip)
    update_model_meta(model, ledger=ledger)
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    model.rename(final)
    print(f"[{time.time() - t0:.0f}s] → {final} ({consumed:,} samples in {trip['steps']} steps)",
          flush=True)  # fmt: skip
    return 0


def judge(args: argparse.Namespace) -> int:
    from cmc.decoding import DecodeSettings
    from cmc.training.evaluate import run_eval

    settings = DecodeSettings(num_beams=5, max_new_tokens=15)
    results = {}
    for name, model in (("base", args.base), ("candidate", args.candidate)):
        results[name] = run_eval(str(args.data), str(model), list(EVAL_RATIOS), [True], args.limit,
                                 args.out / name, settings=settings, resume=True)  # fmt: skip
    rows = ["| typed | base B-Norm / EM@1 | candidate B-Norm / EM@1 |", "|---|---|---|"]
    for ratio in EVAL_RATIOS:
        key = f"history@{ratio:g}"
        b, c = results["base"]["scores"][key], results["candidate"]["scores"][key]
        rows.append(f"| {int(ratio * 100)}% | {b['B-Norm']:.2f} / {b['EM@1']:.1f} | "
                    f"{c['B-Norm']:.2f} / {c['EM@1']:.1f} |")  # fmt: skip
    worse = not_better(results["candidate"]["scores"], results["base"]["scores"])
    verdict = "kept" if not worse else "rejected: not better in " + ", ".join(worse)
    table = "\n".join(rows) + f"\n\n{args.limit or 'all'} test commits, history on; {verdict}\n"
    (args.out / "table.md").write_text(table)
    print(table, end="")
    meta = read_model_meta(args.candidate)
    if meta.get("ledger", {}).get("trips"):
        meta["ledger"]["trips"][-1]["verdict"] = verdict
        meta["ledger"]["trips"][-1]["test"] = {
            k: {m: round(results["candidate"]["scores"][f"history@{r:g}"][m], 2) for m in JUDGED}
            for r in EVAL_RATIOS
            for k in [f"{int(r * 100)}%"]
        }
        update_model_meta(args.candidate, ledger=meta["ledger"])
    if args.install and not worse:
        target = Path(args.base)
        for f in target.iterdir():
            f.unlink()
        for f in Path(args.candidate).iterdir():
            shutil.copy2(f, target / f.name)
        print(f"installed over {target}")
    return 0 if not worse else 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cmc.training.recipes.trip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="on the GPU machine: continue the base on unseen packs")
    t.add_argument("--packs", type=Path, required=True, help="folder of train-*/validation-* packs")
    t.add_argument("--base", required=True, help="model folder to continue (its ledger decides)")
    t.add_argument("--out", type=Path, required=True, help="trip folder: data, run, model")
    t.add_argument("--seconds", type=float, default=420, help="wall time for all of it")
    t.add_argument("--reserve-seconds", type=float, default=60, help="kept for export and checks")
    t.add_argument("--steps", type=int, default=0, help="skip the probe: train this many steps")
    t.add_argument("--probe-steps", type=int, default=20, help="steps of the throughput probe")
    TrainConfig.add_arguments(t, TRAINER_FLAGS)
    j = sub.add_parser("judge", help="here: test-repository scores of base and candidate")
    j.add_argument("--base", required=True, help="the model the candidate must beat")
    j.add_argument("--candidate", required=True, help="the trip's OUT/model")
    j.add_argument("--data", type=Path, required=True, help="processed data with a test split")
    j.add_argument("--limit", type=int, default=1000, help="test commits (a seeded sample)")
    j.add_argument("--out", type=Path, required=True, help="folder for predictions and the table")
    j.add_argument("--install", action="store_true", help="copy a kept candidate over the base")
    args = p.parse_args(argv)
    return train(args) if args.command == "train" else judge(args)


if __name__ == "__main__":
    sys.exit(main())
