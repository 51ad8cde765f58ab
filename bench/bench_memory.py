"""The repository memory's figures: build, update, lookup, disk, and what the hook and a keystroke
cost with a memory of 20,000 commits.

    python bench/bench_memory.py --repo SNAPSHOT [--more SNAPSHOT ...]
    python bench/bench_memory.py --quality DATA --repos SNAPSHOTS [--limit 600]

* build: a memory of ``--repo``'s newest 5,000 commits from nothing (target ≤ 60 s on 2 cores);
* update after one new commit: built up to HEAD~1, then brought to HEAD (target ≤ 1 s);
* a 20,000-commit memory (``--repo`` and ``--more`` memories joined, real commits of real
  repositories): its size on disk (target ≤ 50 MB), its load, and a lookup (target ≤ 20 ms), the
  median and worst of 50 lookups with real changes as queries;
* the hook (daemon warm, answer not prefetched) and keystrokes, in a repository with that memory,
  against the same repository without one (`bench_runtime`'s measurements; targets: hook ≤ 150 ms,
  keystroke p95 ≤ 50 ms).

With ``--fit DATA --split validation --repos SNAPSHOTS``: fit the chooser's weights on repositories
no model has seen (`fit`). With ``--quality``: `cmc eval` of the bundled model alone and with each thing the memory offers on
its own, then all of them (`ARMS`), on the test repositories (``--repos``: their clones or
snapshots), history on, 0 / 25 / 50% typed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def build_from_nothing(repo: Path, tmp: Path, limit: int) -> tuple[float, int]:
    from cmc import memory as mem

    store = tmp / "build"
    started = time.perf_counter()
    stats = mem.update(repo, store, limit=limit)
    return time.perf_counter() - started, stats.commits


def update_after_one(repo: Path, tmp: Path, limit: int) -> tuple[float, int]:
    from cmc import memory as mem

    store = tmp / "update"
    mem.update(repo, store, limit=limit, tip="HEAD~1")
    started = time.perf_counter()
    stats = mem.update(repo, store, limit=limit)
    return time.perf_counter() - started, stats.added


def joined(repos: list[Path], tmp: Path, total: int):
    """A memory of ``total`` real commits from these repositories' memories, as one."""
    from cmc import memory as mem

    parts = []
    for repo in repos:
        store = tmp / f"part-{repo.parent.name}"
        mem.update(repo, store, limit=total)
        parts.append(mem.Memory.load(mem.memory_path(store)))
    whole = mem.Memory()
    for part in parts:
        rows = []
        for i in range(len(part)):
            a, b = part.indptr[i], part.indptr[i + 1]
            feats = dict(zip(part.features[a:b].tolist(), part.counts[a:b].tolist()))
            rows.append((part.shas[i], int(part.times[i]), part.authors[i], part.messages[i],
                         Counter(feats)))  # fmt: skip
        whole = whole.extend(rows)
        if len(whole) >= total:
            break
    keep = np.arange(len(whole) - min(total, len(whole)), len(whole))
    return whole.keep(keep)


def lookups(memory, repo: Path, n: int = 50) -> list[float]:
    from cmc import memory as mem
    from cmc.diffs import parse_patch_text
    from cmc.gitlog import log_commits

    shas = mem.newest_commits(repo, n)
    times = []
    for commit in log_commits(repo, shas, ("-U0",)):
        query = mem.diff_features(parse_patch_text(commit.patch or ""))
        started = time.perf_counter()
        recall = mem.recall(memory, query)
        recall.nearest(8)
        recall.continuing("Fix ", 3)
        times.append(time.perf_counter() - started)
    return times


def hook_and_keys(memory, tmp: Path, reps: int) -> dict:
    import bench_runtime as rt

    from cmc import memory as mem
    from cmc.settings import BUNDLED_MODEL

    rt.CMC[:] = rt.user_install(tmp)
    out = {}
    for arm in ("without a memory", "with a 20,000-commit memory"):
        repo = rt.make_repo(tmp / arm.replace(" ", "-").replace(",", ""), str(BUNDLED_MODEL))
        if "with" in arm:  # as the daemon would have built it, for this HEAD
            memory.meta["tip"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo,
                                                capture_output=True, text=True).stdout.strip()  # fmt: skip
            memory.save(mem.memory_path(repo / ".git"))
        sock = tmp / f"run-{len(out)}" / "cmc.sock"
        env = {**os.environ, "CMC_SOCKET": str(sock), "CMC_PREFETCH": "0"}
        env.pop("CMC_NO_DAEMON", None)
        subprocess.run([*rt.CMC, "hook", "install"], cwd=repo, env=env, check=True,
                       capture_output=True)  # fmt: skip
        daemon = rt.with_daemon(env, sock)
        try:
            hook = rt.warm_hook(repo, env, reps)
            keys, _ = rt.keystrokes(repo, sock)
        finally:
            daemon.kill()
        out[arm] = (statistics.median(hook), statistics.median(keys), rt.p95(keys))
    return out


