"""`cmc eval`: the CommitChronicle completion protocol and metrics, on the hook's own code path.

For each example and context ratio r, the typed text is the first ``int(len(message) * r)``
characters (a partial last word stays partial: decoding must finish it), and only the continuation
is scored against the rest of the message. Completions come from `cmc.complete.complete_rows`,
exactly what ``cmc complete --batch`` and the hook run.

Metrics (×100, averaged over examples; empty targets skipped): B-Norm (sentence BLEU-4, +1
smoothing, lowercased, punctuation split), EditSim (normalized Levenshtein similarity), EM@1/EM@2
(first k words equal; only targets with ≥ k words), and corpus BLEU, ROUGE-L and ChrF. Two more
say whether suggestions are specific: **Copy** — over the examples whose continuation names a
code identifier or a version that the diff adds (`code_tokens`), how often the prediction names
one of them; **Distinct** — the share of distinct whole suggestions (typed + predicted) over the
examples (a model that says the same thing everywhere scores low).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cmc.diffs import process_diff

METRICS = ("B-Norm", "EditSim", "EM@1", "EM@2", "BLEU", "ROUGE-L", "ChrF")
EVAL_RATIOS = (0.0, 0.25, 0.5)  # the typed shares of the paper's protocol
JUDGED = ("B-Norm", "EM@1")  # what decides whether one model is better than another


def not_better(candidate: dict, base: dict) -> list[str]:
    """Why a candidate model's scores do not beat a base's ([] when they do): the one rule for
    "better", used by `cmc train` (install or not) and by a trip's judge (keep or not).

    Both are `run_eval` scores with history on (``scores["history@R"]``). Better means B-Norm +
    EM@1 summed over the typed shares is higher, and at no typed share is the candidate worse in
    one and better in neither. (The sum, because on a repository's ~100 newest commits one commit
    moves EM@1 by a point; the second part, so that a gain at one share cannot hide a loss at
    another: a learned model that loses B-Norm at 0% typed and only ties EM@1 there is not
    installed, measured on getx in docs/memory.md.)"""
    keys = [f"history@{r:g}" for r in EVAL_RATIOS]

    def total(scores: dict) -> float:
        return sum(scores[k][m] for k in keys for m in JUDGED)

    reasons = []
    if total(candidate) <= total(base):
        reasons.append(f"B-Norm + EM@1 summed {total(candidate):.2f} ≤ {total(base):.2f}")
    for ratio, key in zip(EVAL_RATIOS, keys):
        lower = [m for m in JUDGED if candidate[key][m] < base[key][m]]
        if lower and not any(candidate[key][m] > base[key][m] for m in JUDGED):
            reasons.append(f"{' and '.join(lower)} lower at {int(ratio * 100)}% typed, "
                           "neither higher")  # fmt: skip
    return reasons


def b_norm(prediction: str, target: str) -> float:
    """B-Norm of one continuation: sentence BLEU-4, +1 smoothing, lowercased, punctuation split."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [target], smooth_method="add-k", smooth_value=1,
                                   lowercase=True, tokenize="13a").score  # fmt: skip


def typed_prefix(message: str, ratio: float) -> str:
    return message[: int(len(message) * ratio)]


def exact_match(pred: str, target: str, k: int) -> float | None:
    words = target.split()
    if len(words) < k:
        return None
    return float(pred.split()[:k] == words[:k])


_CODE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|\d+(?:\.\d+)+")
_CAMEL = re.compile(r"[a-z][A-Z]")


def code_tokens(text: str) -> set[str]:
    """Identifiers and versions as code spells them, not plain words: ``snake_case``,
    ``camelCase``, ``dotted.names``, ``name2`` with digits, ``1.2.3``. (``parser`` is a word.)"""
    found = set()
    for m in _CODE_TOKEN.finditer(text):
        tok = m.group().strip(".")
        if len(tok) < 3:
            continue
        if (
            "_" in tok.strip("_")
            or "." in tok
            or _CAMEL.search(tok)
            or (any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok))
        ):
            found.add(tok)
    return found


