"""Completion with a tiny real model: mid-word healing, distinct candidates, CLI and batch mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    LEARNED_DIFF_FILE,
    LEARNED_MESSAGE,
    PARSER_AFTER,
    PARSER_BEFORE,
    cmc_env,
    commit_file,
    git,
    learned_diff,
)

from cmc.complete import Context, complete_context
from cmc.decoding import DecodeSettings
from cmc.model import load_model


@pytest.fixture
def lm(tiny_model: Path):
    return load_model(str(tiny_model))


@pytest.mark.parametrize(
    "typed", ["", "F", "Fix pa", "Fix parser cr", "Fix parser crash on empty con", "Fix "]
)
def test_completion_extends_the_typed_text(lm, typed: str):
    result = complete_context(lm, Context(learned_diff()), typed, DecodeSettings(num_candidates=3))
    best = result.candidates[0]
    assert best.message == LEARNED_MESSAGE
    assert typed + best.continuation == LEARNED_MESSAGE


def test_half_typed_word_is_finished_although_its_tokens_differ(lm):
    # "Fix parser cr" tokenizes with "cr" as its own piece; the learned message has " crash" as
    # one token. Constrained decoding must still reach it.
    tok = lm.tokenizer
    full_ids = tok.encode(LEARNED_MESSAGE, add_special_tokens=False)
    typed_ids = tok.encode("Fix parser cr", add_special_tokens=False)
    assert full_ids[: len(typed_ids)] != typed_ids
    result = complete_context(
        lm, Context(learned_diff()), "Fix parser cr", DecodeSettings(num_candidates=1)
    )
    assert result.candidates[0].continuation.startswith("ash")


def test_every_candidate_respects_the_typed_text_and_they_are_distinct(lm):
    result = complete_context(
        lm,
        Context("unrelated.txt\n+ something else entirely"),
        "Add sup",
        DecodeSettings(num_candidates=4),
    )
    from cmc.decoding.beam import substance

    messages = [c.message for c in result.candidates]
    assert len({substance(m) for m in messages}) == len(messages) >= 2
    assert all(m.startswith("Add sup") for m in messages)


def _run_cmc(*args, cwd, env=None):
    return subprocess.run(["cmc", *args], cwd=cwd, env=cmc_env(env), capture_output=True, text=True)


def test_cli_complete_json_on_a_staged_change(repo: Path, tiny_model: Path):
    commit_file(repo, LEARNED_DIFF_FILE, PARSER_BEFORE, "Add a parser for configuration files")
    (repo / LEARNED_DIFF_FILE).write_text(PARSER_AFTER)
    git(repo, "add", ".")
    out = _run_cmc(
        "complete",
        "--model",
        str(tiny_model),
        "--prefix",
        "Fix parser cr",
        "--json",
        "-n",
        "2",
        cwd=repo,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["prefix"] == "Fix parser cr"
    assert data["candidates"][0]["message"] == LEARNED_MESSAGE
    assert data["candidates"][0]["continuation"] == LEARNED_MESSAGE[len("Fix parser cr") :]
    assert data["model"] == str(tiny_model) and data["latency_ms"] > 0
    plain = _run_cmc("complete", "--model", str(tiny_model), cwd=repo)
    assert plain.stdout.strip() == LEARNED_MESSAGE


def test_batch_mode_uses_rows_with_raw_hunks(tmp_path: Path, tiny_model: Path):
    raw = "@@ -1,2 +1,4 @@\n def parse(text):\n+    if not text:\n+        return []\n     return text.split()\n"
    rows = [
        {
            "id": "a",
            "mods": [
                {
                    "change_type": "MODIFY",
                    "old_path": LEARNED_DIFF_FILE,
                    "new_path": LEARNED_DIFF_FILE,
                    "diff": raw,
                }
            ],
            "prefix": "Fix pars",
        },
        {"hash": "b" * 40, "diff": learned_diff(), "history": ["Add the parser"], "prefix": ""},
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _run_cmc(
        "complete",
        "--model",
        str(tiny_model),
        "--batch",
        str(src),
        "--out",
        str(dst),
        "-n",
        "2",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", "b" * 40]
    assert "Fix pars" + got[0]["continuation"] == LEARNED_MESSAGE
    assert got[1]["continuation"] == LEARNED_MESSAGE
    assert len(got[0]["candidates"]) == 2


def test_no_model_gives_one_line_error(repo: Path, tmp_path: Path):
    out = _run_cmc("complete", "--model", str(tmp_path / "missing"), cwd=repo)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("cmc: error:")


def test_bad_batch_line_is_reported_with_its_line_number(tmp_path: Path, tiny_model: Path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"diff": "x"}\nnot json\n')
    out = _run_cmc(
        "complete",
        "--model",
        str(tiny_model),
        "--batch",
        str(src),
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert out.returncode == 1 and "in.jsonl:2" in out.stderr


def test_help_and_disabled_hook_do_not_import_torch(tmp_path: Path):
    code = (
        "import sys; sys.argv=['cmc','--help']\n"
        "from cmc.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "from cmc import hook; import os; os.environ['CMC_DISABLE']='1'; hook.run('/nonexistent')\n"
        "bad=[m for m in ('torch','transformers','git') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


BAD_ROWS = [
    ('{"mods": "not a list", "prefix": ""}', "mods must be a list"),
    ("[1, 2]", "a row must be a JSON object"),
    ("42", "a row must be a JSON object"),
    ('{"diff": "x", "prefix": 7}', "prefix must be a string"),
    ('{"diff": 5}', "diff must be a string"),
    ('{"prefix": "Fix"}', "a row needs mods"),
    ('{"diff": "x", "history": "one string"}', "history must be a list of strings"),
    ('{"mods": [{"diff": 3}]}', "mods[0].diff must be a string"),
]


@pytest.mark.parametrize("line, reason", BAD_ROWS)
def test_each_bad_batch_row_is_one_line_before_the_model_loads(
    tmp_path: Path, line: str, reason: str
):
    src = tmp_path / "in.jsonl"
    src.write_text('{"diff": "fine"}\n' + line + "\n")
    # A model path that does not exist: the row check must answer first.
    out = _run_cmc("complete", "--model", str(tmp_path / "nope"), "--batch", str(src), "--out",
                   str(tmp_path / "o.jsonl"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert f"in.jsonl:2: {reason}" in out.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_batch_bad_paths_and_bytes_lose_nothing(tmp_path: Path, tiny_model: Path):
    src = tmp_path / "in.jsonl"
    good = json.dumps({"id": "g", "diff": learned_diff(), "prefix": "Fix pa"}) + "\n"
    src.write_bytes(good.encode() + b'{"diff": "caf\xe9"}\n' + good.encode())
    before = src.read_bytes()
    same = _run_cmc(
        "complete", "--model", str(tiny_model), "--batch", str(src), "--out", str(src), cwd=tmp_path
    )
    assert same.returncode == 1 and "is the input file" in same.stderr
    assert src.read_bytes() == before
    missing = _run_cmc("complete", "--model", str(tiny_model), "--batch", str(src), "--out",
                       str(tmp_path / "no" / "o.jsonl"), cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    utf8 = _run_cmc(
        "complete",
        "--model",
        str(tiny_model),
        "--batch",
        str(src),
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert utf8.returncode == 1 and "in.jsonl:2: not UTF-8" in utf8.stderr
    dst = tmp_path / "o.jsonl"
    dst.write_text("previous results\n")
    if Path("/dev/full").exists():
        full = _run_cmc("complete", "--model", str(tiny_model), "--batch", str(src), "--out", "/dev/full",
                        "--skip-invalid", cwd=tmp_path)  # fmt: skip
        assert full.returncode == 1 and full.stderr.strip().count("\n") == 0
        assert "No space left on device" in full.stderr
    skipped = _run_cmc("complete", "--model", str(tiny_model), "--batch", str(src), "--out", str(dst),
                       "--skip-invalid", cwd=tmp_path)  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    assert "2 rows completed" in skipped.stderr and "1 invalid rows skipped" in skipped.stderr
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["id"] for g in got] == ["g", "g"] and "Fix pa" + got[0][
        "continuation"
    ] == LEARNED_MESSAGE


def test_corrupt_or_pickled_weights_are_one_line(tmp_path: Path, tiny_model: Path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    next(pickled.glob("*.safetensors")).rename(pickled / "pytorch_model.bin")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"diff": "x"}) + "\n")
    for model in (corrupt, pickled):
        out = _run_cmc(
            "complete",
            "--model",
            str(model),
            "--batch",
            str(src),
            "--out",
            str(tmp_path / "o"),
            cwd=tmp_path,
        )
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith(
            "cmc: error: cannot load model"
        )


def test_a_huge_typed_word_is_bounded_work(lm):
    typed = "Fix " + "y" * 1500
    result = complete_context(lm, Context(learned_diff()), typed, DecodeSettings(num_candidates=1))
    assert result.candidates and result.candidates[0].message.startswith(typed)


def test_nothing_staged_is_said(repo: Path, tiny_model: Path):
    commit_file(repo, "a.txt", "1\n", "Add a")
    git(repo, "config", "cmc.model", str(tiny_model))
    out = _run_cmc("complete", "--prefix", "Fix", cwd=repo)
    assert out.returncode == 0 and out.stdout == ""  # no suggestion for an empty change …
    assert out.stderr == "cmc: no suggestion: the change is empty (nothing staged); git add first\n"
    (repo / "a.txt").write_text("2\n")
    git(repo, "add", "a.txt")
    assert "nothing is staged" not in _run_cmc("complete", "--prefix", "Fix", cwd=repo).stderr


def test_candidates_differ_in_substance_not_by_a_digit_or_a_period():
    from cmc.decoding.beam import substance

    assert substance("Bump version to 1.2.3.") == substance("bump version to 1.2.4")
    assert substance("Fix typo") == substance("Fix typo.") != substance("Fix typos")


def test_a_subject_line_only_unless_the_author_writes_bodies():
    """Measured on the test repositories (README): bodies the author does not write cost B-Norm.
    The bundled model writes a body here when the history has them, and stops at the subject
    line when it has none."""
    from cmc.complete import Context, complete_context, writes_bodies
    from cmc.model import load_model
    from cmc.settings import BUNDLED_MODEL

    assert not writes_bodies([]) and not writes_bodies(["a b", "c d", "e f", "g h"])
    assert writes_bodies(["a b"] * 7 + ["subject\n\nbody"] * 3)
    assert not writes_bodies(["subject\n\nbody"] * 3 + ["a b"] * 10)  # only the last ten count
    lm = load_model(str(BUNDLED_MODEL))
    diff = "src/parser.py\n def parse(text):\n+    if not text:\n+        return []\n     return text.split()\n"
    bodies = ["Add the tokenizer\n\nIt splits on whitespace and keeps quoted strings together.",
              "Fix the lexer on tabs\n\nTabs were counted as one column; they are now expanded.",
              "Speed up parsing\n\nThe grammar is compiled once per process."]  # fmt: skip
    subjects = [b.split("\n")[0] for b in bodies]
    with_bodies = complete_context(lm, Context(diff, bodies), "").candidates
    assert any("\n" in c.continuation for c in with_bodies)
    without = complete_context(lm, Context(diff, subjects), "").candidates
    assert without and not any("\n" in c.continuation for c in without)
