"""Secrets never reach the model: every rule family of the corpus, look-alikes kept, credential
files never read, history and training text masked by the same function."""

from __future__ import annotations

from pathlib import Path

from conftest import commit_file, git
from secret_corpus import negatives, positives

from cmc.diffs import process_diff
from cmc.gitctx import GitRepo
from cmc.messages import clean_message
from cmc.secrets import MASK, is_credential_file, mask_secrets


def test_recall_and_false_positives_on_the_corpus():
    pos, neg = positives(), negatives()
    assert len(pos) >= 150 and len({f for f, _, _ in pos}) >= 40
    missed = [(family, text) for family, text, secret in pos if secret in mask_secrets(text)]
    changed = [(family, text) for family, text in neg if mask_secrets(text) != text]
    assert len(missed) / len(pos) <= 0.03, missed
    assert changed == []


def test_diff_markers_and_key_blocks():
    diff = "+key = '''\n+-----BEGIN RSA PRIVATE KEY-----\n+MIIEow\n+-----END RSA PRIVATE KEY-----\n+'''\n-old = 1"
    masked = mask_secrets(diff)
    assert masked == f"+key = '''\n+{MASK}\n+'''\n-old = 1"


def test_text_whose_lower_case_is_longer_does_not_shift_where_secrets_are_looked_for():
    """The lower case of "İ" is two characters: the lines found in lower case are the same lines."""
    for before in ("İ" * 40 + "\n", "İstanbul\n" * 8, ""):
        text = before + 'db_password = "Sup3rS3cretValue"\nsession_token: Zx8LpQ2vNr7TyW4k\n'
        masked = mask_secrets(text)
        assert "Sup3rS3cretValue" not in masked and "Zx8LpQ2vNr7TyW4k" not in masked, masked
        assert masked.startswith(before)


def test_credential_files_are_listed_but_never_read(repo: Path):
    commit_file(repo, "README.md", "hi\n", "Add readme")
    secret = "s3cr3t-" + "Zq9" * 8
    for name in (".env", "config/.env.production", "deploy/id_rsa", "certs/server.pem", ".netrc"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"API={secret}\n")
    (repo / ".env.example").write_text("API=put-yours-here\n")
    (repo / "app.py").write_text("print('hello')\n")
    git(repo, "add", ".")
    mods = {m.path: m for m in GitRepo(repo).staged_mods()}
    assert set(mods) == {".env", "config/.env.production", "deploy/id_rsa", "certs/server.pem",
                         ".netrc", ".env.example", "app.py"}  # fmt: skip
    for name in (".env", "config/.env.production", "deploy/id_rsa", "certs/server.pem", ".netrc"):
        assert mods[name].diff == "" and mods[name].truncated
    assert "put-yours-here" in mods[".env.example"].diff  # a template is meant to be read
    assert secret not in process_diff(list(mods.values()))
    assert not is_credential_file("src/environment.py") and is_credential_file("a/.kube/config")


def test_history_and_training_text_go_through_the_same_masking(repo: Path):
    token = "ghp_" + "A1b2C3d4" * 5
    commit_file(repo, "a.txt", "1\n", f"Rotate the deploy token {token}")
    history = GitRepo(repo).author_history("Ada Lovelace", "ada@example.com")
    assert history and token not in history[0]
    assert token not in clean_message(f"Use {token} for CI")
    raw = [{"change_type": "MODIFY", "old_path": "a.py", "new_path": "a.py",
            "diff": f"@@ -1 +1 @@\n-x = 1\n+TOKEN = '{token}'\n"}]  # fmt: skip
    assert token not in process_diff(raw) and MASK in process_diff(raw)