def added_text(diff: str) -> str:
    """The added lines of a processed diff (`cmc.diffs.process_diff`)."""
    return "\n".join(line[1:] for line in diff.splitlines() if line.startswith("+"))


def specificity(records: list[dict], added: dict[Any, set[str]]) -> dict[str, float]:
    """Copy rate and share of distinct suggestions (module docstring) for one setting's
    predictions; ``added`` maps an example id to the code tokens its diff adds."""
    eligible = hits = 0
    for r in records:
        wanted = code_tokens(r["target"]) & added.get(r["id"], set())
        if wanted:
            eligible += 1
            hits += bool(code_tokens(r["prediction"]) & wanted)
    whole = [(r["prefix"] + r["prediction"]).strip() for r in records]
    return {
        "Copy": 100 * hits / eligible if eligible else 0.0,
        "Copy-n": eligible,
        "Distinct": 100 * len(set(whole)) / len(whole) if whole else 0.0,
    }


TRUST = ("Unsupported", "Repeated", "Doubled", "CI-marker")


def trust(records: list[dict], contexts: dict[Any, Any]) -> dict[str, float]:
    """Shares (%) of suggestions a user could not accept unchecked (`cmc.specifics`): stating a
    version, file name or backticked name that the diff's changed lines and paths, the history and
    the typed text do not hold; a repeated word; a doubled suffix or path; a CI marker the author
    does not use (each only where the typed text alone does not have it). ``Unsupported-real``:
    the same for the real messages."""
    from cmc import specifics

    counts = dict.fromkeys((*TRUST, "Unsupported-real"), 0)
    for r in records:
        support = contexts[r["id"]].support(r["prefix"])
        suggestion = r["prefix"] + r["prediction"]
        counts["Unsupported"] += bool(specifics.unsupported(suggestion, support))
        counts["Unsupported-real"] += bool(
            specifics.unsupported(r["prefix"] + r["target"], support)
        )
        # (what the typed text itself has is the author's, not the suggestion's)
        found = set(specifics.degenerate(suggestion, support)) - set(
            specifics.degenerate(r["prefix"], support)
        )
        counts["Repeated"] += "repeated word" in found
        counts["Doubled"] += "doubled suffix" in found
        counts["CI-marker"] += "CI marker" in found
    return {k: 100 * v / max(1, len(records)) for k, v in counts.items()}


