"""The products with a model's weight matrices: where a completion spends its time.

A beam-5 decode step multiplies five rows by every matrix of the model, so it reads all the weights
once per token; a prompt's prefill multiplies ~600 rows by each. Measured on this 2-core VM
(`bench/bench_runtime.py`, part 4), one thread:

* numpy (OpenBLAS) is fine for one row and for 600, but slow for a few rows: 5 x 512 by 512 x 16384
  took 11.8 ms, 2.8 GB/s of weights;
* onnxruntime's MLAS, float32, gives the same numbers 3.5x sooner for five rows (3.3 ms) and matches
  numpy for one row and for 600;
* onnxruntime's ``DynamicQuantizeMatMul`` with int8 weights (a scale per output column, the rows
  quantized on the fly) reads a quarter of the bytes: ~10x numpy for five rows, ~2x for 600 rows,
  with products within ~1% of float32.

So a `Linear` is built per matrix by `linears(precision)`: ``float32`` and ``int8`` run on
onnxruntime (one session per matrix, one thread, no spinning: a busy machine must not make it
spin); without onnxruntime (or with ``CMC_MATMUL=numpy``) everything is numpy float32.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import cache

import numpy as np

from cmc import CmcError

PRECISIONS = ("float32", "int8")
Linear = Callable[[np.ndarray], np.ndarray]


class NumpyLinear:
    """``x @ w.T + bias`` for ``w`` (out, in) as torch stores it; kept (in, out), the layout numpy
    multiplies fastest here."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None = None):
        self.w = np.ascontiguousarray(w.T, dtype=np.float32)
        self.bias = bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.w
        if self.bias is not None:
            y += self.bias
        return y


@cache
def _ort():
    """onnxruntime and the session options every matrix shares, or None when it is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from cmc.settings import inference_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = inference_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # a spinning thread pool is what made torch collapse on busy cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort, options


def matmul_engine() -> str:
    """What runs the products by default: ``onnxruntime`` when it is installed, unless
    ``CMC_MATMUL=numpy``; else ``numpy``."""
    if os.environ.get("CMC_MATMUL", "").strip().lower() == "numpy":
        return "numpy"
    return "onnxruntime" if _ort() is not None else "numpy"


@cache
def _vnni() -> bool:
    """Whether the CPU multiplies u8 by s8 without saturating 16-bit sums (x86 VNNI, or ARM).
    On x86 without VNNI MLAS adds pairs of u8*s8 products in 16 bits, which overflows for weights
    past ±63, so weights are then quantized to 7 bits (onnxruntime's ``reduce_range``)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        return "avx512_vnni" in line or "avx_vnni" in line
        except OSError:
            pass
    return False


def quantize_rows(w: np.ndarray, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output of ``w`` (out, in): ``(q, scale)``, q (out, in) with
    ``w ≈ q * scale[:, None]``. Rounded in place, no clip (|w / scale| <= levels by construction):
    this runs on every cold load."""
    levels = levels or (127 if _vnni() else 63)
    top = np.maximum(w.max(axis=1), -w.min(axis=1))
    scale = np.where(top > 0, top / levels, 1.0).astype(np.float32)
    scaled = w * (1.0 / scale)[:, None]
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int8), scale


class OrtLinear:
    """One onnxruntime session for ``x @ w.T + bias``, ``w`` (out, in): float32 ``Gemm`` or int8
    ``DynamicQuantizeMatMul`` (com.microsoft)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, precision: str):
        from cmc.runtime import onnxproto as P

        ort, options = _ort()
        n, k = w.shape
        inputs = [P.value_info("x", P.FLOAT, ["rows", k])]
        outputs = [P.value_info("y", P.FLOAT, ["rows", n])]
        opsets = {"": 17}
        if precision == "int8":
            q, scale = quantize_rows(w)
            inits = [P.tensor("q", q), P.tensor("s", scale), P.tensor("z", np.zeros(n, np.int8))]
            names = ["x", "w", "s", "z"]
            if bias is not None:
                inits.append(P.tensor("b", bias.astype(np.float32)))
                names.append("b")
            nodes = [
                # the (in, out) layout the product takes, made once by onnxruntime's constant
                # folding at load: 2x sooner than a numpy transpose here
                P.node("Transpose", ["q"], ["w"], perm=[1, 0]),
                P.node("DynamicQuantizeMatMul", names, ["y"], domain="com.microsoft"),
            ]
            opsets["com.microsoft"] = 1
        elif precision == "float32":
            inits = [P.tensor("w", np.ascontiguousarray(w, dtype=np.float32))]
            names = ["x", "w"]
            if bias is not None:
                inits.append(P.tensor("b", bias.astype(np.float32)))
                names.append("b")
            nodes = [P.node("Gemm", names, ["y"], transB=1)]  # x @ w.T (+ b), no transposed copy
        else:
            raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        blob = P.model(nodes, inputs, outputs, inits, opsets)
        self.session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        self._run = self.session.run

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(None, {"x": x})[0]


def linear_factory(precision: str = "float32", engine: str | None = None) -> Callable[..., Linear]:
    """A builder ``make(w, bias=None)`` of a `Linear` for ``precision``: on ``engine``
    (``onnxruntime`` or ``numpy``; None: onnxruntime when it is there and not turned off)."""
    if precision not in PRECISIONS:
        raise CmcError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    engine = engine or matmul_engine()
    if engine == "numpy":
        return NumpyLinear
    if engine != "onnxruntime" or _ort() is None:
        raise CmcError(f"matmul engine {engine!r} is not available here")

    def make(w: np.ndarray, bias: np.ndarray | None = None) -> Linear:
        return OrtLinear(w, bias, precision)

    return make


Attention = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax(q @ k + mask) @ v per head: q (heads, rows, d), k (heads, d, keys), v (heads, keys,
    d), mask (rows, keys) of 0 and -inf."""
    scores = q @ k
    scores += mask  # in place from here: this is the prefill's largest array
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v


class OrtAttention:
    """`numpy_attention` as one onnxruntime graph (MatMul, Add, Softmax, MatMul): its softmax is
    vectorized, where numpy makes four passes over the (heads, rows, keys) scores."""

    def __init__(self):
        from cmc.runtime import onnxproto as P

        ort, options = _ort()
        inputs = [
            P.value_info("q", P.FLOAT, ["heads", "rows", "d"]),
            P.value_info("k", P.FLOAT, ["heads", "d", "keys"]),
            P.value_info("v", P.FLOAT, ["heads", "keys", "d"]),
            P.value_info("mask", P.FLOAT, ["rows", "keys"]),
        ]
        nodes = [
            P.node("MatMul", ["q", "k"], ["s"]),
            P.node("Add", ["s", "mask"], ["m"]),
            P.node("Softmax", ["m"], ["p"], axis=-1),
            P.node("MatMul", ["p", "v"], ["o"]),
        ]
        outputs = [P.value_info("o", P.FLOAT, ["heads", "rows", "d"])]
        blob = P.model(nodes, inputs, outputs, [], {"": 17})
        self._run = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]).run

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(None, {"q": q, "k": k, "v": v, "mask": mask})[0]


def attention_kernel(engine: str | None = None) -> Attention:
    """The prefill's attention on ``engine`` (None: as `linear_factory` chooses)."""
    engine = engine or matmul_engine()
    return OrtAttention() if engine == "onnxruntime" and _ort() is not None else numpy_attention
