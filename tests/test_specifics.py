"""Suggestions a user can accept without checking: specifics are copied from the context, never
made up, and no text is degenerate — measured by `cmc.specifics`, kept by its decoder constraint."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import overfit_model

from cmc import specifics
from cmc.complete import Context, complete_context
from cmc.decoding import DecodeSettings
from cmc.diffs import Mod, process_diff
from cmc.specifics import SpecificsConstraint, Support, degenerate, repair, unsupported

# What a user met (the examples): each states something the change does not support.
BUMP_DIFF = process_diff([Mod("MODIFY", "setup.cfg", "setup.cfg",
                              "@@ -1,3 +1,3 @@\n [metadata]\n-version = 2.3.0\n+version = 2.4.1\n"
                              " # see CHANGES.md from 9.9.9\n")])  # fmt: skip
LEARNED_BAD = "Bump parser to 3.0.0 in Composer.php.php typo typo [skip ci]"


@pytest.mark.parametrize(
    ("text", "found", "bad"),
    [
        ("bump to 3.0.0", ["3.0.0"], []),
        ("Update ultraviolet v0.1.0.0 in go.mod", ["v0.1.0.0", "go.mod"], []),
        ("Fix Composer.php.php", ["Composer.php.php"], ["doubled suffix"]),
        ("move actions/actions/checkout", [], ["doubled suffix"]),  # a path counts for its file
        ("Fix typo typo typo fix typo", [], ["repeated word"]),
        ("[ci] [ci skip]", [], ["CI marker"]),
        ("Expose `FunctionAuth` e.g. for the client", ["FunctionAuth"], []),
        ("Fix the parser, i.e. the tokenizer.", [], []),
        # seen in the test repositories' suggestions (issue 30)
        ("Run test-test-tests-CI-CI", [], ["repeated part"]),
        ("Fix install-install step", [], ["repeated part"]),
        ("docs(docs): update", [], ["repeated part"]),
        ("lib/lib: fix build", [], ["repeated part"]),
        ("Add re-read and co-author support", [], []),
        ("Weekday abbreviations + \u2018ago\ufffd", [], ["replacement character"]),
        ("Bump pnpm/action-setup from 5 to 6", ["5", "6"], []),
    ],
)
def test_what_counts(text, found, bad):
    assert specifics.specifics(text) == found
    assert degenerate(text) == bad


def test_support_takes_versions_from_changed_lines_only():
    support = Support.of(BUMP_DIFF, ["Release 1.0"], "Bump ")
    assert support.versions == {"2.3.0", "2.4.1", "1.0"}  # not the context line's 9.9.9
    assert unsupported("Bump to 9.9.9 in setup.cfg", support) == ["9.9.9"]
    assert unsupported("Bump to 2.4.1 in setup.cfg", support) == []
    assert unsupported("Update CHANGES.md", support) == ["CHANGES.md"]  # only a context line has it
    # A message recalled from an earlier bump is fitted to this one's versions.
    assert (
        repair("Bump version from 1.9.0 to 2.0.0", "Bump ", support)
        == "Bump version from 2.3.0 to 2.4.1"
    )
    assert repair("Bump to 2.0.0 in pom.xml", "Bump ", support) is None  # pom.xml is not here


def test_the_constraint_decides_token_by_token():
    support = Support.of(BUMP_DIFF + "\n+def FunctionAuth(): pass", [], "Bump ")
    c = SpecificsConstraint(None, support, 0, "Bump ", "")
    allowed = {
        ("Bump to ", "2"): True, ("Bump to 2", "."): True, ("Bump to 2.", "4"): True,
        ("Bump to 2.", "9"): False,  # no version 2.9… changes here
        ("Bump to 3.", "0"): False,  # ("3." alone may end a sentence)
        ("Bump to 2.4", None): False,  # ends before the version it started is whole
        ("Bump to 2.4.1", None): True,
        ("Fix typo", " typo "): False, ("Fix typo", " typos"): True,
        ("Update setup.cfg", ".cfg"): False, ("Update setup", ".cfg"): True,
        ("Update README", ".md"): False,
        ("Expose `Func", "tion` "): False, ("Expose `Function", "Auth` "): True,
        ("Fix it", " [skip ci]"): False,
    }  # fmt: skip
    assert {k: c.allows(*k) for k in allowed} == allowed


@pytest.fixture(scope="module")
def bad_model(tmp_path_factory) -> Path:
    """Overfit to write a message with every problem, whatever the diff."""
    return overfit_model(tmp_path_factory.mktemp("models") / "bad", BUMP_DIFF, LEARNED_BAD)


def test_decoding_keeps_to_the_context(bad_model: Path, monkeypatch):
    from cmc.model import load_model

    lm = load_model(str(bad_model))
    context = Context(BUMP_DIFF)
    monkeypatch.setattr(specifics, "CONSTRAIN", False)
    free = complete_context(lm, context, "", DecodeSettings(num_candidates=3)).candidates
    assert free[0].message == LEARNED_BAD  # what it writes when nothing stops it
    monkeypatch.setattr(specifics, "CONSTRAIN", True)
    kept = complete_context(lm, context, "", DecodeSettings(num_candidates=3)).candidates
    support = context.support("")
    assert kept and all(specifics.problems(c.message, support) == [] for c in kept), kept
    # A half-typed version is finished as one the diff changes (the model wanted 3.0.0).
    typed = complete_context(lm, context, "Bump parser to 2.", DecodeSettings(num_candidates=3))
    assert typed.candidates
    for c in typed.candidates:
        assert c.message.split()[3] in ("2.3.0", "2.4.1"), typed


def test_an_empty_change_gets_no_suggestion(bad_model: Path):
    from cmc.model import load_model

    result = complete_context(load_model(str(bad_model)), Context(""), "", DecodeSettings())
    assert result.candidates == [] and result.note == "the change is empty (nothing staged)"


def test_edges_of_a_real_repository(tmp_path: Path, bad_model: Path):
    """An empty commit gets a comment saying why instead of a made-up message; a binary-only
    change names only its own files; a 20,000-line new file shows the model its first lines."""
    import subprocess

    from conftest import cmc_env, commit_file, git, init_repo

    from cmc.gitctx import GitRepo

    repo = init_repo(tmp_path / "repo")
    commit_file(repo, "README.md", "hello\n", "Add a readme for the project")
    assert subprocess.run(["cmc", "hook", "install"], cwd=repo, env=cmc_env()).returncode == 0
    git(repo, "config", "cmc.model", str(bad_model))
    git(repo, "config", "cmc.timeout", "120")
    seen = tmp_path / "seen.txt"
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\ncp "$1" "{seen}"\n')
    editor.chmod(0o755)
    subprocess.run(["git", "commit", "-q", "--allow-empty"], cwd=repo, capture_output=True,
                   env=cmc_env({"GIT_EDITOR": str(editor)}))  # fmt: skip
    lines = seen.read_text().splitlines()
    assert lines[0] == "" and "# cmc: no suggestion: the change is empty (nothing staged)." in lines

    (repo / "logo.png").write_bytes(bytes(range(256)) * 4)
    git(repo, "add", "logo.png")
    out = subprocess.run(["cmc", "complete", "--json", "-n", "3"], cwd=repo, env=cmc_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    for c in json.loads(out.stdout)["candidates"]:
        named = specifics.specifics(c["message"])
        assert all(n in ("logo.png",) for n in named), c["message"]

    git(repo, "reset", "-q")
    (repo / "table.py").write_text("".join(f"ROW_{i} = {i}\n" for i in range(20_000)))
    git(repo, "add", "table.py")
    (mod,) = GitRepo(repo).staged_mods()
    assert mod.diff.startswith("@@ -0,0 +1,20000 @@\n+ROW_0 = 0\n+ROW_1 = 1\n") and mod.truncated


def test_a_bumps_bare_numbers_must_be_the_changes():
    """A recalled "Bump X from 5 to 6" for a change from 6.0.9 to 6.0.10 said the wrong versions."""
    pnpm = process_diff([Mod("MODIFY", "package.json", "package.json",
                             '@@ -1 +1 @@\n-  "pnpm": "6.0.9"\n+  "pnpm": "6.0.10"\n')])  # fmt: skip
    support = Support.of(pnpm, [])
    assert unsupported("Bump pnpm/action-setup from 5 to 6", support) == ["5", "6"]
    assert repair("Bump pnpm/action-setup from 5 to 6", "", support) == (
        "Bump pnpm/action-setup from 6.0.9 to 6.0.10"
    )
    checkout = process_diff([Mod("MODIFY", "ci.yml", "ci.yml",
                                 "@@ -1 +1 @@\n-uses: actions/checkout@v3\n+uses: actions/checkout@v4\n")])  # fmt: skip
    assert unsupported("Bump actions/checkout from 3 to 4", Support.of(checkout, [])) == []


def test_a_compound_the_context_holds_is_not_degenerate():
    support = Support.of("lib/lib/mod.py\n+x = 1", [])
    assert degenerate("Fix lib/lib: imports", support) == []
    assert degenerate("Fix lib/lib: imports", Support.of("src/mod.py\n+x = 1", [])) == [
        "repeated part"
    ]