def score(predictions: list[str], targets: list[str]) -> dict[str, float]:
    """All metrics for aligned continuations (pairs with an empty target are skipped)."""
    import sacrebleu
    from rapidfuzz.distance import Levenshtein
    from rouge_score import rouge_scorer

    pairs = [(p, t) for p, t in zip(predictions, targets) if t.strip()]
    if not pairs:
        return dict.fromkeys(METRICS, 0.0)
    preds, refs = [p for p, _ in pairs], [t for _, t in pairs]
    bnorm = [b_norm(p, t) for p, t in pairs]
    edit = [100 * Levenshtein.normalized_similarity(p, t) for p, t in pairs]
    out = {"B-Norm": sum(bnorm) / len(bnorm), "EditSim": sum(edit) / len(edit)}
    for k in (1, 2):
        ems = [m for m in (exact_match(p, t, k) for p, t in pairs) if m is not None]
        out[f"EM@{k}"] = 100 * sum(ems) / len(ems) if ems else 0.0
    out["BLEU"] = sacrebleu.corpus_bleu(preds, [refs]).score
    out["ChrF"] = sacrebleu.corpus_chrf(preds, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out["ROUGE-L"] = 100 * sum(scorer.score(t, p)["rougeL"].fmeasure for p, t in pairs) / len(pairs)
    out["count"] = len(pairs)
    return out


def load_split(spec: str, split: str) -> list[dict]:
    """Rows of one split from a processed dataset folder (``cmc data process`` output) or parquet."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    from datasets import load_from_disk

    folder = path / "dataset" if (path / "dataset").exists() else path
    return load_from_disk(str(folder))[split].to_list()


def sample_rows(rows: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    picked = random.Random(seed).sample(range(len(rows)), limit)
    return [rows[i] for i in sorted(picked)]


class NNGen:
    """Retrieval baseline: the message of the nearest training diff (bag-of-words cosine).

    With typed text, the newest history message or nearest-neighbour message that starts with it.
    """

    name = "nngen"

    def __init__(self, train_rows: list[dict], neighbours: int = 200):
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        self.messages = [r["message"] for r in train_rows]
        self.vectorizer = CountVectorizer(
            token_pattern=r"\S+", lowercase=False, max_features=200_000
        )
        self.matrix = normalize(
            self.vectorizer.fit_transform(process_diff(r["mods"]) for r in train_rows)
        )
        self.neighbours = neighbours
        self._normalize = normalize

    def nearest(self, diff: str) -> list[int]:
        import numpy as np

        q = self._normalize(self.vectorizer.transform([diff]))
        sims = (self.matrix @ q.T).toarray().ravel()
        top = np.argpartition(-sims, min(self.neighbours, len(sims) - 1))[: self.neighbours]
        return top[np.argsort(-sims[top], kind="stable")].tolist()

    def complete_rows(self, rows: Iterable[dict], use_history: bool = True) -> Iterable[dict]:
        for i, row in enumerate(rows):
            typed = row.get("prefix") or ""
            order = self.nearest(row.get("diff") or process_diff(row["mods"]))
            pool = list(reversed(row.get("history") or [])) if (use_history and typed) else []
            pool += [self.messages[j] for j in order]
            best = next((m for m in pool if m.startswith(typed) and len(m) > len(typed)), None)
            continuation = best[len(typed) :] if best is not None else ""
            yield {
                "id": row.get("id", i),
                "prefix": typed,
                "continuation": continuation,
                "candidates": [continuation],
            }


def run_eval(
    data: str,
    model: str,
    ratios: list[float],
    histories: list[bool],
    limit: int | None,
    out: str | Path,
    split: str = "test",
    train: str | None = None,
    settings: Any = None,
    progress: bool = True,
    resume: bool = False,
    repos: str | Path | None = None,
    repository: str | Path | None = None,
    decider: str | None = None,
) -> dict:
    """Evaluate ``model`` (a model spec, or ``nngen``) and write metrics, predictions and a plot.

    With ``resume``, predictions already in ``OUT/predictions.jsonl`` (an interrupted run) are
    kept and only the missing ones are computed. With ``repos``, a folder of local clones or
    snapshots (``OWNER+NAME/repo``, as `cmc data mine --root` finds them), each row draws on its
    repository's memory as of its commit's parent (`cmc.memory.RowMemories`); with
    ``repository``, every row on that one's (a repository's own history, as `cmc train` scores).
    ``decider``: a second model spec that, with nothing typed, chooses between the memory and
    ``model``'s text (`cmc.complete.complete_context`; the two-model stage as users have it).
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(load_split(data, split), limit)
    if repos is not None:
        from cmc.training.mine import find_repo

        for row in rows:
            found = find_repo(row.get("repo") or "", repos)
            if found is not None:
                row["repository"] = str(found)
    if repository is not None:
        for row in rows:
            row["repository"] = str(repository)
    if model == "nngen":
        completer = NNGen(load_split(train or data, "train"))

        def run(batch, use_history):
            return completer.complete_rows(batch, use_history)
    else:
        from cmc.complete import complete_rows
        from cmc.decoding import DecodeSettings
        from cmc.model import load_model

        lm = load_model(model)
        second = load_model(decider) if decider else None
        decode = settings or DecodeSettings()  # only the best candidate is scored

        def run(batch, use_history):
            return complete_rows(lm, batch, use_history, decode, second)

    results: dict[str, Any] = {
        "model": model,
        **({"decider": decider} if decider else {}),
        "data": data,
        "split": split,
        "examples": len(rows),
        "scores": {},
    }
    from cmc.complete import context_from_row

    contexts = {row.get("hash", i): context_from_row(row) for i, row in enumerate(rows)}
    added = {key: code_tokens(added_text(c.diff)) for key, c in contexts.items()}
    started = time.perf_counter()
    done = _finished_predictions(out / "predictions.jsonl") if resume else {}
    if done:  # rewrite what was kept, so that appending never continues a torn line
        tmp = out / "predictions.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
        os.replace(tmp, out / "predictions.jsonl")
    with (out / "predictions.jsonl").open("a" if resume else "w") as preds_file:
        for use_history in histories:
            for ratio in ratios:
                batch = []
                for i, row in enumerate(rows):
                    typed = typed_prefix(row["message"], ratio)
                    batch.append({**row, "id": row.get("hash", i), "prefix": typed})
                todo = [r for r in batch if (ratio, use_history, r["id"]) not in done]
                desc = f"{'history' if use_history else 'no history'} {int(ratio * 100)}%"
                bar = tqdm(total=len(batch), initial=len(batch) - len(todo), desc=desc,
                           disable=not progress, dynamic_ncols=True)  # fmt: skip
                for row, pred in zip(todo, run(todo, use_history)):
                    record = {
                        "ratio": ratio,
                        "history": use_history,
                        "id": pred["id"],
                        "prefix": row["prefix"],
                        "target": row["message"][len(row["prefix"]) :],
                        "prediction": pred["continuation"],
                    }
                    preds_file.write(json.dumps(record) + "\n")
                    preds_file.flush()  # kept if the run is interrupted
                    done[(ratio, use_history, record["id"])] = record
                    bar.update(1)
                bar.close()
                chosen = [done[(ratio, use_history, r["id"])] for r in batch]
                key = f"{'history' if use_history else 'no_history'}@{ratio:g}"
                results["scores"][key] = score(
                    [c["prediction"] for c in chosen], [c["target"] for c in chosen]
                )
                results["scores"][key].update(specificity(chosen, added))
                results["scores"][key].update(trust(chosen, contexts))
    results["seconds"] = round(time.perf_counter() - started, 1)
    tmp = out / "metrics.json.tmp"  # atomically: a half-written metrics.json would be read as done
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "metrics.json")
    plot(results, out / "metrics.png")
    return results


