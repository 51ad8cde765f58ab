"""Git context: staged changes as mods, exclusions, secrets, author history (real repositories)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_file, git, init_repo

from cmc.diffs import Mod, parse_patch, process_diff, unquote_path
from cmc.gitctx import GitRepo
from cmc.secrets import mask_secrets
from cmc.settings import Settings


def staged(repo: Path) -> dict[str, Mod]:
    exclude = Settings.load(repo, repo / ".git").exclude
    return {m.path: m for m in GitRepo(repo).staged_mods(exclude)}


def test_first_commit_add_with_space_and_non_ascii_paths(repo: Path):
    (repo / "dir with space").mkdir()
    (repo / "dir with space" / "naïve file.txt").write_text("hello\nworld\n")
    (repo / "plain.py").write_text("print('hi')\n")
    git(repo, "add", ".")
    mods = staged(repo)
    assert set(mods) == {"dir with space/naïve file.txt", "plain.py"}
    m = mods["dir with space/naïve file.txt"]
    assert (m.change_type, m.old_path) == ("ADD", None)
    assert "+hello" in m.diff and "+world" in m.diff
    assert process_diff(mods.values()).startswith(
        "new file dir with space/naïve file.txt\n+hello\n+world"
    )


def test_rename_modify_delete_and_binary(repo: Path):
    commit_file(
        repo,
        "old_name.py",
        "".join(f"line {i}\n" for i in range(30)),
        "Add a module with many lines",
    )
    commit_file(repo, "gone.txt", "bye\n", "Add a file that will be removed")
    git(repo, "mv", "old_name.py", "new_name.py")
    (repo / "new_name.py").write_text("".join(f"line {i}\n" for i in range(29)) + "changed\n")
    git(repo, "rm", "-q", "gone.txt")
    (repo / "image.png").write_bytes(bytes(range(256)) * 4)
    git(repo, "add", ".")
    mods = staged(repo)
    assert mods["new_name.py"].change_type == "RENAME"
    assert mods["new_name.py"].old_path == "old_name.py"
    assert "+changed" in mods["new_name.py"].diff
    assert mods["gone.txt"].change_type == "DELETE" and mods["gone.txt"].new_path is None
    assert mods["image.png"].change_type == "ADD" and mods["image.png"].diff == ""
    text = process_diff(mods.values())
    assert "rename from old_name.py\nrename to new_name.py" in text
    assert "deleted file gone.txt" in text
    assert "new file image.png" in text


def test_non_utf8_content_does_not_break_and_is_not_shown(repo: Path):
    (repo / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    git(repo, "add", ".")
    mods = staged(repo)
    assert mods["latin1.txt"].change_type == "ADD"
    assert (
        process_diff(mods.values()) == "new file latin1.txt"
    )  # non-ASCII diffs lose their content


def test_submodule_change_is_listed(repo: Path, tmp_path: Path):
    sub = init_repo(tmp_path / "sub")
    commit_file(sub, "s.txt", "s\n", "Add the submodule content")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "vendor/sub")
    mods = staged(repo)
    assert "vendor/sub" in mods and ".gitmodules" in mods
    assert "Subproject commit" in mods["vendor/sub"].diff


def test_lockfiles_and_configured_globs_are_excluded(repo: Path):
    (repo / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (repo / "gen").mkdir()
    (repo / "gen" / "api.py").write_text("GENERATED = True\n")
    (repo / "notes.md").write_text("secret plans\n")
    (repo / "main.py").write_text("print(1)\n")
    (repo / ".cmcignore").write_text("# comment\n*.md\n")
    git(repo, "config", "--add", "cmc.exclude", "gen/*")
    git(repo, "add", ".")
    mods = staged(repo)
    assert mods["package-lock.json"].diff == ""
    assert mods["gen/api.py"].diff == ""
    assert mods["notes.md"].diff == ""
    assert "+print(1)" in mods["main.py"].diff
    assert "lockfileVersion" not in process_diff(mods.values())


def test_secrets_are_masked():
    diff = "\n".join(
        [
            "+AWS_KEY = 'AKIAABCDEFGHIJKLMNOP'",
            '+password = "hunter2hunter2"',
            "+token: ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "+-----BEGIN RSA PRIVATE KEY-----",
            "+MIIEowIBAAKCAQEA1234567890abcdef",
            "+-----END RSA PRIVATE KEY-----",
            "+normal = compute(value)",
        ]
    )
    masked = mask_secrets(diff)
    for secret in ("AKIAABCDEFGHIJKLMNOP", "hunter2hunter2", "ghp_abcdef", "MIIEowIBAAKCAQEA"):
        assert secret not in masked
    assert "+normal = compute(value)" in masked
    assert masked.count("[secret]") >= 4


def test_whole_hunks_are_kept_within_budget():
    hunk = "@@ -1 +1 @@\n-" + "a" * 50 + "\n+" + "b" * 50 + "\n"
    patch = "diff --git a/f.txt b/f.txt\nindex 1..2 100644\n--- a/f.txt\n+++ b/f.txt\n" + hunk * 10
    (mod,) = parse_patch(patch.splitlines(keepends=True), max_chars_per_file=len(hunk) * 3 + 5)
    assert mod.diff == hunk * 3 and mod.truncated


def test_author_history_is_own_cleaned_non_merge_newest_last(repo: Path):
    other = {"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"}
    commit_file(
        repo, "a.txt", "1\n", "Add the first feature flag\n\nSigned-off-by: Ada <ada@example.com>"
    )
    commit_file(repo, "b.txt", "1\n", "Add tests written by someone else", env=other)
    commit_file(repo, "a.txt", "2\n", "Fix flag parsing, see https://example.com/issue #42")
    commit_file(repo, "a.txt", "3\n", "wip")  # filtered out as trivial
    git(repo, "checkout", "-q", "-b", "side")
    commit_file(repo, "c.txt", "1\n", "Add side work on another branch")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge branch side", "side")
    history = GitRepo(repo).author_history("Ada Lovelace", "ada@example.com")
    assert history == [
        "Add the first feature flag",
        "Fix flag parsing, see",
        "Add side work on another branch",
    ]


def test_history_of_an_empty_repository_is_empty(repo: Path):
    assert GitRepo(repo).author_history("Ada Lovelace", "ada@example.com") == []


@pytest.mark.parametrize(
    "patterns, excluded, kept",
    [
        (["docs/"], ["docs/a.md", "pkg/docs/b.md"], ["docs.md", "src/a.py"]),
        (["/build/"], ["build/x.o"], ["src/build/x.o"]),
        (["*.md", "!README.md"], ["notes.md", "d/CHANGES.md"], ["README.md", "d/README.md"]),
        (["gen/*", "!gen/keep.py"], ["gen/api.py"], ["gen/keep.py", "src/gen.py"]),
        (["*.lock", "!*.lock", "poetry.lock"], ["poetry.lock"], ["Cargo.lock"]),
    ],
)
def test_exclusion_patterns_dirs_and_negation(patterns, excluded, kept):
    from cmc.gitctx import Exclusions

    excl = Exclusions(patterns)
    assert [p for p in excluded if not excl.matches(p)] == []
    assert [p for p in kept if excl.matches(p)] == []


def test_a_huge_cmcignore_is_compiled_once_and_capped(repo: Path):
    import time

    (repo / ".cmcignore").write_text("".join(f"generated/file_{i}_*.py\n" for i in range(40_000)))
    for i in range(20):
        (repo / f"m{i}.py").write_text(f"x = {i}\n")
    git(repo, "add", ".")
    started = time.perf_counter()
    mods = staged(repo)
    assert time.perf_counter() - started < 30  # was ~17 s a file with fnmatch's thrashing cache
    assert mods["m3.py"].diff  # not excluded


@pytest.mark.parametrize("name", ["tab\there.py", 'quote"d.py', "new\nline.py", "back\\slash.py"])
def test_paths_git_must_quote(repo: Path, name: str):
    commit_file(repo, "base.txt", "x\n", "Add base")
    (repo / name).write_text("print('odd name')\n")
    git(repo, "add", "--", name)
    mods = staged(repo)
    assert list(mods) == [name]
    assert "odd name" in mods[name].diff


def cmc_prompt(repo: Path, model: Path) -> dict:
    """`cmc prompt --json` for the staged change of ``repo`` with ``model``."""
    import json
    import subprocess

    from conftest import cmc_env

    out = subprocess.run(["cmc", "prompt", "--json", "--model", str(model)], cwd=repo,
                         env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_model_with_a_recall_section_reads_the_repository_memory(
    repo: Path, tiny_model: Path, tmp_path: Path
):
    """Through `cmc prompt` and `cmc complete`: the memory's most alike commits fill the section,
    only for a model that has it, and nothing is read without a memory."""
    import json
    import shutil
    import subprocess

    from conftest import cmc_env

    from cmc.model import read_model_meta

    commit_file(repo, "src/parser.py", "def parse(header_line):\n    return header_line\n", "parser: handle empty input")  # fmt: skip
    commit_file(repo, "docs/guide.md", "# Guide\n\nHow to start.\n", "docs: a first guide")
    (repo / "src" / "parser.py").write_text(
        "def parse(header_line):\n    return header_line.strip()\n"
    )
    git(repo, "add", "src/parser.py")

    with_recall = tmp_path / "with-recall"
    shutil.copytree(tiny_model, with_recall)
    meta = read_model_meta(with_recall)
    meta.setdefault("budget", {})["recall_tokens"] = 64
    (with_recall / "cmc.json").write_text(json.dumps(meta))
    assert cmc_prompt(repo, with_recall)["recall_used"] == 0  # no memory yet: no section to fill
    built = subprocess.run(["cmc", "memory", "build"], cwd=repo, env=cmc_env(),
                           capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    plain = cmc_prompt(repo, tiny_model)
    assert plain["recall_used"] == 0 and "<|recall|>" not in plain["text"]
    shown = cmc_prompt(repo, with_recall)
    assert shown["recall_used"] >= 1
    section = shown["text"].split("<|recall|>")[1].split("<|msg|>")[0]
    assert section.rstrip().endswith("parser: handle empty input")  # the most alike, last
    done = subprocess.run(["cmc", "complete", "--json", "--model", str(with_recall)], cwd=repo,
                          env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["candidates"]


def test_a_model_with_a_file_history_section_reads_the_staged_files_history(
    repo: Path, tiny_model: Path, tmp_path: Path
):
    """Through `cmc prompt` and `cmc complete`: the section is gathered only for a model that has it."""
    import json
    import shutil
    import subprocess

    from conftest import cmc_env

    from cmc.model import read_model_meta

    commit_file(repo, "src/parser.py", "a\n", "parser: handle empty input")
    commit_file(repo, "src/cache.py", "b\n", "cache: add a size limit")
    commit_file(repo, "src/parser.py", "a\nb\n", "parser: keep line numbers", env={
        "GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"})  # fmt: skip
    (repo / "src" / "parser.py").write_text("a\nb\nc\n")
    git(repo, "add", "src/parser.py")

    plain = cmc_prompt(repo, tiny_model)
    assert plain["file_history_used"] == 0 and "<|files|>" not in plain["text"]
    with_files = tmp_path / "with-files"
    shutil.copytree(tiny_model, with_files)
    meta = read_model_meta(with_files)
    meta.setdefault("budget", {})["file_history_tokens"] = 64
    (with_files / "cmc.json").write_text(json.dumps(meta))
    shown = cmc_prompt(repo, with_files)
    assert shown["file_history_used"] == 2
    files_part = shown["text"].split("<|files|>")[1].split("<|history|>")[0]
    assert "parser: handle empty input" in files_part and "parser: keep line numbers" in files_part
    assert "cache" not in files_part  # another file's commit
    done = subprocess.run(["cmc", "complete", "--json", "--model", str(with_files)], cwd=repo,
                          env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["candidates"]


def test_a_cmcignore_is_read_within_bounds(repo: Path):
    """A committed .cmcignore is anyone's to write: a 1 MB line and a flood of patterns are cut."""
    from cmc.gitctx import DEFAULT_EXCLUDES, MAX_IGNORE_PATTERNS, MAX_PATTERN_CHARS

    flood = "".join(f"gen/{i}/*.py\n" for i in range(5_000))
    (repo / ".cmcignore").write_text("*.md\n" + "a" * 1_000_000 + "\n" + flood)
    patterns = GitRepo(repo).exclusions().patterns
    assert "*.md" in patterns
    assert max(len(p) for p in patterns) <= MAX_PATTERN_CHARS
    assert len(patterns) <= len(DEFAULT_EXCLUDES) + MAX_IGNORE_PATTERNS


def test_a_file_name_cannot_write_lines_into_the_models_diff(repo: Path):
    commit_file(repo, "base.txt", "x\n", "Add base")
    name = "x.py\n+password = 'forged line'"
    (repo / name).write_text("print('odd name')\n")
    git(repo, "add", "--", name)
    mods = staged(repo)
    text = process_diff(list(mods.values()))
    assert "\n+password" not in text
    header = text.splitlines()[0]
    assert header.startswith('new file "x.py\\n+password') and unquote_path(header[9:]) == name