ARMS = {  # what the memory offers, per arm (cmc.recalled.OFFERED)
    "model alone": None,
    "+ messages continuing the typed text (prefix)": {"prefix"},
    "+ the most alike commits' subjects, nothing typed (nearest)": {"nearest"},
    "+ messages continuing the typed text's last words (infix)": {"infix"},
    "+ all three, chosen by the fitted estimate (shipped)": {"prefix", "nearest", "infix"},
}


def quality(data: str, repos: str, limit: int, out: Path, split: str) -> None:
    """`cmc eval` on the test repositories, history on, 0 / 25 / 50% typed, once per arm; each
    arm resumes from its own predictions."""
    from cmc import knn, recalled
    from cmc.decoding import DecodeSettings
    from cmc.settings import BUNDLED_MODEL
    from cmc.training.evaluate import run_eval

    settings = DecodeSettings(num_beams=5, max_new_tokens=15)
    rows = []
    knn.ON = False  # the offers one by one; the memory's votes: bench/bench_trust.py
    for name, offered in ARMS.items():
        recalled.OFFERED = frozenset(offered or ())
        folder = out / name.split("(")[-1].rstrip(")").replace(" ", "-")
        result = run_eval(data, str(BUNDLED_MODEL), [0.0, 0.25, 0.5], [True], limit, folder,
                          split=split, settings=settings, progress=False, resume=True,
                          repos=repos if offered else None)  # fmt: skip
        s = result["scores"]
        cells = [f"{s[f'history@{r:g}']['B-Norm']:.2f} / {s[f'history@{r:g}']['EM@1']:.1f}"
                 for r in (0.0, 0.25, 0.5)]  # fmt: skip
        rows.append(f"| {name} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    print(
        f"\n{limit} commits of the {split} split, history on; B-Norm / EM@1 at 0 / 25 / 50% typed"
    )
    print("| arm | 0% | 25% | 50% |\n|---|---|---|---|\n" + "\n".join(rows))


