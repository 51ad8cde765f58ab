"""What more the chooser (`cmc.recalled.choose`) could know: every option it weighs, with what
might tell a right one from a wrong one, dumped once; then its weights refitted with each such
feature, judged leaving one repository out.

    python bench/bench_chooser.py --dump OUT.jsonl DATA --split validation --repos SNAPSHOTS
    python bench/bench_chooser.py --fit OUT.jsonl

``--dump`` completes ``--per-repo`` commits of each repository of ``--split`` (not those of the
split's first 340, which the tuning figures score) at 0 / 25 / 50% typed exactly as cmc does, and
writes the model's candidates and the memory's (up to 5 subjects, 12 continuations, 4 infix
matches) with, for each: whether the recalled commit has the same author, how recent it is, how
many of its words the diff holds, and the model's own log-probability of its text (teacher-forced
on the completion's prompt). ``--fit`` prints B-Norm at 0 / 25 / 50% typed of the option each
variant picks (ridge, λ 1, fitted on all repositories but the one scored), beside the shipped
weights, the model's first candidate and the best option (the bound of any chooser).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATIOS = (0.0, 0.25, 0.5)
OFFERED = {"nearest": 5, "prefix": 12, "infix": 4}  # more than shipped: variants take fewer
_WORDS = re.compile(r"\w+")


def teacher_forced(lm, context, typed: str, texts: list[str], most: int = 24) -> list[float]:
    """The model's mean log-probability per token of each continuation (and its end)."""
    from cmc.complete import recall_section
    from cmc.decoding.beam import _log_softmax
    from cmc.prompt import build_prompt, split_typed

    head, tail = split_typed(typed)
    prompt = build_prompt(lm.tokenizer, context.diff, context.history, head, finished=False,
                          budget=lm.budget, file_history=context.file_history,
                          recalled=recall_section(context, lm.budget))  # fmt: skip
    eos = lm.model.eos_id if getattr(lm.model, "eos_id", None) is not None else lm.tokenizer.eos_token_id  # fmt: skip
    seqs = [[*lm.tokenizer.encode(tail + t, add_special_tokens=False)[:most], eos] for t in texts]
    if not seqs:
        return []
    state, logits = lm.model.prefill(None, prompt.input_ids)
    longest, k = max(map(len, seqs)), len(seqs)
    search = lm.model.beams(state, longest)
    logp = np.repeat(_log_softmax(np.asarray(logits, np.float32)[None, :]), k, axis=0)
    total = np.zeros(k)
    for step in range(longest):
        for i, s in enumerate(seqs):
            if step < len(s):
                total[i] += logp[i, s[step]]
        if step + 1 == longest:
            break
        tokens = np.array([s[step] if step < len(s) else eos for s in seqs])
        order = np.zeros(k, np.int64) if step == 0 else np.arange(k)
        logp = _log_softmax(np.asarray(lm.model.step(search, order, tokens), np.float32))
    return [float(total[i] / len(s)) for i, s in enumerate(seqs)]


def matches(r, text: str, typed: str) -> bool:
    """Whether the recalled suggestion ``r`` came from the message ``text`` (one the chooser
    repaired, `cmc.recalled.fitted`, is not found: its author and age stay unknown)."""
    from cmc.recalled import subject_or_body

    text = subject_or_body(text, typed)
    return r.continuation in text if r.kind == "infix" else text == r.message


def dump(data: str, split: str, repos: str, per_repo: int, out: Path) -> None:
    import random

    from cmc import recalled
    from cmc.training.evaluate import load_split, sample_rows

    rows = load_split(data, split)
    scored = {r["hash"] for r in sample_rows(rows, 340, seed=0)}
    by_repo = defaultdict(list)
    for r in rows:
        if r["hash"] not in scored:
            by_repo[r["repo"]].append(r)
    rng = random.Random(1)
    sample = [r for repo in sorted(by_repo)
              for r in rng.sample(by_repo[repo], min(per_repo, len(by_repo[repo])))]  # fmt: skip
    seen = recalled.choose
    caught: dict = {}

    def spy(model, offered, typed, history, n):  # what cmc's own completion hands the chooser
        caught["options"] = model, offered, history
        return seen(model, offered, typed, history, n)

    shipped = recalled.PER_KIND
    recalled.choose, recalled.PER_KIND = spy, dict(OFFERED)
    try:
        _dump_rows(sample, repos, out, caught)
    finally:  # `fit` in the same process weighs as cmc does
        recalled.choose, recalled.PER_KIND = seen, shipped