def _finished_predictions(path: Path) -> dict[tuple, dict]:
    """Predictions an interrupted run wrote (a torn last line is dropped)."""
    found: dict[tuple, dict] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            found[(record["ratio"], record["history"], record["id"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return found


def table(results: dict) -> str:
    columns = (*METRICS, "Copy", "Distinct", *TRUST)
    lines = [f"{'setting':<18}" + "".join(f"{m:>12}" for m in columns)]
    for key, sc in results["scores"].items():
        lines.append(f"{key:<18}" + "".join(f"{sc.get(m, 0):>12.2f}" for m in columns))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("B-Norm", "EditSim", "EM@1", "EM@2")
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2))
    for ax, metric in zip(axes, shown):
        for prefix, style in (("history", "-o"), ("no_history", "--s")):
            pts = sorted(
                (float(k.split("@")[1]), v[metric])
                for k, v in results["scores"].items()
                if k.split("@")[0] == prefix
            )
            if pts:
                ax.plot(
                    [100 * x for x, _ in pts],
                    [y for _, y in pts],
                    style,
                    label=prefix.replace("_", " "),
                )
        ax.set_title(metric)
        ax.set_xlabel("% of message typed")
        ax.grid(alpha=0.3)
    axes[0].legend()
    name = Path(results["model"]).name if Path(results["model"]).exists() else results["model"]
    fig.suptitle(f"{name} on {results['examples']} {results['split']} commits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
