"""A fine-tuned base shipped as its delta (`cmc.delta`): written, built back, cached, refused on
another base; real tiny models, real safetensors files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import cmc_env

from cmc import CmcError

pytest.importorskip("safetensors")

EMBED = "model.embed_tokens.weight"


def fine_tuned(base: Path, out: Path, seed: int = 0) -> Path:
    """A copy of ``base`` whose last layer, final norm and embedding moved as fine-tuning moves
    them (a few percent of the weights' size)."""
    from safetensors.numpy import save_file

    from cmc.runtime.weights import read_weights

    shutil.copytree(base, out)
    weights = {k: np.array(v) for k, v in read_weights(base).items()}
    rng = np.random.default_rng(seed)
    last = max(int(k.split(".")[2]) for k in weights if k.startswith("model.layers."))
    for name, w in weights.items():
        if name.startswith(f"model.layers.{last}.") or name in (EMBED, "model.norm.weight"):
            weights[name] = w + rng.normal(
                0, 0.03 * float(np.abs(w).mean()) + 1e-4, w.shape
            ).astype(np.float32)
    for old in out.glob("*.safetensors"):
        old.unlink()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def logits(folder: Path) -> np.ndarray:
    from cmc.runtime.llama import NumpyLlama

    lean = NumpyLlama(folder, "float32")
    ids = [(5 * i + 1) % lean.vocab_size for i in range(40)]
    return lean.prefill(None, ids)[1]


def test_a_delta_holds_only_what_changed_and_builds_the_model_back(tiny_model, tmp_path):
    from cmc.delta import DELTA_FILE, apply_delta, write_delta
    from cmc.runtime.weights import read_weights

    tuned = fine_tuned(tiny_model, tmp_path / "tuned")
    stats = write_delta(tiny_model, tuned, tmp_path / "delta", low_bits=(EMBED,))
    base_w, tuned_w = read_weights(tiny_model), read_weights(tuned)
    changed = [k for k in tuned_w if not np.array_equal(base_w[k], tuned_w[k])]
    assert stats["tensors"] == len(changed) < len(tuned_w)
    whole = sum(np.asarray(v).nbytes for v in tuned_w.values())
    assert (tmp_path / "delta" / DELTA_FILE).stat().st_size < whole / 4  # not the model again
    built = apply_delta(tmp_path / "delta", tiny_model, tmp_path / "built")
    got = read_weights(built)
    for name in tuned_w:
        if name in changed:
            err = np.abs(got[name] - tuned_w[name]).max()
            assert err <= stats["max_error"] * 1.001 + 1e-7, name  # quantized, within bound
        else:
            assert np.array_equal(got[name], tuned_w[name]), name  # the base's, untouched
    a, b = logits(tuned), logits(built)
    assert np.corrcoef(a, b)[0, 1] > 0.9999 and a.argmax() == b.argmax()
    assert (built / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_the_built_model_is_cached_and_another_base_is_refused(tiny_model, tmp_path):
    from cmc.delta import delta_model, write_delta

    tuned = fine_tuned(tiny_model, tmp_path / "tuned")
    write_delta(tiny_model, tuned, tmp_path / "delta")
    first = delta_model(tmp_path / "delta", tiny_model, root=tmp_path / "models")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = delta_model(tmp_path / "delta", tiny_model, root=tmp_path / "models")
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "models").iterdir()] == [first.name]  # no leftovers
    other = fine_tuned(tiny_model, tmp_path / "other-base", seed=7)  # same shapes, other weights
    with pytest.raises(CmcError, match="made against another base"):
        delta_model(tmp_path / "delta", other, root=tmp_path / "models")


def test_checkpoint_delta_command_writes_the_delta(tiny_model, tmp_path):
    tuned = fine_tuned(tiny_model, tmp_path / "tuned")
    out = subprocess.run(["cmc", "checkpoint", "delta", str(tuned), "--base", str(tiny_model),
                          "--out", str(tmp_path / "delta"), "--int4", EMBED],
                         env=cmc_env(), capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tensors" in out.stderr and "MiB" in out.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "delta" / "delta.safetensors"), framework="numpy") as f:
        assert '"model.embed_tokens.weight": "int4"' in f.metadata()["kinds"]


def test_without_build_an_unbuilt_delta_is_none_and_a_built_one_is_found(tiny_model, tmp_path):
    from cmc.delta import delta_model, is_delta_dir, write_delta

    tuned = fine_tuned(tiny_model, tmp_path / "tuned")
    write_delta(tiny_model, tuned, tmp_path / "delta")
    assert is_delta_dir(tmp_path / "delta") and not is_delta_dir(tuned)
    root = tmp_path / "models"
    assert delta_model(tmp_path / "delta", tiny_model, root=root, build=False) is None
    assert not root.exists()  # asking built nothing
    built = delta_model(tmp_path / "delta", tiny_model, root=root)
    assert delta_model(tmp_path / "delta", tiny_model, root=root, build=False) == built
    with pytest.raises(CmcError, match="is not a delta folder"):
        delta_model(tmp_path / "nothing", tiny_model, root=root)


def test_a_changed_delta_is_built_again_and_its_earlier_build_removed(tiny_model, tmp_path):
    import os

    from cmc.delta import delta_model, write_delta

    write_delta(tiny_model, fine_tuned(tiny_model, tmp_path / "tuned"), tmp_path / "delta")
    root = tmp_path / "models"
    first = delta_model(tmp_path / "delta", tiny_model, root=root)
    write_delta(tiny_model, fine_tuned(tiny_model, tmp_path / "tuned2", seed=3), tmp_path / "delta")
    stat = (tmp_path / "delta" / "delta.safetensors").stat()
    os.utime(
        tmp_path / "delta" / "delta.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9)
    )
    second = delta_model(tmp_path / "delta", tiny_model, root=root)
    assert second != first and not first.exists()  # one build of a delta kept, not one per update
    assert [p.name for p in root.iterdir()] == [second.name]
    other = tmp_path / "delta-int4"  # another delta whose name starts with this one's
    write_delta(tiny_model, fine_tuned(tiny_model, tmp_path / "tuned3", seed=5), other)
    kept = delta_model(other, tiny_model, root=root)
    write_delta(tiny_model, fine_tuned(tiny_model, tmp_path / "tuned4", seed=9), tmp_path / "delta")
    os.utime(
        tmp_path / "delta" / "delta.safetensors",
        ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9),
    )
    third = delta_model(tmp_path / "delta", tiny_model, root=root)
    assert third not in (first, second) and not second.exists()
    assert kept.exists()  # a build of another delta, whose name starts with this one's, stays
