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
    """``x @ w + bias`` with ``w`` stored (in, out)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None = None):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
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


def quantize_columns(w: np.ndarray, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column of ``w`` (in, out): (q, scale) with w ≈ q * scale."""
    levels = levels or (127 if _vnni() else 63)
    top = np.abs(w).max(axis=0)
    scale = np.where(top > 0, top / levels, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -levels, levels).astype(np.int8)
    return q, scale


class OrtLinear:
    """One onnxruntime session for ``x @ w + bias``: float32 ``MatMul`` or int8
    ``DynamicQuantizeMatMul`` (com.microsoft)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, precision: str):
        from cmc.runtime import onnxproto as P

        ort, options = _ort()
        k, n = w.shape
        inputs = [P.value_info("x", P.FLOAT, ["rows", k])]
        outputs = [P.value_info("y", P.FLOAT, ["rows", n])]
        opsets = {"": 17}
        if precision == "int8":
            q, scale = quantize_columns(w)
            inits = [P.tensor("w", q), P.tensor("s", scale), P.tensor("z", np.zeros(n, np.int8))]
            names = ["x", "w", "s", "z"]
            if bias is not None:
                inits.append(P.tensor("b", bias.astype(np.float32)))
                names.append("b")
            nodes = [P.node("DynamicQuantizeMatMul", names, ["y"], domain="com.microsoft")]
            opsets["com.microsoft"] = 1
        elif precision == "float32":
            inits = [P.tensor("w", np.ascontiguousarray(w, dtype=np.float32))]
            if bias is None:
                nodes = [P.node("MatMul", ["x", "w"], ["y"])]
            else:
                inits.append(P.tensor("b", bias.astype(np.float32)))
                nodes = [P.node("MatMul", ["x", "w"], ["xw"]), P.node("Add", ["xw", "b"], ["y"])]
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