def _dump_rows(sample: list[dict], repos: str, out: Path, caught: dict) -> None:
    from cmc.complete import complete_context, context_from_row
    from cmc.decoding import DecodeSettings
    from cmc.memory import RowMemories
    from cmc.model import load_model
    from cmc.settings import BUNDLED_MODEL
    from cmc.training.evaluate import typed_prefix
    from cmc.training.mine import find_repo

    lm, memories = load_model(str(BUNDLED_MODEL)), RowMemories()
    settings = DecodeSettings(num_beams=5, max_new_tokens=15)  # as bench_trust and cmc eval
    started = time.time()
    with out.open("w") as f:
        for n, row in enumerate(sample):
            found = find_repo(row["repo"], repos)
            if found is None:
                continue
            context = context_from_row({**row, "repository": str(found)}, True, memories)
            diff_words = set(_WORDS.findall(context.diff.lower()))
            recall, memory = context.recall, context.recall.memory
            for ratio in RATIOS:
                typed = typed_prefix(row["message"], ratio)
                caught.clear()
                complete_context(lm, context, typed, settings)
                if "options" not in caught:
                    continue
                model, offered, history = caught["options"]
                meta = []
                for r in offered:  # the commit it came from: same author? how recent?
                    i = next((int(i) for i in recall.order[:5000] if matches(r, memory.messages[i], typed)), None)  # fmt: skip
                    newer = None if i is None else float((memory.times[recall.order] > memory.times[i]).mean())  # fmt: skip
                    meta.append([None if i is None else memory.authors[i] == recall.author, newer])
                texts = [c.continuation for c in model] + [r.continuation for r in offered]
                words = [_WORDS.findall(t.lower()) for t in texts]
                record = {
                    "repo": row["repo"], "ratio": ratio, "typed": typed,
                    "target": row["message"][len(typed) :], "history": history[-10:],
                    "model": [[c.message, c.continuation, c.score] for c in model],
                    "offered": [[r.message, r.continuation, r.similarity, r.kind] for r in offered],
                    "meta": meta,
                    "overlap": [sum(w in diff_words for w in ws) / len(ws) if ws else 0.0 for ws in words],
                    "teacher": teacher_forced(lm, context, typed, texts),
                }  # fmt: skip
                f.write(json.dumps(record) + "\n")
            if n % 20 == 0:
                print(f"{n}/{len(sample)} commits, {time.time() - started:.0f} s", flush=True)


def fit(path: Path) -> None:
    from cmc import recalled
    from cmc.decoding import Candidate
    from cmc.recalled import Recalled
    from cmc.training.evaluate import b_norm

    records = [json.loads(line) for line in path.open()]
    bnorm = functools.cache(b_norm)  # each variant scores the same options again

    def extra_none(o, info):
        return []

    def author(o, info):
        same, newer = info["meta"] if o.kind != "model" else (None, None)
        memory = o.kind != "model"
        return [float(bool(same)) * memory, (1 - (0.5 if newer is None else newer)) * memory]

    def overlap(o, info):
        return [info["overlap"]]

    def teacher(o, info):
        return [info["teacher"]]

    def everything(o, info):
        return author(o, info) + overlap(o, info) + teacher(o, info)

    def examples(per_kind: dict, extra) -> list:
        recalled.PER_KIND = per_kind
        out = []
        for d in records:
            model = [Candidate(*m) for m in d["model"]]
            offered = [Recalled(*r) for r in d["offered"]]
            infos = {("model", i): {"overlap": d["overlap"][i], "teacher": d["teacher"][i]}
                     for i in range(len(model))}  # fmt: skip
            for j, r in enumerate(offered):
                k = len(model) + j
                infos[r.message, r.kind] = {"meta": d["meta"][j], "overlap": d["overlap"][k],
                                            "teacher": d["teacher"][k]}  # fmt: skip
            opts = recalled.options(model, offered, d["typed"])
            if not opts:
                continue
            base = recalled._features(opts, d["history"])
            rows = []
            for o, f in zip(opts, base):
                info = infos[("model", o.rank) if o.kind == "model" else (o.candidate.message, o.kind)]  # fmt: skip
                rows.append(f[:-1] + extra(o, info) + f[-1:])
            labels = [bnorm(o.candidate.continuation, d["target"]) for o in opts]
            out.append((d["repo"], d["ratio"], np.array(rows), np.array(labels)))
        return out

    def ridge(items) -> np.ndarray:
        x = np.vstack([e[2] for e in items])
        y = np.concatenate([e[3] for e in items])
        return np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)

    def scores(items, picks) -> str:
        """B-Norm per typed share of the options ``picks`` (an index per item)."""
        got = [(e[1], e[3][i]) for e, i in zip(items, picks)]
        return " / ".join(f"{np.mean([s for r, s in got if r == ratio]):5.2f}" for ratio in RATIOS)  # fmt: skip

    def by(items, w) -> list[int]:
        return [int(np.argmax(e[2] @ w)) for e in items]

    def left_out(items) -> str:
        picks = [0] * len(items)
        for held in sorted({e[0] for e in items}):
            w = ridge([e for e in items if e[0] != held])
            for i, e in enumerate(items):
                if e[0] == held:
                    picks[i] = by([e], w)[0]
        return scores(items, picks)

    shipped = dict(recalled.PER_KIND)
    base = examples(shipped, extra_none)
    print(f"{len(records)} completions; B-Norm at 0 / 25 / 50% typed of the option picked")
    print(f"{'the first of the model':<44} {scores(base, [0] * len(base))}")
    print(f"{'the best option (any chooser bound)':<44} {scores(base, [int(np.argmax(e[3])) for e in base])}")  # fmt: skip
    print(f"{'the shipped weights':<44} {scores(base, by(base, np.array(recalled.WEIGHTS)))}")
    for per_kind in (shipped, dict(OFFERED)):
        counts = "/".join(str(per_kind[k]) for k in ("nearest", "prefix", "infix"))
        for name, extra in (("refitted", extra_none), ("+ same author, recency", author),
                            ("+ share of words in the diff", overlap),
                            ("+ the model's log-probability", teacher), ("+ all of these", everything)):  # fmt: skip
            print(
                f"{name + ' (' + counts + ')':<44} {left_out(examples(per_kind, extra))}",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dump", nargs=2, metavar=("OUT", "DATA"))
    ap.add_argument("--split", default="validation")
    ap.add_argument("--repos", default="/work/.mirror")
    ap.add_argument("--per-repo", type=int, default=25)
    ap.add_argument("--fit", type=Path)
    args = ap.parse_args()
    if args.dump:
        dump(args.dump[1], args.split, args.repos, args.per_repo, Path(args.dump[0]))
    if args.fit:
        fit(args.fit)
    if not (args.dump or args.fit):
        ap.error("give --dump OUT DATA or --fit OUT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
