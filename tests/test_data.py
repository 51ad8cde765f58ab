"""Mining and processing on real repositories made here: each rule removes exactly what it should."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import git, init_repo

from cmc import CmcError
from cmc.training.mine import mine_repository
from cmc.training.process import load_hub, load_raw, process_rows, save_processed

BOT = {"GIT_AUTHOR_NAME": "dependabot[bot]", "GIT_AUTHOR_EMAIL": "bot@example.com"}
BOB = {"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"}


def source(seed: int, lines: int = 12) -> str:
    return "".join(
        f"def handler_{seed}_{i}(request, options):\n    return process(request, {i}, options)\n"
        for i in range(lines)
    )


class RepoBuilder:
    def __init__(self, path: Path):
        self.path = init_repo(path)
        self.n = 0
        self.t = 1_600_000_000

    def commit(
        self,
        message: str,
        content: str | None = None,
        env: dict | None = None,
        name: str | None = None,
        raw: bytes | None = None,
    ):
        self.n += 1
        self.t += 3600
        target = self.path / (name or f"src/file_{self.n}.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            target.write_bytes(raw)
        else:
            target.write_text(content if content is not None else source(self.n))
        git(self.path, "add", "-A")
        stamp = f"@{self.t} +0000"
        full = {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp, **(env or {})}
        msg = self.path.parent / "msg.txt"
        msg.write_bytes(message.encode("utf-8") if isinstance(message, str) else message)
        git(self.path, "commit", "-q", "-F", str(msg), env=full)
        return git(self.path, "rev-parse", "HEAD").stdout.strip()


def mine_and_process(repo: Path, tmp_path: Path, **kw):
    stats = mine_repository(repo, tmp_path / "raw", progress=False)
    per_split, funnel = process_rows(load_raw([str(tmp_path / "raw")]), progress=False, **kw)
    return stats, per_split, funnel


def messages(per_split) -> list[str]:
    return [r["message"] for rows in per_split.values() for r in rows]


def test_each_rule_removes_what_it_should(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    b.commit("Add the request handler module for the server")
    b.commit("Add retry support to the handler layer", env=BOT)
    b.commit("Merge branch 'feature' of the server into main")
    b.commit(
        "Fix timeout handling, see https://example.com/bug\n\nSigned-off-by: Ada <ada@example.com>"
    )
    b.commit(
        "Add generated fixtures for the parser", content=source(99, lines=2000)
    )  # > 42,785 chars
    b.commit("Improve logging of failed requests")
    b.commit("Improve logging of failed requests")  # a clone of the message above
    b.commit("Update README.md")
    stats, per_split, funnel = mine_and_process(b.path, tmp_path, split_by="time")
    assert stats.commits == 8
    kept = messages(per_split)
    assert kept == [
        "Add the request handler module for the server",
        "Fix timeout handling, see",
        "Improve logging of failed requests",
    ]
    removed = dict(funnel.steps)
    assert removed["outlier: diff_chars"] == 1
    assert removed["message: merge-or-revert"] == 1
    assert removed["message: trivial"] == 1
    assert removed["metadata: bot author"] == 1
    assert removed["dedup: repeated message in its part"] == 1
    assert funnel.start == 8


def test_history_follows_each_author_in_order(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    b.commit("Add the first handler for requests")
    b.commit("Add a cache for parsed requests", env=BOB)
    b.commit("Fix the second handler for requests")
    b.commit("Remove the unused cache helpers", env=BOB)
    b.commit("Document the handler options")
    _, per_split, _ = mine_and_process(b.path, tmp_path, split_by="repo")
    rows = {r["message"]: r for rows in per_split.values() for r in rows}
    assert rows["Document the handler options"]["history"] == [
        "Add the first handler for requests",
        "Fix the second handler for requests",
    ]
    assert rows["Remove the unused cache helpers"]["history"] == ["Add a cache for parsed requests"]
    assert rows["Add the first handler for requests"]["history"] == []
    assert (
        rows["Document the handler options"]["author"]
        != rows["Remove the unused cache helpers"]["author"]
    )


def test_time_split_puts_the_newest_tenth_in_validation(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    for i in range(20):
        b.commit(f"Add handler number {i} to the request layer")
    _, per_split, _ = mine_and_process(b.path, tmp_path, split_by="time")
    assert [r["message"] for r in per_split["validation"]] == [
        f"Add handler number {i} to the request layer" for i in (18, 19)
    ]
    assert len(per_split["train"]) == 18 and not per_split["test"]


def test_train_author_in_validation_is_dropped_from_train(tmp_path: Path):
    a = RepoBuilder(tmp_path / "a")
    a.commit("Add the first handler for requests")
    a.commit("Add a cache for parsed requests", env=BOB)
    b = RepoBuilder(tmp_path / "b")
    b.commit("Fix the request layer of the other project", env=BOB, content=source(50))
    mine_repository(a.path, tmp_path / "raw" / "train", progress=False)
    mine_repository(b.path, tmp_path / "raw" / "validation", progress=False)
    per_split, funnel = process_rows(load_raw([str(tmp_path / "raw")]), progress=False)
    assert messages({"train": per_split["train"]}) == ["Add the first handler for requests"]
    assert messages({"v": per_split["validation"]}) == [
        "Fix the request layer of the other project"
    ]
    assert dict(funnel.steps)["metadata: train author in validation/test"] == 1


def test_non_utf8_message_and_binary_file_do_not_break_anything(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    b.commit("Add the first handler for requests")
    b.commit("Add caf\xe9 support to the parser".encode("latin-1"))
    b.commit("Add an icon next to the handler code", name="icon.png", raw=bytes(range(256)) * 8)
    stats, per_split, funnel = mine_and_process(b.path, tmp_path, split_by="time")
    assert stats.commits == 3
    raw = pq.read_table(stats.shards[0]).to_pylist()
    # git re-encodes a Latin-1 message to UTF-8 on output; processing then drops it as non-ASCII.
    assert raw[1]["message"] == "Add caf\u00e9 support to the parser"
    assert dict(funnel.steps)["message: non-ascii"] == 1
    icon = next(r for r in raw if "icon" in r["message"])
    assert icon["mods"][0]["diff"].startswith("Binary files")
    assert "Add the first handler for requests" in messages(per_split)


def test_mining_rules_and_bad_input(tmp_path: Path):
    with pytest.raises(CmcError, match="not a git repository"):
        mine_repository(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(CmcError, match="no commits"):
        mine_repository(init_repo(tmp_path / "empty"), tmp_path / "out", progress=False)
    b = RepoBuilder(tmp_path / "repo")
    b.t = 1_300_000_000  # 2011: before --since 2017-01-01
    b.commit("Add a handler from before the cut")
    b.t = 1_600_000_000
    b.commit("Add the old handler from long ago")
    b.commit("Add a huge generated table of values", content="x = 1\n" * 10_500)
    b.commit("Add the newest handler for requests")
    stats = mine_repository(b.path, tmp_path / "out", progress=False)
    rows = [r for s in stats.shards for r in pq.read_table(s).to_pylist()]
    assert [r["message"] for r in rows] == [
        "Add the old handler from long ago",
        "Add the newest handler for requests",
    ]
    assert stats.skipped["over 10000 changed lines"] == 1
    limited = mine_repository(b.path, tmp_path / "out2", max_commits=1, progress=False)
    assert limited.commits == 1


def test_shallow_clone_skips_its_boundary(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    for i in range(4):
        b.commit(f"Add handler number {i} to the request layer")
    clone = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "2", f"file://{b.path}", str(clone)], check=True
    )
    stats = mine_repository(clone, tmp_path / "out", progress=False)
    assert stats.commits == 1 and stats.skipped["shallow boundary"] == 1


def test_outputs_load_as_datasets_parquet_and_hub_style(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    for i in range(10):
        b.commit(f"Add handler number {i} to the request layer")
    _, per_split, funnel = mine_and_process(b.path, tmp_path, split_by="time")
    final = save_processed(per_split, funnel, tmp_path / "processed")
    from datasets import load_from_disk

    dd = load_from_disk(str(tmp_path / "processed" / "dataset"))
    assert len(dd["train"]) == final["train"] == 9
    assert "history" in dd["train"].column_names
    assert "removed" in (tmp_path / "processed" / "funnel.json").read_text()
    rows = load_hub(
        "parquet", data_files={"train": str(tmp_path / "processed" / "parquet" / "train.parquet")}
    )
    assert len(rows) == 9 and rows[0]["split"] == "train"


def test_cli_build_and_stats(tmp_path: Path):
    from conftest import cmc_env

    b = RepoBuilder(tmp_path / "repo")
    for i in range(10):
        b.commit(f"Add handler number {i} to the request layer")
    out = tmp_path / "built"
    run = subprocess.run(
        ["cmc", "data", "build", str(b.path), "--out", str(out)],
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "final: train 9, validation 1" in run.stdout
    stats = subprocess.run(
        ["cmc", "data", "stats", str(out)], env=cmc_env(), capture_output=True, text=True
    )
    assert stats.returncode == 0 and "train: 9 commits, 1 repositories" in stats.stdout
    bad = subprocess.run(
        ["cmc", "data", "mine", str(tmp_path / "nope"), "--out", str(out)],
        env=cmc_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "no such folder" in bad.stderr


def test_file_history_in_the_data_is_what_the_hook_gathers_at_that_commit(tmp_path: Path):
    """Processing computes each row's file history from the rows; the hook asks git at commit time.
    Replayed at each commit's parent, the two must agree (the one prompt section, two producers)."""
    from cmc.diffs import Mod
    from cmc.gitctx import GitRepo

    b = RepoBuilder(tmp_path / "repo")
    b.commit("Add the parser for request headers", name="src/parser.py")
    b.commit("Add a cache for parsed requests", name="src/cache.py", env=BOB)
    b.commit("Fix the parser on empty header lines", content=source(50), name="src/parser.py")
    (b.path / "src" / "cache.py").write_text(source(60))  # this commit touches two files
    b.commit("Share the header cache with the parser", content=source(61), name="src/parser.py", env=BOB)  # fmt: skip
    b.commit("Document the [weird] file name", name="docs/[weird]*.md")
    b.commit("Reword the parser's error messages", content=source(70), name="src/parser.py")
    b.commit("Document the [weird] file name again", content="new\n" * 40, name="docs/[weird]*.md")  # fmt: skip
    _, per_split, _ = mine_and_process(b.path, tmp_path, split_by="repo")
    rows = [r for part in per_split.values() for r in part]
    assert len(rows) == 7
    by_msg = {r["message"]: r for r in rows}
    assert by_msg["Reword the parser's error messages"]["file_history"] == [
        "Add the parser for request headers",
        "Fix the parser on empty header lines",
        "Share the header cache with the parser",
    ]
    assert by_msg["Share the header cache with the parser"]["file_history"] == [
        "Add the parser for request headers",
        "Add a cache for parsed requests",  # via the second file, and by another author
        "Fix the parser on empty header lines",
    ]
    assert by_msg["Add the parser for request headers"]["file_history"] == []
    for row in rows[1:]:  # the first commit has no parent to replay it from
        git(b.path, "checkout", "-q", "--detach", f"{row['hash']}~1")
        mods = [Mod(m["change_type"], m["old_path"], m["new_path"]) for m in row["mods"]]
        assert GitRepo(b.path).file_history(mods) == row["file_history"], row["message"]


