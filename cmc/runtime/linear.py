"""The products with a model's weight matrices: where a completion spends its time.

A beam-5 decode step multiplies five rows by every matrix of the model, so it reads all the weights
once per token; a prompt's prefill multiplies ~600 rows by each. Measured on this 2-core VM
(`bench/bench_runtime.py`), one thread:

* numpy (OpenBLAS) is fine for one row and for 600, but slow for a few rows: 5 x 512 by 512 x 16384
  took 11.8 ms, 2.8 GB/s of weights;
* onnxruntime's MLAS, float32, gives the same numbers 3.5x sooner for five rows (3.3 ms) and matches
  numpy for one row and for 600;
* onnxruntime's ``DynamicQuantizeMatMul`` with int8 weights (a scale per output, the rows quantized
  on the fly) reads a quarter of the bytes: ~10x numpy for five rows, ~2x for 600 rows, with
  products within ~1% of float32.

So each matrix becomes a `Linear` (`linear_factory(precision)`), and the part of a layer after
attention (output product, residual, RMSNorm, SiLU MLP, residual) one `Tail` (`tail_factory`): on
onnxruntime that is one graph and one call instead of three products and ~12 numpy steps, each a
few µs of Python on a keystroke's single row (a 1-row int8 step: 6.2 → 4.9 ms). ``float32`` and
``int8`` run on onnxruntime (one thread, no spinning: a busy machine must not make it spin);
without onnxruntime (or with ``CMC_MATMUL=numpy``) everything is numpy float32. (Attention itself
stays numpy: an onnxruntime graph of it measured 1.2x slower.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from cmc import CmcError
from cmc.settings import PRECISIONS

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
    # no memory arena per session: each of a model's ~60 sessions would keep the largest
    # intermediates it ever saw (the base: +550 MB after one 400-token prompt; none without)
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort, options


def matmul_engine() -> str:
    """What runs the products by default: ``onnxruntime`` when it is installed, unless
    ``CMC_MATMUL=numpy``; else ``numpy``."""
    from cmc.settings import numpy_products

    if numpy_products():
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


BLOCK = 32  # inputs per scale in ``int8w``


def quantize_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric uint8 per ``block`` inputs of each output of ``w`` (out, in), the layout of
    onnxruntime's ``MatMulNBits``: ``(q (out, blocks, block), scale (out * blocks), zero point
    (out * blocks))``, inputs padded with zeros to whole blocks."""
    n, k = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = w
    padded = padded.reshape(n, blocks, block)
    low = np.minimum(padded.min(axis=-1), 0.0)
    high = np.maximum(padded.max(axis=-1), 0.0)
    scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    zero = np.clip(np.rint(-low / scale), 0, 255)
    q = np.rint(padded / scale[..., None]) + zero[..., None]
    np.clip(q, 0, 255, out=q)
    return q.astype(np.uint8), scale.reshape(-1), zero.astype(np.uint8).reshape(-1)


