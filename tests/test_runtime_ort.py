"""The weight products on onnxruntime: the graphs cmc writes, float32 equal to numpy, int8 close.

`cmc.runtime.onnxproto` writes ONNX without the `onnx` package; here `onnx` (a test dependency)
parses what it writes and compares it with its own `onnx.helper` build. The products are compared
with numpy's on real shapes; the whole model on both engines against transformers is in
`test_runtime.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cmc.runtime import onnxproto as P
from cmc.runtime.linear import (
    NumpyLinear,
    NumpyTail,
    OrtLinear,
    OrtTail,
    TailWeights,
    linear_factory,
    quantize_blocks,
    quantize_rows,
)


def test_written_model_is_what_onnx_helper_builds():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    q = rng.integers(-127, 128, (6, 5)).astype(np.int8)
    ours = P.model(
        [
            P.node("MatMul", ["x", "w"], ["xw"]),
            P.node("DynamicQuantizeMatMul", ["x", "q", "s"], ["y"], domain="com.microsoft"),
            P.node("Transpose", ["y"], ["t"], perm=[1, 0]),
            P.node("Softmax", ["t"], ["z"], axis=-1),
        ],
        [P.value_info("x", P.FLOAT, ["rows", 6])],
        [P.value_info("z", P.FLOAT, [5, "rows"]), P.value_info("xw", P.FLOAT, ["rows", 5])],
        [P.tensor("w", w), P.tensor("q", q), P.tensor("s", np.ones(5, np.float32))],
        {"": 17, "com.microsoft": 1},
    )
    parsed = onnx.load_from_string(ours)
    theirs = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["xw"]),
                helper.make_node(
                    "DynamicQuantizeMatMul", ["x", "q", "s"], ["y"], domain="com.microsoft"
                ),
                helper.make_node("Transpose", ["y"], ["t"], perm=[1, 0]),
                helper.make_node("Softmax", ["t"], ["z"], axis=-1),
            ],
            "cmc",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 6])],
            [
                helper.make_tensor_value_info("z", TensorProto.FLOAT, [5, "rows"]),
                helper.make_tensor_value_info("xw", TensorProto.FLOAT, ["rows", 5]),
            ],
            [
                numpy_helper.from_array(w, "w"),
                numpy_helper.from_array(q, "q"),
                numpy_helper.from_array(np.ones(5, np.float32), "s"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=P.IR_VERSION,
    )
    assert parsed.ir_version == theirs.ir_version
    assert list(parsed.opset_import) == list(theirs.opset_import)
    assert list(parsed.graph.node) == list(theirs.graph.node)
    assert list(parsed.graph.input) == list(theirs.graph.input)
    assert list(parsed.graph.output) == list(theirs.graph.output)
    for a, b in zip(parsed.graph.initializer, theirs.graph.initializer, strict=True):
        assert a.name == b.name and a.data_type == b.data_type
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    onnx.checker.check_model(parsed)


def test_negative_and_large_varints_round_trip():
    ours = P.model(
        [P.node("Transpose", ["x"], ["y"], perm=[-1, 0, 2**40])],
        [P.value_info("x", P.FLOAT, [3, 4])],
        [P.value_info("y", P.FLOAT, [4, 3])],
        [],
        {"": 17},
    )
    attr = onnx.load_from_string(ours).graph.node[0].attribute[0]
    assert list(attr.ints) == [-1, 0, 2**40]


@pytest.mark.parametrize("rows", [1, 5, 600])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_products_equal_numpy(rows, bias):
    rng = np.random.default_rng(rows)
    w = (rng.standard_normal((704, 256)) * 0.05).astype(np.float32)  # (out, in), as torch's
    b = rng.standard_normal(704).astype(np.float32) if bias else None
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    got = OrtLinear(w, b, "float32")(x)
    want = NumpyLinear(w, b)(x)
    np.testing.assert_allclose(want, x @ w.T + (0 if b is None else b), rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (rows, 704)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 5, 600])
def test_int8_products_are_close_to_float32(rows):
    rng = np.random.default_rng(rows)
    w = (rng.standard_normal((1536, 512)) * 0.02).astype(np.float32)
    x = rng.standard_normal((rows, 512)).astype(np.float32)
    got = OrtLinear(w, None, "int8")(x)
    want = x @ w.T
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < rel < 0.03, rel  # quantized, so not equal; close


@pytest.mark.parametrize("bias", [False, True])
def test_int8_weights_in_blocks_keep_activations_with_outlier_channels(bias):
    """What the pretrained base needs: a few input channels 50-100x the others (as its activations
    have) spoil int8 products that quantize each activation row as a whole; weights and
    activations quantized per block of 32 inputs (`int8w`, MatMulNBits) stay close."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((384, 200)) * 0.05).astype(np.float32)  # 200: not whole blocks
    b = rng.standard_normal(384).astype(np.float32) if bias else None
    x = rng.standard_normal((6, 200)).astype(np.float32)
    x[:, [3, 77]] *= 100.0  # outlier channels
    want = x @ w.T + (0 if b is None else b)

    def corr(got):
        return np.corrcoef(got.ravel(), want.ravel())[0, 1]

    blocked = OrtLinear(w, b, "int8w")(x)
    rowwise = OrtLinear(w, b, "int8")(x)
    assert blocked.shape == want.shape and blocked.dtype == np.float32
    assert np.abs(blocked - want).max() / np.abs(want).max() < 0.03
    # (the activations are quantized too, but per block of 32 inputs: an outlier spoils its own)
    assert corr(blocked) > 0.9998 and 1 - corr(rowwise) > 5 * (1 - corr(blocked))


