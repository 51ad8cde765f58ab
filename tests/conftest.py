"""Shared fixtures: real git repositories in temp folders and tiny real models trained here."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# What cmc caches (prepared int8w weights, converted bases) goes to this test session's own
# folder, for every process the tests start: never into the user's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="cmc-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

# A message the tiny model learns by heart, so completions of it can be checked exactly.
LEARNED_MESSAGE = "Fix parser crash on empty configuration files"
LEARNED_DIFF_FILE = "src/parser.py"


def git(
    repo: Path, *args: str, env: dict | None = None, check: bool = True, input: str | None = None
):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        env=full_env,
        capture_output=True,
        text=True,
        check=check,
        input=input,
    )


def init_repo(path: Path, name: str = "Ada Lovelace", email: str = "ada@example.com") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", name)
    git(path, "config", "user.email", email)
    git(path, "config", "commit.gpgsign", "false")
    return path


def commit_file(repo: Path, rel: str, content: str, message: str, env: dict | None = None) -> None:
    target = repo / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    git(repo, "add", rel)
    git(repo, "commit", "-q", "-m", message, env=env)


def cmc_env(extra: dict | None = None) -> dict:
    """Environment for processes that must find this interpreter's `cmc` on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("CMC_DISABLE", None)
    env["CMC_NO_DAEMON"] = "1"  # tests that want the daemon say so and give it a private socket
    env.update(extra or {})
    return env


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


PARSER_BEFORE = "def parse(text):\n    return text.split()\n"
PARSER_AFTER = "def parse(text):\n    if not text:\n        return []\n    return text.split()\n"


def learned_diff() -> str:
    """The processed diff of staging PARSER_AFTER over PARSER_BEFORE (as the hook will see it)."""
    from cmc.diffs import Mod, process_diff

    raw = "@@ -1,2 +1,4 @@\n def parse(text):\n+    if not text:\n+        return []\n     return text.split()\n"
    return process_diff([Mod("MODIFY", LEARNED_DIFF_FILE, LEARNED_DIFF_FILE, raw)])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama with its own BPE tokenizer, overfit on one (diff, message) pair in seconds."""
    return overfit_model(
        tmp_path_factory.mktemp("models") / "tiny", learned_diff(), LEARNED_MESSAGE
    )


def overfit_model(out: Path, diff: str, message: str) -> Path:
    """A tiny Llama and BPE tokenizer trained here to write ``message`` for ``diff``."""
    import torch

    from cmc.prompt import build_prompt
    from cmc.training.modeling import new_model
    from cmc.training.tokenizer import train_tokenizer

    corpus = [message, diff, PARSER_AFTER] * 5 + [
        "Add tests for the tokenizer",
        "Update documentation of the parser",
        "Refactor configuration loading",
    ]
    tokenizer = train_tokenizer(corpus, vocab_size=400, min_frequency=1)
    model = new_model(tokenizer, "tiny", max_positions=1024)
    prompt = build_prompt(tokenizer, diff, [], message, finished=True)
    ids = torch.tensor([prompt.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(prompt.input_ids, prompt.loss_mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"tiny model did not learn its message (loss {loss.item():.3f})"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Module names a hostile repository could plant in its root to be imported by a careless `python -m`.
PLANTED_MODULES = ("json", "click", "logging", "torch", "socket", "cmc")


def plant_modules(root: Path, markers: Path) -> list[Path]:
    """Put modules in ``root`` that record in ``markers`` when they are imported; return the markers."""
    markers.mkdir(parents=True, exist_ok=True)
    found = []
    for name in PLANTED_MODULES:
        marker = markers / f"{name}.ran"
        (root / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'w').write('imported from the repository')\n"
            f"raise ImportError('planted {name}.py was imported')\n"
        )
        found.append(marker)
    return found


@pytest.fixture(scope="session")
def token_data(tmp_path_factory) -> tuple[Path, Path]:
    """Pre-tokenized train/validation data and a tokenizer, built from synthetic commits (the
    trainer's tests)."""
    from cmc.training.tokenizer import train_tokenizer
    from cmc.training.tokens import pretokenize_split

    root = tmp_path_factory.mktemp("tokdata")
    verbs, things = (
        ["Add", "Fix", "Remove", "Rename", "Document"],
        ["parser", "cache", "client", "server", "logger", "config"],
    )
    rows = []
    for i in range(60):
        v, t = verbs[i % 5], things[(i * 7) % 6]
        body = "".join(f"+    {t}_{i}_{k} = build_{t}({k})\n" for k in range(2 + i % 9))
        rows.append(
            {
                "mods": [
                    {
                        "change_type": "MODIFY",
                        "old_path": f"src/{t}.py",
                        "new_path": f"src/{t}.py",
                        "diff": body,
                    }
                ],
                "message": f"{v} {t} support for case {i}",
                "history": [r["message"] for r in rows[-3:]],
            }
        )
    tok = train_tokenizer(
        [r["message"] for r in rows] + [r["mods"][0]["diff"] for r in rows],
        vocab_size=300,
        min_frequency=1,
    )
    tok.save_pretrained(root / "tok")
    pretokenize_split(rows[:48], root / "tok", root / "data", "train", progress=False)
    pretokenize_split(rows[48:], root / "tok", root / "data", "validation", progress=False)
    return root / "data", root / "tok"