@dataclass(frozen=True)
class Blocks:
    """A weight matrix (out, in) as ``int8w`` takes it (`quantize_blocks`): made from the float32
    matrix, or read back from where an earlier process kept it (`cmc.runtime.prepared`)."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, w: np.ndarray) -> Blocks:
        return cls(*quantize_blocks(w), shape=(int(w.shape[0]), int(w.shape[1])))


def _product(P, x: str, y: str, w: np.ndarray | Blocks, bias: np.ndarray | None,
             precision: str, tag: str = "") -> tuple[list, list]:  # fmt: skip
    """The nodes and initializers of ``y = x @ w.T + bias`` in a graph (names prefixed ``tag``);
    ``w`` as `Blocks` for ``int8w`` only."""
    n = w.shape[0]
    if isinstance(w, Blocks) and precision != "int8w":
        raise ValueError(f"int8w blocks given for {precision} products")
    b = [tag + "b"] if bias is not None else []
    inits = [P.tensor(tag + "b", bias.astype(np.float32))] if bias is not None else []
    if precision == "int8":
        q, scale = quantize_rows(w)
        inits += [P.tensor(tag + "q", q), P.tensor(tag + "s", scale),
                  P.tensor(tag + "z", np.zeros(n, np.int8))]  # fmt: skip
        nodes = [
            # the (in, out) layout the product takes, made once by onnxruntime's constant
            # folding at load: 2x sooner than a numpy transpose here
            P.node("Transpose", [tag + "q"], [tag + "w"], perm=[1, 0]),
            P.node(
                "DynamicQuantizeMatMul",
                [x, tag + "w", tag + "s", tag + "z", *b],
                [y],
                domain="com.microsoft",
            ),
        ]
    elif precision == "int8w":
        # int8 weights, a scale per 32 inputs: for models whose activations have outlier
        # channels (the pretrained base), where quantizing each activation row as a whole fails
        blocks = w if isinstance(w, Blocks) else Blocks.of(w)
        inits += [P.tensor(tag + "q", blocks.q), P.tensor(tag + "s", blocks.scale),
                  P.tensor(tag + "z", blocks.zero)]  # fmt: skip
        nodes = [
            P.node(
                "MatMulNBits",
                [x, tag + "q", tag + "s", tag + "z", *(["", *b] if b else [])],  # "": no g_idx
                [y],
                domain="com.microsoft",
                K=w.shape[1],
                N=n,
                bits=8,
                block_size=BLOCK,
                # int8 products, the activations quantized per block of 32 inputs too (not per
                # row): an outlier channel spoils only its own block. Level 0 (float products)
                # has no fast 8-bit kernel in onnxruntime's MLAS: 17x slower a token here.
                accuracy_level=4,
            )
        ]
    elif precision == "float32":
        inits.append(P.tensor(tag + "w", np.ascontiguousarray(w, dtype=np.float32)))
        nodes = [P.node("Gemm", [x, tag + "w", *b], [y], transB=1)]  # no transposed copy
    else:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return nodes, inits


OPSETS = {"": 17, "com.microsoft": 1}


def _session(nodes: list, inputs: list, outputs: list, inits: list):
    """An onnxruntime session of this graph, and its bare ``run`` (the wrapper's checks of names
    and types cost ~10 µs a call, a few percent of a keystroke's decode)."""
    from cmc.runtime import onnxproto as P

    ort, options = _ort()
    blob = P.model(nodes, inputs, outputs, inits, OPSETS)
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    return session, session._sess.run


class OrtLinear:
    """One onnxruntime session for ``x @ w.T + bias``, ``w`` (out, in): float32 ``Gemm`` or int8
    ``DynamicQuantizeMatMul`` (com.microsoft)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, precision: str):
        from cmc.runtime import onnxproto as P

        n, k = w.shape
        nodes, inits = _product(P, "x", "y", w, bias, precision)
        self.session, self._run = _session(nodes, [P.value_info("x", P.FLOAT, ["rows", k])],
                                           [P.value_info("y", P.FLOAT, ["rows", n])], inits)  # fmt: skip

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(["y"], {"x": x}, None)[0]


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


# --- a layer's tail: attention output, residual, RMSNorm, SiLU MLP, residual ---------------------


@dataclass(frozen=True)
class TailWeights:
    """What a Llama layer does after attention, as torch stores it ((out, in) matrices)."""

    o: np.ndarray
    o_bias: np.ndarray | None
    norm: np.ndarray
    gate_up: np.ndarray  # gate and up stacked: (2 * intermediate, hidden)
    gate_up_bias: np.ndarray | None
    down: np.ndarray
    down_bias: np.ndarray | None
    eps: float


Tail = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Llama's RMSNorm over the last axis, in transformers' order of operations."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return weight * (x / np.sqrt(var + eps))


class NumpyTail:
    """``x + down(silu(gate) * up)`` of ``h = rms(x + o(attn))``: transformers' Llama arithmetic."""

    def __init__(self, w: TailWeights):
        self.o = NumpyLinear(w.o, w.o_bias)
        self.gate_up = NumpyLinear(w.gate_up, w.gate_up_bias)
        self.down = NumpyLinear(w.down, w.down_bias)
        self.norm, self.eps = w.norm, w.eps

    def __call__(self, x: np.ndarray, attn: np.ndarray) -> np.ndarray:
        x = x + self.o(attn)
        gu = self.gate_up(rms_norm(x, self.norm, self.eps))
        inter = gu.shape[-1] // 2
        gate, up = gu[:, :inter], gu[:, inter:]
        with np.errstate(over="ignore"):  # exp(-gate) = inf for a very negative gate: silu = -0
            act = gate / (1.0 + np.exp(-gate)) * up
        return x + self.down(act)


class OrtTail:
    """`NumpyTail` as one onnxruntime graph: three products and the steps between them in one
    call, where numpy makes ~12 (each a few µs of Python on a keystroke's single row)."""

    def __init__(self, w: TailWeights, precision: str):
        from cmc.runtime import onnxproto as P

        hidden, width = w.o.shape
        inter = w.gate_up.shape[0] // 2
        nodes, inits = [], []
        for part in (
            _product(P, "attn", "o", w.o, w.o_bias, precision, "o_"),
            _product(P, "h", "gu", w.gate_up, w.gate_up_bias, precision, "gu_"),
            _product(P, "act", "d", w.down, w.down_bias, precision, "d_"),
        ):
            nodes += part[0]
            inits += part[1]
        inits += [
            P.tensor("norm", w.norm.astype(np.float32)),
            P.tensor("eps", np.array(w.eps, np.float32)),
            P.tensor("split", np.array([inter, inter], np.int64)),
        ]
        nodes += [
            P.node("Add", ["x", "o"], ["x1"]),
            P.node("Mul", ["x1", "x1"], ["sq"]),
            P.node("ReduceMean", ["sq"], ["var"], axes=[-1], keepdims=1),
            P.node("Add", ["var", "eps"], ["var_eps"]),
            P.node("Sqrt", ["var_eps"], ["rms"]),
            P.node("Div", ["x1", "rms"], ["normed"]),
            P.node("Mul", ["norm", "normed"], ["h"]),
            P.node("Split", ["gu", "split"], ["gate", "up"], axis=-1),
            P.node("Sigmoid", ["gate"], ["sig"]),
            P.node("Mul", ["gate", "sig"], ["silu"]),
            P.node("Mul", ["silu", "up"], ["act"]),
            P.node("Add", ["x1", "d"], ["y"]),
        ]
        inputs = [P.value_info("x", P.FLOAT, ["rows", hidden]),
                  P.value_info("attn", P.FLOAT, ["rows", width])]  # fmt: skip
        self.session, self._run = _session(nodes, inputs,
                                           [P.value_info("y", P.FLOAT, ["rows", hidden])], inits)  # fmt: skip

    def __call__(self, x: np.ndarray, attn: np.ndarray) -> np.ndarray:
        return self._run(["y"], {"x": x, "attn": attn}, None)[0]


def tail_factory(
    precision: str = "float32", engine: str | None = None
) -> Callable[[TailWeights], Tail]:
    """A builder of a layer's `Tail` on the engine `linear_factory` would use."""
    if linear_factory(precision, engine) is NumpyLinear:
        return NumpyTail
    return lambda w: OrtTail(w, precision)