def test_cmc_prompt_shows_exactly_the_masked_input(repo: Path, tiny_model: Path):
    import json
    import subprocess

    from conftest import cmc_env

    token = "sk_live_" + "Q7w" * 9
    commit_file(repo, "a.txt", "1\n", f"Add the payment client with key {token}")
    (repo / "pay.py").write_text(f"STRIPE_KEY = '{token}'\nAMOUNT = 100\n")
    git(repo, "add", "pay.py")
    git(repo, "config", "cmc.model", str(tiny_model))
    shown = subprocess.run(["cmc", "prompt", "--prefix", "Add pay", "--json"], cwd=repo, env=cmc_env(),
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert token not in data["text"] and MASK in data["text"] and "AMOUNT" in data["text"]
    assert data["text"].endswith("<|msg|>Add") and data["regenerated_tail"] == " pay"
    full = json.loads(subprocess.run(["cmc", "prompt", "--full", "--json"], cwd=repo, env=cmc_env(),
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert token not in full["diff"] and token not in " ".join(full["history"])
    assert full["history"] and MASK in full["history"][0]


def test_a_long_word_after_a_secret_name_does_not_backtrack_for_ever():
    """A line of Objective-C (a method name holding "Token", then a long word) took 32 s to mask:
    `_NOT_A_VALUE`'s camelCase branch, under IGNORECASE, backtracked exponentially. Now linear:
    the line masks in far under the hook's budget however long the word."""
    import time

    line = (
        "+ OCMStub([tokenExchangeMock performDbTokenAsyncOperationWithHttpClientAndMoreWords:"
        "OCMOCK_ANY partition:OCMOCK_ANY completionHandler:OCMOCK_ANY])"
    )
    started = time.perf_counter()
    assert mask_secrets(line) == line
    assert time.perf_counter() - started < 5  # exponential before: far past minutes


def test_the_output_guard_stops_what_the_input_masking_missed():
    """`leaks` is independent of the input masking: a key the model saw unmasked (a family the
    rules miss) is still kept from the user, and real commit subjects pass."""
    from secret_corpus import mixed

    from cmc.secrets import leaks

    missed_by_input = f"Rotate the staging key to {mixed(28)}"
    assert leaks(missed_by_input)
    # bare, without the name or prefix that made them secrets: hex keys read as hashes here
    bare = [leaks(f"Use {secret}") for _, _, secret in positives() if len(secret) >= 20]
    assert sum(bare) / len(bare) >= 0.9  # 125 of 134
    for ok in (
        "Fix parser crash on empty configuration files",
        "Revert 1f3e5a7b9c2d4e6f8a0b1c3d5e7f9a1b3c5d7e9f",
        "Add SomeVeryLongCamelCaseIdentifierName2 support",
        "Bump actions/checkout from 3 to 4",
        "Use sha512-abcdefghijklmnopqrstuvwxyz0123456789 for integrity",
    ):
        assert not leaks(ok), ok


def test_no_completion_shows_a_secret(tmp_path):
    """End to end: a model that learned to write a key writes nothing the user would see."""
    from conftest import overfit_model

    from cmc.complete import Context, complete_context
    from cmc.model import load_model

    key = "Xy7Kp2Lq9Rt4Vw8Zb3Nc6Md1"
    diff = "src/app.py\n+x = 1"
    model = overfit_model(tmp_path / "m", diff, f"Rotate key {key}")
    lm = load_model(str(model))
    plain = overfit_model(tmp_path / "p", diff, "Rotate key in the app")
    assert complete_context(load_model(str(plain)), Context(diff, []), "Rotate").candidates
    got = complete_context(lm, Context(diff, []), "Rotate")
    assert all(key[:8] not in c.message for c in got.candidates)


def test_the_second_corpus_families_a_reviewer_found_missed():
    """Secrets named in other languages or unusually, beside tool flags, in headers, call
    arguments, Terraform variables, prose; long, code-shaped, split and escaped values
    (tests/secret_families.py, written from the families, not from the rules)."""
    import secret_families

    pos, neg = secret_families.positives(), secret_families.negatives()
    missed = [(family, text) for family, text, secret in pos if secret in mask_secrets(text)]
    changed = [text for _, text in neg if mask_secrets(text) != text]
    assert len(missed) / len(pos) <= 0.1, missed
    assert len(changed) <= 1, changed
