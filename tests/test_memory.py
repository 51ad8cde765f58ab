"""The repository memory, on real repositories made here: built, brought up to date, bounded,
looked up, and never showing a commit its author could not have had."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cmc_env, git
from test_data import RepoBuilder

from cmc import memory as mem
from cmc import recalled
from cmc.diffs import Mod
from cmc.gitctx import GitRepo

AREAS = {
    "parser": ("src/parser.py", "def parse_tokens(text):\n    tokens = tokenize(text)\n    return {}\n"),
    "cache": ("src/cache.py", "class LruCache:\n    def evict_oldest(self):\n        return {}\n"),
    "docs": ("docs/guide.md", "# Installing\n\nRun the installer and configure the proxy {}.\n"),
}  # fmt: skip


def area_repo(path: Path, rounds: int = 4) -> tuple[RepoBuilder, dict[str, list[str]]]:
    """Commits in three areas, each with its own words and message style; returns their hashes."""
    b = RepoBuilder(path)
    shas: dict[str, list[str]] = {area: [] for area in AREAS}
    for i in range(rounds):
        for area, (name, text) in AREAS.items():
            message = {
                "parser": f"parser: handle token case {i}",
                "cache": f"cache: evict entries in round {i}",
                "docs": f"docs: explain the proxy setting {i}",
            }[area]
            shas[area].append(b.commit(message, text.format(i), name=name))
    return b, shas


def staged_like(area: str, n: int = 99) -> list[Mod]:
    name, text = AREAS[area]
    lines = "".join(f"+{line}\n" for line in text.format(n).splitlines())
    return [Mod("MODIFY", name, name, f"@@ -1,3 +1,3 @@\n{lines}")]


def build(repo: Path, **kw) -> mem.BuildStats:
    r = GitRepo(repo)
    return mem.update(r.cwd, r.common_dir, **kw)


def test_build_holds_every_commit_and_finds_the_alike_one(tmp_path: Path):
    b, shas = area_repo(tmp_path / "repo")
    stats = build(b.path)
    assert stats.added == 12 and stats.finished
    memory = mem.Memory.load(mem.memory_path(b.path / ".git"))
    assert len(memory) == 12 and memory.shas[-1] == shas["docs"][-1]  # oldest first
    assert memory.meta["tip"] == shas["docs"][-1]
    for area in AREAS:
        hits = memory.nearest(mem.diff_features(staged_like(area)), k=3)
        assert [memory.shas[h.index] in shas[area] for h in hits] == [True] * 3, area
        assert hits[0].score > 0.3


def test_update_reads_only_new_commits_and_a_stopped_build_goes_on(tmp_path: Path):
    b, _ = area_repo(tmp_path / "repo", rounds=3)
    partial = build(b.path, batch=2, deadline=time.monotonic() - 1)  # stopped before any batch
    assert not partial.finished and partial.added == 0
    first = build(b.path, batch=4, deadline=time.monotonic() + 60)
    assert first.added == 9 and first.finished
    new = b.commit(
        "cache: evict entries on shutdown", "class LruCache:\n    pass\n", name="src/cache.py"
    )
    again = build(b.path)
    assert (again.added, again.dropped, again.commits) == (1, 0, 10)
    assert mem.Memory.load(mem.memory_path(b.path / ".git")).meta["tip"] == new


def test_bounded_by_commits_message_size_and_commit_size(tmp_path: Path):
    b, _ = area_repo(tmp_path / "repo", rounds=2)
    b.commit("Add a huge generated table\n\n" + "word " * 100_000, name="data/table.py",
             content="VALUE = 1\n" * 20)  # fmt: skip
    b.commit("Add vendored blob", name="vendor/blob.txt", content="x" * 100 + "\n" * 10 + "y\n")
    stats = build(b.path, limit=5)
    memory = mem.Memory.load(mem.memory_path(b.path / ".git"))
    assert len(memory) == 5 == stats.commits  # the newest five
    assert max(len(m) for m in memory.messages) <= mem.MAX_MESSAGE_CHARS
    per_commit = np.diff(memory.indptr)
    assert per_commit.max() <= mem.MAX_FEATURES


def test_messages_are_cleaned_and_secrets_masked(tmp_path: Path):
    b = RepoBuilder(tmp_path / "repo")
    token = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    b.commit(f"Rotate the deploy token {token}\n\nSigned-off-by: Ada <ada@example.com>")
    build(b.path)
    memory = mem.Memory.load(mem.memory_path(b.path / ".git"))
    assert token not in memory.messages[0] and "Signed-off-by" not in memory.messages[0]
    assert memory.messages[0].startswith("Rotate the deploy token")


def test_a_row_recalls_only_what_its_author_had(tmp_path: Path):
    """For commit C, only ancestors of C's parent count: not C, not later commits, not a branch."""
    b, shas = area_repo(tmp_path / "repo", rounds=3)
    target = shas["parser"][1]  # in the middle of history
    git(b.path, "checkout", "-q", "-b", "side", shas["parser"][0])
    side = b.commit("parser: a side branch's parse fix", AREAS["parser"][1].format(7),
                    name="src/parser_side.py")  # fmt: skip
    git(b.path, "checkout", "-q", "main")
    git(b.path, "merge", "-q", "--no-edit", "side")
    build(b.path)
    assert not mem.behind(GitRepo(b.path))  # HEAD is a merge, kept out: still up to date
    memories = mem.RowMemories()
    row = {
        "repository": str(b.path),
        "hash": target,
        "mods": [m.as_row() for m in staged_like("parser")],
    }
    recall = memories.recall_for(row)
    had = set(git(b.path, "rev-list", f"{target}^").stdout.split())
    memory = recall.memory
    offered = {memory.shas[i] for i in recall.order}
    assert offered == had and target not in offered and side not in offered
    assert shas["parser"][2] not in offered  # later work on the same file
    assert recall.nearest(1)[0][0].startswith("parser: handle token case 0")