def test_quantized_blocks_reconstruct_their_matrix():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 70)).astype(np.float32)  # 70 inputs: 3 blocks, the last padded
    w[2] = 0.0
    q, scale, zero = quantize_blocks(w, block=32)
    assert q.shape == (8, 3, 32) and q.dtype == np.uint8 and scale.shape == zero.shape == (24,)
    back = (q.astype(np.float32) - zero.reshape(8, 3, 1)) * scale.reshape(8, 3, 1)
    back = back.reshape(8, 96)
    assert np.all(back[:, 70:] == 0)  # the padding reads as zeros
    np.testing.assert_array_equal(back[2], 0)
    err = np.abs(back[:, :70] - w).reshape(-1)
    assert err.max() <= scale.max() + 1e-6  # half a step for the value, half for the zero point


@pytest.mark.parametrize("bias", [False, True])
def test_a_layer_tail_in_one_graph_equals_numpy(bias):
    rng = np.random.default_rng(7)

    def m(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w = TailWeights(o=m(96, 128), o_bias=m(96) if bias else None, norm=1 + m(96),
                    gate_up=m(2 * 160, 96), gate_up_bias=m(2 * 160) if bias else None,
                    down=m(96, 160), down_bias=m(96) if bias else None, eps=1e-5)  # fmt: skip
    for rows in (1, 5, 300):
        x, attn = m(rows, 96) * 20, m(rows, 128) * 20
        want = NumpyTail(w)(x, attn)
        np.testing.assert_allclose(OrtTail(w, "float32")(x, attn), want, rtol=1e-5, atol=1e-5)
        for precision in ("int8", "int8w"):
            got = OrtTail(w, precision)(x, attn)
            assert np.abs(got - want).max() / np.abs(want).max() < 0.03


@pytest.mark.parametrize("levels", [127, 63])  # 8 bits, or 7 where the CPU lacks VNNI
def test_quantized_rows_reconstruct_their_matrix(levels):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 64)).astype(np.float32) * np.linspace(0.01, 3, 32)[:, None]
    w[5] = 0.0  # an all-zero output keeps a usable scale
    w[7, 3] = -50.0  # the largest magnitude negative: still within the levels
    q, scale = quantize_rows(w, levels=levels)
    assert q.shape == (32, 64) and q.dtype == np.int8
    assert np.abs(q).max() == levels and q[7, 3] == -levels
    nonzero = [r for r in range(32) if r != 5]
    assert np.all(np.abs(q[nonzero]).max(axis=1) == levels)  # one scale per output, symmetric
    np.testing.assert_array_equal(q[5], 0)
    err = np.abs(q * scale[:, None] - w)
    assert np.all(err <= scale[:, None] / 2 + 1e-6)