def test_recalled_in_the_data_is_what_the_memory_gives_at_that_commit(tmp_path: Path):
    """Processing computes each row's recall section from the earlier rows; the hook reads it from
    the repository memory. Replayed at each commit's parent, the two must agree."""
    from cmc.memory import RowMemories

    b = RepoBuilder(tmp_path / "repo")
    b.commit("Add the parser for request headers", content=source(10), name="src/parser.py")
    b.commit("Add a cache for parsed requests", content=source(20), name="src/cache.py", env=BOB)
    b.commit("Fix the parser on empty header lines", content=source(11), name="src/parser.py")
    doc = "# Cache\n\n" + "".join(
        f"It keeps parsed request number {i} for a while.\n" for i in range(9)
    )
    b.commit("Document the cache", content=doc, name="docs/cache.md")
    b.commit("Reword the parser's error messages", content=source(12), name="src/parser.py")
    b.commit("Bound the cache's size", content=source(21), name="src/cache.py")
    _, per_split, _ = mine_and_process(b.path, tmp_path, split_by="repo")
    rows = [r for part in per_split.values() for r in part]
    assert len(rows) == 6
    by_msg = {r["message"]: r for r in rows}
    assert by_msg["Add the parser for request headers"]["recalled"] == []  # nothing came before
    parser = by_msg["Reword the parser's error messages"]["recalled"]
    # The same file's earlier changes are the most alike, nearest to the message; never a later one.
    assert parser[-2:] == [
        "Add the parser for request headers",
        "Fix the parser on empty header lines",
    ]
    assert "Bound the cache's size" not in parser
    assert by_msg["Bound the cache's size"]["recalled"][-1] == "Add a cache for parsed requests"
    memories = RowMemories()
    for row in rows:
        recall = memories.recall_for({**row, "repository": str(b.path)})
        assert recall is not None
        assert recall.section() == row["recalled"], row["message"]