def test_the_chooser_weighs_the_memorys_first_of_each_kind(tmp_path: Path, monkeypatch):
    """`recalled.PER_KIND`: how many of the most alike commits' subjects (nothing typed) and of
    the messages continuing the typed text reach the chooser, each kind by itself."""
    b, _ = area_repo(tmp_path / "repo", rounds=10)
    build(b.path)
    memory = mem.load_cached(b.path / ".git")
    recall = mem.recall(memory, mem.diff_features(staged_like("parser")), None)
    for nearest_k, prefix_k in ((3, 8), (8, 3)):
        monkeypatch.setattr(recalled, "PER_KIND", {"nearest": nearest_k, "prefix": prefix_k,
                                                   "infix": 2})  # fmt: skip
        nearest = recalled.candidates(recall, "")
        assert len(nearest) == nearest_k and {r.kind for r in nearest} == {"nearest"}
        assert nearest[0].message.startswith("parser: handle token case ")
        assert sum(o.kind == "nearest" for o in recalled.options([], nearest, "")) == nearest_k
        prefix = recalled.candidates(recall, "cache: evict")
        assert len(prefix) == prefix_k and all(r.message.startswith("cache: evict") for r in prefix)
        assert sum(o.kind == "prefix" for o in recalled.options([], prefix, "c")) == prefix_k


def test_cli_builds_reports_and_clears(tmp_path: Path):
    b, _ = area_repo(tmp_path / "repo", rounds=1)

    def cmc(*args):
        return subprocess.run(["cmc", *args], cwd=b.path, env=cmc_env(), capture_output=True,
                              text=True)  # fmt: skip

    assert "none yet" in cmc("memory", "status").stdout
    built = cmc("memory", "build")
    assert built.returncode == 0 and "3 commits (3 added" in built.stdout
    assert "memory: 3 commits" in cmc("hook", "status").stdout
    assert "up to date" in cmc("memory", "status").stdout
    assert cmc("memory", "clear").stdout.strip() == "memory: cleared"
    assert not mem.memory_path(b.path / ".git").exists()