def test_engine_choice_and_fallback_without_onnxruntime(monkeypatch):
    monkeypatch.setenv("CMC_MATMUL", "numpy")
    assert linear_factory("int8") is NumpyLinear
    monkeypatch.delenv("CMC_MATMUL")
    assert linear_factory("float32") is not NumpyLinear
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from cmc.runtime.linear import linear_factory, NumpyLinear, matmul_engine\n"
        "from cmc.model import load_model\n"
        "from cmc.settings import BUNDLED_MODEL\n"
        "assert matmul_engine() == 'numpy' and linear_factory('int8') is NumpyLinear\n"
        "lm = load_model(str(BUNDLED_MODEL))\n"
        "print(lm.model.precision, lm.model.prefill(None, [5, 6, 7])[1].shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "float32"


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads Linux's /proc/self/status"
)
def test_released_memory_goes_back_to_the_system():
    """What the daemon does after work: freed buffers that the C heap kept (as a long prompt's
    leave them, among buffers still in use) go back to the system."""
    from cmc.runtime import release_memory

    def anon_mb() -> int:
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(status["RssAnon"].split()[0]) // 1024

    arrays = [np.ones(1000) for _ in range(50_000)]  # 8 KB each: on the C heap, ~400 MB
    kept = arrays[::100]  # a few stay in use among them: nothing freed at the heap's top alone
    del arrays
    before = anon_mb()
    release_memory()
    assert before - anon_mb() > 200, (before, anon_mb())
    assert len(kept) == 500


def test_int8w_weights_are_prepared_once_and_read_back(tmp_path, monkeypatch):
    """A cold load of an int8w model quantizes its weights once and keeps them; the next load
    reads them back instead (nothing is quantized: the functions that would fail here), with
    the same logits. A corrupt file is made again; changed weights have their own."""
    import shutil

    from cmc.runtime import linear, prepared
    from cmc.runtime.llama import NumpyLlama
    from cmc.settings import BUNDLED_MODEL

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, model)
    ids = [5, 17, 300, 42]
    first = NumpyLlama(model, "int8w").prefill(None, ids)[1]
    kept = prepared.cache_path(model, "int8w")
    assert kept.is_file() and kept.parent.stat().st_mode & 0o077 == 0  # private

    def refuse(*_a, **_k):
        raise AssertionError("quantized again")

    with monkeypatch.context() as m:
        m.setattr(linear, "quantize_blocks", refuse)
        m.setattr(prepared, "quantize_rows", refuse)
        again = NumpyLlama(model, "int8w").prefill(None, ids)[1]
    np.testing.assert_array_equal(again, first)

    kept.write_bytes(kept.read_bytes()[:1000])  # truncated: made again, and replaced
    np.testing.assert_array_equal(NumpyLlama(model, "int8w").prefill(None, ids)[1], first)
    assert kept.stat().st_size > 100_000

    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert prepared.cache_path(model, "int8w") != kept  # other weights, another file
    assert prepared.cache_path(model, "int8") != prepared.cache_path(model, "int8w")


def test_only_the_newest_prepared_models_are_kept(tmp_path, monkeypatch):
    import shutil
    import time

    from cmc.runtime import prepared
    from cmc.runtime.llama import NumpyLlama
    from cmc.settings import BUNDLED_MODEL

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = prepared.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - 3600
    for k in range(prepared.KEEP + 2):
        stale = folder / f"stale{k}.npz"
        stale.write_bytes(b"x")
        os.utime(stale, (old + k, old + k))
    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, model)
    NumpyLlama(model, "int8w")
    left = sorted(f.name for f in folder.glob("*.npz"))
    assert len(left) == prepared.KEEP and prepared.cache_path(model, "int8w").name in left
    assert "stale0.npz" not in left and f"stale{prepared.KEEP + 1}.npz" in left