def test_a_snapshot_missing_a_blob_is_mined_around_it_and_a_list_resumes(tmp_path: Path):
    """A bare OWNER+NAME/repo snapshot (no working tree, no remote) that lacks one blob: that
    commit is skipped and counted, the others are mined; a list mines in parallel and resumes."""
    from click.testing import CliRunner

    from cmc.training.cli import data

    b = RepoBuilder(tmp_path / "work")
    for i in range(6):
        b.commit(f"Add handler number {i} for the requests", name=f"src/h{i}.py")
    lost = git(b.path, "rev-parse", "HEAD~2:src/h3.py").stdout.strip()  # commit 4 adds this blob
    snap = tmp_path / "mirror" / "acme+widgets" / "repo"
    snap.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", "--no-local", str(b.path), str(snap))
    (snap / "config").unlink()  # as a fetched snapshot: no config, no remote to take a name from
    packs = list((snap / "objects" / "pack").glob("*.pack"))
    data_packs = [p.read_bytes() for p in packs]
    for p in (snap / "objects" / "pack").glob("*"):
        p.unlink()
    for blob in data_packs:  # loose objects, so one can be taken away
        subprocess.run(["git", "unpack-objects", "-q"], cwd=snap, check=True, input=blob)
    (snap / "objects" / lost[:2] / lost[2:]).unlink()
    stats = mine_repository(snap, tmp_path / "raw", progress=False)
    assert stats.repo == "acme/widgets"
    assert stats.commits == 5 and stats.skipped["missing object (snapshot)"] == 1
    mined = [r["message"] for r in load_raw([str(tmp_path / "raw")])]
    assert "Add handler number 3 for the requests" not in mined and len(mined) == 5

    listing = tmp_path / "repos.tsv"
    listing.write_text("repo\tlanguage\tlicense\nacme/widgets\tPython\tMIT\n"
                       f"{b.path}\t\t\nnobody/absent\tGo\tMIT\n")  # fmt: skip
    args = ["mine", "--list", str(listing), "--root", str(tmp_path / "mirror"),
            "--out", str(tmp_path / "raw2"), "--workers", "2"]  # fmt: skip
    first = CliRunner().invoke(data, args)
    assert first.exit_code == 0, first.output
    assert "nobody/absent: not found" in first.output and "2 mined" in first.output
    rows = load_raw([str(tmp_path / "raw2" / "acme__widgets")])
    assert {r["language"] for r in rows} == {"Python"} and {r["license"] for r in rows} == {"MIT"}
    again = CliRunner().invoke(data, args)
    assert (
        "acme/widgets: mined before (5 commits)" in again.output
        and "1 already mined" in again.output
    )


def test_a_split_folder_given_alone_keeps_its_split(tmp_path: Path):
    """`cmc data process DATA/train DATA/validation DATA/test` split the corpus' repositories
    again at random (a test repository's commits then trained a model): each folder named after a
    split now keeps it, as DATA given whole always did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, repo in (("train", "a/one"), ("validation", "b/two"), ("test", "c/three")):
        (tmp_path / split).mkdir()
        pq.write_table(pa.Table.from_pylist([{"repo": repo, "message": "x", "mods": []}]),
                       tmp_path / split / f"{repo.replace('/', '__')}.parquet")  # fmt: skip
    apart = load_raw([str(tmp_path / s) for s in ("train", "validation", "test")])
    whole = load_raw([str(tmp_path)])
    assert {(r["repo"], r["split"]) for r in apart} == {(r["repo"], r["split"]) for r in whole} == {
        ("a/one", "train"), ("b/two", "validation"), ("c/three", "test")}  # fmt: skip