def test_one_build_at_a_time(tmp_path: Path):
    b, _ = area_repo(tmp_path / "repo", rounds=1)
    held = mem._lock(mem.memory_path(b.path / ".git"))
    try:
        assert build(b.path).busy
    finally:
        import os

        os.close(held)
    assert build(b.path).added == 3


@pytest.mark.slow
def test_lookup_at_twenty_thousand_commits_is_quick():
    """A memory of 20,000 commits (synthetic rows with realistic sizes): a lookup is a few
    milliseconds. (bench/bench_memory.py times it on real repositories.)"""
    from collections import Counter

    rng = np.random.default_rng(0)
    rows = []
    for i in range(20_000):
        feats = Counter({int(f): int(c) for f, c in zip(rng.integers(0, 200_000, 120),
                                                         rng.integers(1, 5, 120))})  # fmt: skip
        rows.append((f"{i:040x}", i, "a", f"message {i}", feats))
    memory = mem.Memory().extend(rows)
    query = rows[123][4]
    memory.nearest(query)  # builds the index
    started = time.perf_counter()
    for _ in range(10):
        hits = memory.nearest(query, k=8)
    assert hits[0].index == 123
    assert (time.perf_counter() - started) / 10 < 0.5  # generous: the bench measures ~1 ms


def test_completion_continues_typed_text_from_the_memory(tmp_path: Path, tiny_model: Path):
    """`cmc complete` in a repository with a memory: an earlier message that continues what was
    typed is offered (the tiny model knows none of these words)."""
    b, _ = area_repo(tmp_path / "repo")
    git(b.path, "config", "cmc.model", str(tiny_model))
    name, text = AREAS["docs"]
    (b.path / name).write_text(text.format(42))
    git(b.path, "add", name)

    replies = []

    def complete(*args):
        out = subprocess.run(["cmc", "complete", "--json", "--prefix", "docs: expl", *args],
                             cwd=b.path, env=cmc_env(), capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        replies.append(__import__("json").loads(out.stdout)["candidates"])
        return [c["message"] for c in replies[-1]]

    without = complete()
    assert not any(m.startswith("docs: explain the proxy setting") for m in without)
    assert {c["source"] for c in replies[-1]} == {"model"}
    assert build(b.path).added == 12
    found = complete()
    assert found[0].startswith("docs: explain the proxy setting "), found
    # it says where it came from: the commit whose message it is, and its date
    first = replies[-1][0]
    assert first["source"] == "memory"
    said = git(
        b.path, "log", "-1", "--format=%H %ad", "--date=short", f"--grep=^{first['message']}$"
    )
    full_sha, date = said.stdout.split()
    assert full_sha.startswith(first["commit"]) and first["date"] == date
    git(b.path, "config", "cmc.memory", "false")
    assert complete() == without  # turned off: as if there were none


def test_a_batch_row_completes_from_its_repository_as_of_its_parent(tmp_path: Path, tiny_model):
    import json

    b, shas = area_repo(tmp_path / "repo")
    target = shas["cache"][2]
    rows = tmp_path / "rows.jsonl"
    row = {"hash": target, "repository": str(b.path), "prefix": "cache: evict entries in round ",
           "mods": [m.as_row() for m in staged_like("cache")]}  # fmt: skip
    rows.write_text(json.dumps(row) + "\n" + json.dumps({**row, "repository": 7}) + "\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run(["cmc", "complete", "--batch", str(rows), "--out", str(out),
                           "--model", str(tiny_model), "--skip-invalid"], env=cmc_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 invalid rows skipped" in done.stderr  # a repository must be a path
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    offered = {row["prefix"] + c for c in record["candidates"]}
    earlier = {f"cache: evict entries in round {i}" for i in (0, 1)}
    assert offered & earlier, offered
    assert not offered & {f"cache: evict entries in round {i}" for i in (2, 3)}  # not its own


def test_a_row_recalls_from_the_full_repository_as_from_one_cut_at_its_parent(
    tmp_path: Path, tiny_model
):
    """Evaluation as the user had it: the memory's TF-IDF statistics are those of the commits the
    row may see, so the full repository and a clone cut at the row's parent recall the same
    commits with the same scores, and complete alike."""
    b, shas = area_repo(tmp_path / "repo", rounds=6)
    target = shas["docs"][2]
    cut = tmp_path / "cut"
    git(tmp_path, "clone", "-q", "--no-local", str(b.path), str(cut))
    git(cut, "reset", "-q", "--hard", f"{target}^")
    rows = [{"repository": str(path), "hash": target, "author_email_sha1": None,
             "mods": [m.as_row() for m in staged_like(area)]}
            for path in (b.path, cut) for area in AREAS]  # fmt: skip
    memories = mem.RowMemories()
    full, short = (
        [memories.recall_for(r) for r in rows[:3]],
        [memories.recall_for(r) for r in rows[3:]],
    )
    assert len(memories.memory(str(b.path))) > len(memories.memory(str(cut)))  # later commits too
    for a, c in zip(full, short):
        assert a.key == c.key and len(a.key) > 3
        assert np.allclose(np.sort(a.scores[a.order]), np.sort(c.scores[c.order]))
    from cmc.complete import complete_context, context_from_row
    from cmc.model import load_model

    lm = load_model(str(tiny_model))
    for full_row, cut_row in zip(rows[:3], rows[3:]):
        got = [complete_context(lm, context_from_row(r, True, memories), "docs: ").candidates
               for r in (full_row, cut_row)]  # fmt: skip
        assert [c.message for c in got[0]] == [c.message for c in got[1]]


@pytest.mark.slow
def test_the_daemon_builds_the_memory_in_the_background(tmp_path: Path, tiny_model: Path):
    from test_interactive import Daemon

    b, _ = area_repo(tmp_path / "repo", rounds=2)
    git(b.path, "config", "cmc.model", str(tiny_model))
    (b.path / "src" / "cache.py").write_text("class LruCache:\n    pass\n")
    git(b.path, "add", ".")
    d = Daemon(tmp_path / "run" / "cmc.sock")
    try:
        out = subprocess.run(["cmc", "complete", "--prefix", "Fix"], cwd=b.path, env=d.env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        path = mem.memory_path(b.path / ".git")
        deadline = time.time() + 120
        while not path.exists():
            assert time.time() < deadline, d.log.read_text()
            time.sleep(0.2)
        assert len(mem.Memory.load(path)) == 6
        git(b.path, "commit", "-q", "-m", "cache: evict on close")  # HEAD moves: it catches up
        deadline = time.time() + 180
        while (found := mem.Memory.load(path)) is None or len(found) != 7:
            assert time.time() < deadline, d.log.read_text()
            time.sleep(0.2)
    finally:
        d.kill()


def test_a_model_brings_its_own_chooser_weights(tmp_path: Path, tiny_model: Path):
    """A model's `cmc.json` may carry the chooser's weights fitted to its own scores: they, not
    `recalled.WEIGHTS`, order the model's candidates against the memory's; a malformed list is
    one line at load."""
    import json
    import shutil

    from cmc import CmcError
    from cmc.decoding import Candidate
    from cmc.model import load_model

    model = [Candidate("Fix the parser", "Fix the parser", -0.1)]
    memory = [recalled.Recalled("parser: handle token case 3", "parser: handle token case 3",
                                0.2, "nearest")]  # fmt: skip
    # weights of only a bias for the memory's nearest kind (KINDS: model, nearest, prefix, infix)
    favour_memory = [0.0] * len(recalled.WEIGHTS)
    favour_memory[1] = 10.0
    favour_model = [0.0] * len(recalled.WEIGHTS)
    favour_model[0] = 10.0
    assert (
        recalled.choose(model, memory, "", [], 2, tuple(favour_memory))[0].message
        == memory[0].message
    )
    assert (
        recalled.choose(model, memory, "", [], 2, tuple(favour_model))[0].message
        == "Fix the parser"
    )
    folder = tmp_path / "own"
    shutil.copytree(tiny_model, folder)
    (folder / "cmc.json").write_text(json.dumps({"chooser": favour_memory}))
    assert load_model(str(folder)).chooser == tuple(favour_memory)
    assert load_model(str(tiny_model)).chooser is None  # the shipped weights
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "cmc.json").write_text(json.dumps({"chooser": [1.0, 2.0]}))
    with pytest.raises(CmcError, match="chooser must be 18 numbers"):
        load_model(str(bad))


def test_with_nothing_typed_the_keystroke_model_decides_and_the_message_model_writes(
    tmp_path: Path, tiny_model: Path, monkeypatch
):
    """The two-model stage (`complete_context`'s ``decider``): with nothing typed the keystroke
    model's own chooser weighs the memory against a model, and each place it gives a model holds
    the message model's text, never its own; with text typed the message model's stage alone."""
    import json
    import shutil

    from conftest import overfit_model

    from cmc import knn
    from cmc.complete import Context, complete_context
    from cmc.decoding import DecodeSettings
    from cmc.diffs import process_diff
    from cmc.model import load_model

    b, _ = area_repo(tmp_path / "repo")
    build(b.path)
    recall = mem.recall(mem.load_cached(b.path / ".git"), mem.diff_features(staged_like("cache")))
    context = Context(process_diff(staged_like("cache")), recall=recall)
    monkeypatch.setattr(knn, "ON", False)  # each model's own text, not the memory's votes
    written = "Speed up the cache eviction"
    plain = overfit_model(tmp_path / "message", context.diff, written)

    def with_chooser(source: Path, name: str, favour: int) -> object:
        """``source`` with chooser weights of only a bias for one kind (KINDS' index)."""
        folder = tmp_path / name
        shutil.copytree(source, folder)
        meta = folder / "cmc.json"
        data = json.loads(meta.read_text()) if meta.exists() else {}
        weights = [0.0] * len(recalled.WEIGHTS)
        weights[favour] = 10.0
        meta.write_text(json.dumps({**data, "chooser": weights}))
        return load_model(str(folder))

    message = with_chooser(plain, "message-favours-model", 0)
    keys_memory = with_chooser(tiny_model, "keys-favour-memory", 1)  # KINDS: model, nearest, ...
    keys_model = with_chooser(tiny_model, "keys-favour-model", 0)
    settings = DecodeSettings(num_beams=3, max_new_tokens=16, num_candidates=4)
    alone = complete_context(message, context, "", settings).candidates
    assert alone[0].message == written and alone[0].source == "model"  # its own chooser
    decided = complete_context(message, context, "", settings, decider=keys_memory).candidates
    assert decided[0].source == "memory" and decided[0].message.startswith("cache: evict entries")
    assert any(c.message == written for c in decided)  # a model's place: the message model's text
    own = {c.message for c in complete_context(keys_model, context, "", settings).candidates}
    decided = complete_context(message, context, "", settings, decider=keys_model).candidates
    assert decided[0].message == written  # the keystroke model chose a model: not its own text
    assert not {c.message for c in decided if c.source == "model"} & (own - {written})
    assert len(decided) <= 4 and len({c.message.lower() for c in decided}) == len(decided)
    typed = complete_context(message, context, "cache: ev", settings, decider=keys_memory)
    assert {c.source for c in typed.candidates} == {"model", "memory"}  # the memory continues it
    assert typed.candidates[0].source == "model"  # typed: the message model's own choice