def fit(
    data: str, repos: str, per_repo: int, out: Path, split: str, model: str | None = None
) -> None:
    """Fit the chooser's weights (`cmc.recalled.WEIGHTS`): for ``per_repo`` commits of each
    repository of ``split`` (repositories no model has seen, never the test ones), the model's
    candidates and the memory's at 0 / 25 / 50% typed, each scored by B-Norm against the real
    message; a ridge regression on `cmc.recalled._features`, checked leaving one repository out.
    ``model``: a model folder other than the bundled one (its weights go in its ``cmc.json`` as
    ``chooser``: each model's scores are on their own scale)."""
    import json
    import random
    from collections import defaultdict

    from cmc import recalled
    from cmc.complete import complete_context, context_from_row
    from cmc.decoding import DecodeSettings
    from cmc.memory import RowMemories
    from cmc.model import load_model
    from cmc.settings import BUNDLED_MODEL
    from cmc.training.evaluate import b_norm, load_split, typed_prefix
    from cmc.training.mine import find_repo

    by_repo = defaultdict(list)
    for row in load_split(data, split):
        by_repo[row["repo"]].append(row)
    rng = random.Random(0)
    sample = [r for repo in sorted(by_repo) for r in rng.sample(by_repo[repo], min(per_repo, len(by_repo[repo])))]  # fmt: skip
    lm, memories = load_model(model or str(BUNDLED_MODEL)), RowMemories()
    out.mkdir(parents=True, exist_ok=True)
    dump = out / "fit-options.jsonl"
    examples = []  # (repo, ratio, features, labels)
    with dump.open("w") as f:
        for row in sample:
            found = find_repo(row["repo"], repos)
            if found is None:
                continue
            context = context_from_row({**row, "repository": str(found)}, True, memories)
            for ratio in (0.0, 0.25, 0.5):
                typed = typed_prefix(row["message"], ratio)
                target = row["message"][len(typed) :]
                offered, recalled.OFFERED = recalled.OFFERED, frozenset()
                try:  # the model's candidates (decoded with the memory's votes, `cmc.knn`)
                    model = complete_context(
                        lm, context, typed, DecodeSettings(num_candidates=5)
                    ).candidates
                finally:
                    recalled.OFFERED = offered
                opts = recalled.options(model, recalled.candidates(context.recall, typed), typed)
                labels = [b_norm(o.candidate.continuation, target) for o in opts]
                features = recalled._features(opts, context.history)
                examples.append((row["repo"], ratio, features, labels))
                f.write(json.dumps({"repo": row["repo"], "ratio": ratio, "kinds": [o.kind for o in opts],
                                    "features": features, "labels": labels}) + "\n")  # fmt: skip

    def ridge(items) -> np.ndarray:
        x = np.array([v for _, _, fs, _ in items for v in fs])
        y = np.array([v for _, _, _, ls in items for v in ls])
        return np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)

    names = sorted({e[0] for e in examples})
    for ratio in (0.0, 0.25, 0.5):
        chosen, first = [], []
        for held in names:
            w = ridge([e for e in examples if e[0] != held])
            for repo, r, fs, ls in examples:
                if repo == held and r == ratio and ls:
                    chosen.append(ls[int(np.argmax(np.array(fs) @ w))])
                    first.append(ls[0])  # the model's first candidate
        print(f"{int(ratio * 100)}% typed, one repository left out: chosen {np.mean(chosen):.2f} "
              f"B-Norm, the model's first {np.mean(first):.2f} ({len(chosen)} commits)")  # fmt: skip
    print("WEIGHTS =", tuple(round(float(v), 3) for v in ridge(examples)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, help="a repository of 5,000+ commits")
    ap.add_argument("--more", type=Path, nargs="*", default=[], help="more, to join 20,000")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quality", metavar="DATA", help="processed data: score the arms instead")
    ap.add_argument("--repos", help="with --quality: the folder of the rows' repositories")
    ap.add_argument("--limit", type=int, default=600, help="with --quality: commits scored")
    ap.add_argument("--split", default="test", help="with --quality: the split scored")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-memory")
    ap.add_argument("--fit", metavar="DATA", help="fit the chooser on DATA's --split instead")
    ap.add_argument("--per-repo", type=int, default=15, help="with --fit: commits per repository")
    ap.add_argument("--model", help="with --fit: the model folder (default: the bundled model)")
    args = ap.parse_args()
    if args.fit:
        fit(args.fit, args.repos, args.per_repo, args.out, args.split, args.model)
        return 0
    if args.quality:
        quality(args.quality, args.repos, args.limit, args.out, args.split)
        return 0
    if args.repo is None:
        ap.error("--repo is needed (or --quality)")
    from cmc import memory as mem

    tmp = Path(tempfile.mkdtemp(prefix="cmc-bench-memory-"))
    try:
        seconds, commits = build_from_nothing(args.repo, tmp, 5_000)
        print(f"build, {commits} commits from nothing:          {seconds:7.1f} s   (target ≤ 60 s)")
        seconds, added = update_after_one(args.repo, tmp, 5_000)
        print(
            f"update after {added} new commit:                  {seconds:7.2f} s   (target ≤ 1 s)"
        )
        memory = joined([args.repo, *args.more], tmp, 20_000)
        memory.save(tmp / "joined.npz")
        size = (tmp / "joined.npz").stat().st_size / 1e6
        print(f"a {len(memory):,}-commit memory on disk:         {size:7.1f} MB  (target ≤ 50 MB)")
        started = time.perf_counter()
        loaded = mem.Memory.load(tmp / "joined.npz")
        loaded._inverted()
        print(
            f"its load and index:                          {time.perf_counter() - started:7.3f} s"
        )
        times = lookups(loaded, args.repo)
        print(f"lookup, median / worst of {len(times)}:              "
              f"{1000 * statistics.median(times):5.1f} / {1000 * max(times):.1f} ms (target ≤ 20 ms)")  # fmt: skip
        for arm, (hook, key, key95) in hook_and_keys(loaded, tmp, args.reps).items():
            print(f"{arm:<30} hook {1000 * hook:5.0f} ms, keystroke median {1000 * key:4.0f} ms, "
                  f"p95 {1000 * key95:4.0f} ms")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
