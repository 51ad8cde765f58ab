"""Processing raw commits by CommitChronicle's rules, in the paper's order, into train/validation/test.

1. outliers (published 5th–95th percentile ranges, or percentiles of this train part);
2. messages: filters, cleaning (`cmc.messages`), filters again;
3. diffs: `cmc.diffs.process_diff` (the function inference uses), commits left with no diff dropped;
4. exact deduplication (a repeated message or diff is a clone) within each part, then train rows
   that clone a validation/test row;
5. metadata: bot authors, train authors who also appear in validation/test, integer author ids.

Each kept row gets ``history``: its author's earlier kept messages in the same repository and split,
oldest → newest (the newest `HISTORY_KEEP` of them; prompts keep fewer), and ``file_history``: the
messages of the newest earlier kept commits (any author) of the same repository and split that
touched one of its files (`cmc.prompt.FILE_HISTORY_KEEP`, oldest → newest), as the hook gathers
them with ``git log -- PATHS``; and ``recalled``: the messages of the earlier kept commits of the
same repository and split whose changes are most alike, as the hook reads them from the repository
memory (`cmc.memory.Recall.section`). A funnel table records how many rows every rule removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cmc import CmcError
from cmc.diffs import process_file_diff
from cmc.messages import clean_message, rejection_reason
from cmc.prompt import FILE_HISTORY_KEEP

SPLITS = ("train", "validation", "test")
CONTEXT_COLUMNS = ("history", "file_history", "recalled")  # what processing adds to each row
HISTORY_KEEP = 32

# Published ranges (5th–95th percentiles of CommitChronicle's train part), inclusive.
PUBLISHED_RANGES = {
    "message_chars": (12, 491),
    "message_tokens": (2, 53),
    "diff_chars": (240, 42_785),
    "diff_tokens": (20, 3_740),
    "files": (1, 16),
}
_BOT_NAME = re.compile(r"(?:\bbot|\[bot\]|-bot|_bot)$", re.IGNORECASE)
KNOWN_BOTS = {
    "dependabot",
    "dependabot-preview",
    "renovate",
    "renovate-bot",
    "greenkeeper",
    "greenkeeperio-bot",
    "github-actions",
    "pre-commit-ci",
    "snyk-bot",
    "pyup-bot",
    "imgbot",
    "allcontributors",
    "semantic-release-bot",
    "web-flow",
    "codecov-io",
    "mergify",
    "weblate",
    "transifex",
    "travis-ci",
    "azure-pipelines",
    "copilot",
}


def is_bot(name: str | None) -> bool:
    if not name:
        return False
    low = name.strip().lower()
    return (
        bool(_BOT_NAME.search(low)) or low in KNOWN_BOTS or low.removesuffix("[bot]") in KNOWN_BOTS
    )


def outlier_features(row: dict) -> dict[str, int]:
    message = row.get("original_message") or row.get("message") or ""
    diff = "".join((m.get("diff") or "") for m in row.get("mods") or [])
    return {
        "message_chars": len(message),
        "message_tokens": len(message.split()),
        "diff_chars": len(diff),
        "diff_tokens": len(diff.split()),
        "files": len(row.get("mods") or []),
    }


def percentile_ranges(
    rows: Iterable[dict], low: float = 5, high: float = 95
) -> dict[str, tuple[int, int]]:
    import numpy as np

    feats = defaultdict(list)
    for row in rows:
        for k, v in outlier_features(row).items():
            feats[k].append(v)
    return {
        k: (int(np.percentile(v, low)), int(np.percentile(v, high))) for k, v in feats.items() if v
    }


def parse_date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%d.%m.%Y %H:%M:%S")
    except (TypeError, ValueError):
        return datetime.min


@dataclass
class Funnel:
    """Rows removed by each rule, in the order applied."""

    steps: list[tuple[str, int]] = field(default_factory=list)
    start: int = 0

    def add(self, rule: str, removed: int) -> None:
        self.steps.append((rule, removed))

    def table(self, final: dict[str, int]) -> str:
        lines = [
            f"{'rule':<38} {'removed':>9} {'left':>9}",
            f"{'input':<38} {'':>9} {self.start:>9}",
        ]
        left = self.start
        for rule, removed in self.steps:
            left -= removed
            lines.append(f"{rule:<38} {removed:>9} {left:>9}")
        lines.append("final: " + ", ".join(f"{k} {v}" for k, v in final.items()))
        return "\n".join(lines)

    def as_dict(self, final: dict[str, int]) -> dict:
        return {"input": self.start, "removed": dict(self.steps), "final": final}


def _author_key(row: dict) -> tuple[str, str]:
    email = row.get("author_email_sha1") or row.get("author_email") or ""
    return (row.get("author_name") or "", email)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def process_row(row: dict, ranges: dict[str, tuple[int, int]]) -> tuple[str | None, dict | None]:
    """Steps 1–3 for one row: (the rule that removed it, None) or (None, the processed row)."""
    for key, value in outlier_features(row).items():
        lo, hi = ranges[key]
        if not lo <= value <= hi:
            return f"outlier: {key}", None
    raw = row.get("original_message") or row.get("message") or ""
    reason = rejection_reason(raw)
    if reason in ("merge-or-revert", "squashed", "non-ascii"):
        return f"message: {reason}", None
    message = clean_message(raw)
    reason = rejection_reason(message)
    if reason:
        return f"message: {reason}", None
    mods, has_content = [], False
    for mod in row.get("mods") or []:
        diff = process_file_diff(mod.get("diff") or "")
        has_content = has_content or bool(diff)
        mods.append(
            {**{k: mod.get(k) for k in ("change_type", "old_path", "new_path")}, "diff": diff}
        )
    if not has_content:
        return "diff: empty after processing", None
    out = dict(row)
    out["original_message"] = raw
    out["message"] = message
    out["mods"] = mods
    return None, out


def assign_splits(rows: list[dict], split_by: str, seed: int) -> None:
    """Set ``split`` on rows that have none: by repository (stratified by language) or by time."""
    if split_by == "time":
        by_repo = defaultdict(list)
        for row in rows:
            by_repo[row.get("repo")].append(row)
        for repo_rows in by_repo.values():
            repo_rows.sort(key=lambda r: parse_date(r.get("date")))
            cut = max(1, round(len(repo_rows) * 0.9)) if len(repo_rows) > 1 else 1
            for i, row in enumerate(repo_rows):
                row["split"] = "train" if i < cut else "validation"
        return
    repos_by_lang = defaultdict(set)
    for row in rows:
        repos_by_lang[row.get("language") or ""].add(row.get("repo"))
    assignment = {}
    rng = random.Random(seed)
    for lang in sorted(repos_by_lang):
        repos = sorted(repos_by_lang[lang], key=str)
        rng.shuffle(repos)
        n = len(repos)
        n_val = n_test = max(1, round(n * 0.1)) if n >= 3 else 0
        for i, repo in enumerate(repos):
            assignment[repo] = (
                "validation" if i < n_val else ("test" if i < n_val + n_test else "train")
            )
    for row in rows:
        row["split"] = assignment[row.get("repo")]


def process_rows(
    rows: list[dict],
    split_by: str | None = None,
    seed: int = 42,
    outliers: str = "published",
    progress: bool = True,
) -> tuple[dict[str, list[dict]], Funnel]:
    """All five rules over raw rows (each may carry ``split``); returns kept rows per split."""
    from tqdm import tqdm

    funnel = Funnel(start=len(rows))
    if any("split" not in r or r["split"] is None for r in rows):
        repos = {r.get("repo") for r in rows}
        split_by = split_by or ("time" if len(repos) == 1 else "repo")
        assign_splits(rows, split_by, seed)
    train_rows = [r for r in rows if r["split"] == "train"]
    ranges = dict(PUBLISHED_RANGES)
    if outliers == "percentiles" and train_rows:
        ranges = percentile_ranges(train_rows)

    kept: list[dict] = []
    removed = Counter()
    for row in tqdm(rows, desc="filter, clean, process diffs", disable=not progress, unit="commit"):
        reason, out = process_row(row, ranges)
        if reason:
            removed[reason] += 1
        else:
            kept.append(out)
    order = [f"outlier: {k}" for k in PUBLISHED_RANGES] + sorted(
        k for k in removed if k.startswith("message")
    )
    order += ["diff: empty after processing"]
    for rule in order:
        funnel.add(rule, removed.get(rule, 0))

    # 4. Deduplication: within each part, then train rows that clone validation/test rows.
    for row in kept:
        row["_msg_hash"] = _hash(row["message"])
        row["_diff_hash"] = _hash(json.dumps(row["mods"], sort_keys=True))
    kept.sort(key=lambda r: (SPLITS.index(r["split"]), parse_date(r.get("date"))))
    seen = {s: (set(), set()) for s in SPLITS}
    deduped, dup_msg, dup_diff = [], 0, 0
    for row in kept:
        msgs, diffs = seen[row["split"]]
        if row["_msg_hash"] in msgs:
            dup_msg += 1
            continue
        if row["_diff_hash"] in diffs:
            dup_diff += 1
            continue
        msgs.add(row["_msg_hash"])
        diffs.add(row["_diff_hash"])
        deduped.append(row)
    funnel.add("dedup: repeated message in its part", dup_msg)
    funnel.add("dedup: repeated diff in its part", dup_diff)
    held_msgs = seen["validation"][0] | seen["test"][0]
    held_diffs = seen["validation"][1] | seen["test"][1]
    before = len(deduped)
    deduped = [
        r
        for r in deduped
        if r["split"] != "train"
        or (r["_msg_hash"] not in held_msgs and r["_diff_hash"] not in held_diffs)
    ]
    funnel.add("dedup: train clones validation/test", before - len(deduped))

    # 5. Metadata.
    before = len(deduped)
    deduped = [r for r in deduped if not is_bot(r.get("author_name"))]
    funnel.add("metadata: bot author", before - len(deduped))
    # Authors must not leak across held-out repositories; a time split (one repository, the same
    # people before and after) is meant to keep them, so the rule does not apply there.
    before = len(deduped)
    if split_by != "time":
        held_authors = {_author_key(r) for r in deduped if r["split"] != "train"}
        deduped = [
            r for r in deduped if r["split"] != "train" or _author_key(r) not in held_authors
        ]
    funnel.add("metadata: train author in validation/test", before - len(deduped))

    ids: dict[tuple, int] = {}
    per_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    histories: dict[tuple, list[str]] = defaultdict(list)
    for row in deduped:  # sorted by split, then date: history is what came before
        key = (*_author_key(row), row.get("repo"))
        row["author"] = ids.setdefault(key, len(ids))
        past = histories[(row["split"], key)]
        row["history"] = past[-HISTORY_KEEP:]
        past.append(row["message"])
        for tmp in ("_msg_hash", "_diff_hash"):
            row.pop(tmp, None)
        per_split[row.pop("split")].append(row)
    for rows_of_split in per_split.values():
        add_file_history(rows_of_split)
        add_recalled(rows_of_split)
    return per_split, funnel


def _paths(row: dict) -> set[str]:
    return {p for m in row.get("mods") or [] for p in (m.get("old_path"), m.get("new_path")) if p}


def add_file_history(rows: list[dict], keep: int = FILE_HISTORY_KEEP) -> None:
    """Set each row's ``file_history`` (see the module docstring); ``rows`` are one split's, in date
    order, so only earlier commits are seen (never the commit itself or a later one)."""
    touched: dict[tuple, list[int]] = defaultdict(list)  # (repo, path) → row numbers, oldest first
    for i, row in enumerate(rows):
        repo, paths = row.get("repo"), _paths(row)
        earlier: set[int] = set()
        for path in paths:
            earlier.update(touched[(repo, path)][-keep:])
        found: list[str] = []
        for j in sorted(earlier, reverse=True):
            if rows[j]["message"] not in found:
                found.append(rows[j]["message"])
                if len(found) == keep:
                    break
        row["file_history"] = found[::-1]
        for path in paths:
            touched[(repo, path)].append(i)


def add_recalled(rows: list[dict], keep: int | None = None) -> None:
    """Set each row's ``recalled``: the prompt's recall section as the hook builds it from the
    repository memory (`cmc.memory.Recall.section`), over the earlier rows of the same repository
    and split (``rows`` are one split's, in date order: never the commit itself or a later one)."""
    import numpy as np

    from cmc.memory import RECALL_KEEP, Memory, diff_features, recall

    by_repo: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_repo[row.get("repo") or ""].append(i)
    for numbers in by_repo.values():
        features = [diff_features(rows[i].get("mods") or []) for i in numbers]
        memory = Memory().extend(
            [("", 0, "", rows[i]["message"], f) for i, f in zip(numbers, features)]
        )
        allowed = np.zeros(len(numbers), bool)
        for at, i in enumerate(numbers):
            rows[i]["recalled"] = recall(memory, features[at], allowed).section(keep or RECALL_KEEP)
            allowed[at] = True


# --- input and output ----------------------------------------------------------------------------

COLUMNS = (
    "author",
    "author_name",
    "author_email_sha1",
    "date",
    "timezone",
    "hash",
    "message",
    "mods",
    "language",
    "license",
    "repo",
    "original_message",
)


def _read_parquet(path: Path, split: str | None) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["split"] = split
    return rows


def load_raw(inputs: Iterable[str]) -> list[dict]:
    """Raw rows from parquet files, folders of them (``train/``, ``validation/``, ``test/``
    subfolders keep their split, and so does such a folder given itself), a saved ``datasets``
    folder, or a hub dataset id."""
    rows: list[dict] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_file() and path.suffix == ".parquet":
            rows += _read_parquet(path, None)
        elif path.is_dir() and (path / "dataset_dict.json").exists():
            from datasets import load_from_disk

            dd = load_from_disk(str(path))
            for split, ds in dd.items():
                rows += [{**r, "split": split} for r in ds.to_list()]
        elif path.is_dir():
            found = False
            for split in SPLITS:
                for f in (
                    sorted((path / split).rglob("*.parquet")) if (path / split).is_dir() else []
                ):
                    rows += _read_parquet(f, split)
                    found = True
            if not found:
                files = sorted(path.rglob("*.parquet"))
                if not files:
                    raise CmcError(f"{spec}: no parquet files found")
                # a split's own folder (DATA/test) given alone keeps its split too
                split = path.name if path.name in SPLITS else None
                for f in files:
                    rows += _read_parquet(f, split)
        elif not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            rows += load_hub(spec)
        else:
            raise CmcError(f"{spec}: not a parquet file, a folder of them, or a dataset id")
    return rows


def load_hub(dataset_id: str, **kwargs) -> list[dict]:
    """Rows of a hub dataset in the CommitChronicle schema (e.g. JetBrains-Research/commit-chronicle)."""
    from datasets import load_dataset

    try:
        dd = load_dataset(dataset_id, **kwargs)
    except Exception as exc:
        raise CmcError(f"cannot load dataset {dataset_id}: {str(exc).splitlines()[0]}") from exc
    rows = []
    for split, ds in dd.items():
        rows += [{**r, "split": split} for r in ds.to_list()]
    return rows


def save_processed(
    per_split: dict[str, list[dict]], funnel: Funnel, out: str | Path
) -> dict[str, int]:
    """DatasetDict (``OUT/dataset``), parquet per split (``OUT/parquet``), funnel (``OUT/funnel.*``)."""
    from datasets import Dataset, DatasetDict

    out = Path(out)
    (out / "parquet").mkdir(parents=True, exist_ok=True)
    dd = {}
    for split, rows in per_split.items():
        if not rows:
            continue
        cols = {c: [r.get(c) for r in rows] for c in (*COLUMNS, *CONTEXT_COLUMNS)}
        dd[split] = Dataset.from_dict(cols)
        dd[split].to_parquet(str(out / "parquet" / f"{split}.parquet"))
    DatasetDict(dd).save_to_disk(str(out / "dataset"))
    final = {s: len(r) for s, r in per_split.items()}
    # Written last, atomically: its presence says the dataset is complete (a crash before it is redone).
    tmp = out / "funnel.json.tmp"
    tmp.write_text(json.dumps(funnel.as_dict(final), indent=2))
    os.replace(tmp, out / "funnel.json")
    (out / "funnel.txt").write_text(funnel.table(final) + "\n")
    return final
