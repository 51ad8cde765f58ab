"""Llama decoder forward in numpy: the completion runtime of cmc's own models, no torch.

Why not transformers on torch: importing them costs ~6 s of a cold completion here, each generated
token pays ~5 ms of Python around a 9M model, and torch's thread pool collapses when the cores are
busy. This is the arithmetic of `transformers.LlamaForCausalLM` (RMSNorm, rotary positions, grouped
attention, SiLU MLP, tied or separate head) on float32 arrays, with these changes:

* the weight products run on onnxruntime, int8 by default, with q/k/v as one product and the part
  of each layer after attention as one graph (`cmc.runtime.linear`; numpy float32 without it);
* the beams of a search share **one** copy of the prompt's keys and values: every beam attends to
  it through one matrix product, and only the few tokens each beam generated are per beam and
  reordered. transformers copies the whole prompt KV into each beam, about half of beam-5's cost.

States are values: `PromptState` is never changed in place (extending it makes a new one), so the
daemon's prompt cache keeps them without copying.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from cmc.runtime.linear import (
    Blocks,
    Linear,
    NumpyLinear,
    Tail,
    TailWeights,
    linear_factory,
    rms_norm,
    tail_factory,
)
from cmc.runtime.prepared import Prepared
from cmc.runtime.weights import read_weights

ARCHITECTURES = ("LlamaForCausalLM",)
PREFILL_BLOCK = 128  # query rows per block of the prompt's attention (measured: 64-256 alike)


def unsupported(config: dict) -> str | None:
    """Why this config cannot run here (None: it can)."""
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or not set(archs) <= set(ARCHITECTURES):
        return f"architecture {'/'.join(archs) or config.get('model_type')}"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        return f"rope type {rope.get('rope_type') or rope.get('type')}"
    if config.get("hidden_act", "silu") != "silu":
        return f"activation {config.get('hidden_act')}"
    if config.get("pretraining_tp", 1) != 1:
        return "pretraining_tp"
    return None


@dataclass(frozen=True)
class PromptState:
    """Keys and values of a prompt (batch of one), per layer: keys (kv_heads, head_dim, length),
    transposed so that every query product is one contiguous BLAS call; values (kv_heads, length,
    head_dim)."""

    k: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]
    length: int


@dataclass
class BeamState:
    """The beams of one search: the shared prompt, and per beam only what it generated."""

    prompt: PromptState
    capacity: int
    k: list[np.ndarray] = field(default_factory=list)  # (beams, kv_heads, capacity, head_dim)
    v: list[np.ndarray] = field(default_factory=list)
    length: int = 0  # generated tokens held


@dataclass
class _Layer:
    """A layer as `cmc.runtime.linear` runs it: the q/k/v product, and the tail after attention."""

    norm_in: np.ndarray
    qkv: Linear  # hidden -> q + 2 kv widths
    tail: Tail  # (x, attention output) -> the layer's output


def _reorder(cache: np.ndarray, order: np.ndarray, filled: int) -> np.ndarray:
    """Beams' generated keys or values (beams, kv heads, capacity, d) taken in ``order``."""
    out = np.empty((len(order), *cache.shape[1:]), cache.dtype)
    out[:, :, :filled] = cache[order, :, :filled]
    return out


class NumpyLlama:
    kind = "numpy"

    def __init__(self, folder: str | Path, precision: str = "float32", engine: str | None = None):
        folder = Path(folder)
        make = linear_factory(precision, engine)
        make_tail = tail_factory(precision, engine)
        self.precision = "float32" if make is NumpyLinear else precision
        cfg = json.loads((folder / "config.json").read_text())
        reason = unsupported(cfg)
        if reason:
            raise ValueError(f"the numpy runtime does not run {reason}")
        self.config = cfg
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads") or self.heads
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.group = self.heads // self.kv_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        rope = cfg.get("rope_parameters") or {}
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        self.max_positions = int(cfg.get("max_position_embeddings", 2048))
        half = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / self.head_dim
        self.inv_freq = (1.0 / (theta**half)).astype(np.float32)
        self._rope_cache = (np.zeros((0, self.head_dim), np.float32),) * 2

        w = read_weights(folder)

        def take(name: str) -> np.ndarray:
            """A tensor, read now into an array of its own (`read_weights`: nothing stays mapped)."""
            try:
                return w.pop(name)
            except KeyError:
                raise ValueError(f"weights lack {name}") from None

        # int8w: the quantized weights an earlier load kept, where they are (`Prepared`)
        store = Prepared(folder, self.precision) if self.precision == "int8w" else None
        embed_float = cache(lambda: take("model.embed_tokens.weight"))

        def matrix(name: str, weight: Callable[[], np.ndarray]) -> np.ndarray | Blocks:
            return store.blocks(name, weight) if store else weight()

        tied = "lm_head.weight" not in w
        if tied and not cfg.get("tie_word_embeddings", True):
            raise ValueError("weights lack lm_head.weight")
        if store:
            # rows looked up by token: int8 with a scale per row, made float32 on lookup (the
            # base's 49k x 576 table: 113 MB in float32, 28 MB so)
            self._embed_q, self._embed_scale = store.rows("embed", embed_float)
            self.embed: np.ndarray | None = None
            embed_shape = self._embed_q.shape
        else:
            self.embed = embed_float()
            embed_shape = self.embed.shape
        count = embed_shape[0] * embed_shape[1]
        if make is NumpyLinear:
            # The head in both layouts (measured here: one row is fastest against (hidden,
            # vocab), a batch of beams against (vocab, hidden), ~1.5x each way); tied: the second
            # is the embedding itself.
            self.head_rows: np.ndarray | None = self.embed if tied else take("lm_head.weight")
            self._head_cols: np.ndarray | None = None  # made on the first one-row step
            self.head: Linear | None = None
            head_shape = self.head_rows.shape
        else:
            self.head_rows = None
            head = matrix("head", embed_float if tied else lambda: take("lm_head.weight"))
            self.head = make(head)
            head_shape = head.shape
        self.vocab_size = head_shape[0]
        count += 0 if tied else head_shape[0] * head_shape[1]
        self.norm = take("model.norm.weight")
        count += self.norm.size
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            attn_bias, mlp_bias = cfg.get("attention_bias"), cfg.get("mlp_bias")

            def stacked(part: str, names: list[str], with_bias: bool, layer: str = p):
                nonlocal count
                mat = matrix(layer + part,  # (out, in): the named matrices stacked
                             lambda: np.concatenate([take(n + ".weight") for n in names]))  # fmt: skip
                b = np.concatenate([take(n + ".bias") for n in names]) if with_bias else None
                count += mat.shape[0] * mat.shape[1] + (0 if b is None else b.size)
                return mat, b

            norm_in = take(p + "input_layernorm.weight")
            norm_post = take(p + "post_attention_layernorm.weight")
            count += norm_in.size + norm_post.size
            qkv = make(*stacked("qkv", [a + f"{x}_proj" for x in "qkv"], attn_bias))
            o, o_bias = stacked("o", [a + "o_proj"], attn_bias)
            gate_up, gate_up_bias = stacked("gate_up", [m + "gate_proj", m + "up_proj"], mlp_bias)
            down, down_bias = stacked("down", [m + "down_proj"], mlp_bias)
            tail = make_tail(TailWeights(o, o_bias, norm_post, gate_up, gate_up_bias, down,
                                         down_bias, self.eps))  # fmt: skip
            self.layers.append(_Layer(norm_in, qkv, tail))
        self.num_parameters = count
        if store:
            store.save()  # what this load quantized, for the next cold one

    # --- pieces ---------------------------------------------------------------------------------

    def _embed(self, ids) -> np.ndarray:
        rows = np.asarray(ids)
        if self.embed is not None:
            return self.embed[rows]
        return self._embed_q[rows].astype(np.float32) * self._embed_scale[rows, None]

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return rms_norm(x, weight, self.eps)

    def _rope(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        cos, sin = self._rope_cache
        if start + n > cos.shape[0]:
            size = max(start + n, 2 * cos.shape[0], 256)
            freqs = np.arange(size, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            emb = np.concatenate([freqs, freqs], axis=-1)
            self._rope_cache = (np.cos(emb), np.sin(emb))
            cos, sin = self._rope_cache
        return cos[start : start + n], sin[start : start + n]

    def _rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = self.head_dim // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer: _Layer, x: np.ndarray):
        qkv = layer.qkv(self._rms(x, layer.norm_in))
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]

    def _logits(self, x: np.ndarray, prefill: bool = False) -> np.ndarray:
        h = self._rms(x, self.norm)
        if self.head is not None:
            return self.head(h)
        if h.shape[0] == 1 and not prefill:  # greedy decoding: worth a transposed copy
            if self._head_cols is None:
                self._head_cols = np.ascontiguousarray(self.head_rows.T)
            return h @ self._head_cols
        return (self.head_rows @ h.T).T

    def _check_room(self, length: int) -> None:
        if length > self.max_positions:
            raise ValueError(f"{length} tokens exceed the model's {self.max_positions} positions")

    def _causal_attention(self, q, k, v, mask, past: int) -> np.ndarray:
        """softmax(q k + mask) v for the prompt's rows, in blocks of `PREFILL_BLOCK` query rows:
        a block only multiplies by the keys it may see (up to its last row's position), so about
        half of the causal square is never computed, and a block's scores stay in cache.
        q (heads, n, d), k (kv heads, d, keys), v (kv heads, keys, d); (heads, n, d) out."""
        kvh, g, n, hd = self.kv_heads, self.group, q.shape[1], self.head_dim
        q = q.reshape(kvh, g, n, hd)
        out = np.empty((kvh, g, n, hd), np.float32)
        for a in range(0, n, PREFILL_BLOCK):
            b = min(n, a + PREFILL_BLOCK)
            seen = past + b
            rows = np.ascontiguousarray(q[:, :, a:b]).reshape(kvh, g * (b - a), hd)
            scores = rows @ k[:, :, :seen]
            scores += np.tile(mask[a:b, :seen], (g, 1))  # in place from here
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[:, :, a:b] = (scores @ v[:, :seen]).reshape(kvh, g, b - a, hd)
        return out.reshape(kvh * g, n, hd)

    # --- the two entry points -----------------------------------------------------------------

    def prefill(self, state: PromptState | None, ids: list[int]) -> tuple[PromptState, np.ndarray]:
        """Run ``ids`` after ``state`` (None: from scratch); the new state and the last logits."""
        past = 0 if state is None else state.length
        n = len(ids)
        if n == 0:
            raise ValueError("nothing to prefill")
        self._check_room(past + n)
        hd, kvh = self.head_dim, self.kv_heads
        cos, sin = self._rope(past, n)
        x = self._embed(ids)
        # query row r (position past + r) may see keys up to past + r
        keys_pos = np.arange(past + n)
        mask = np.where(keys_pos[None, :] > (past + np.arange(n))[:, None], -np.inf, 0.0)
        mask = mask.astype(np.float32)
        scale = np.float32(hd**-0.5)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x)
            q = self._rotate(q.reshape(n, self.heads, hd).transpose(1, 0, 2), cos, sin)
            k = self._rotate(k.reshape(n, kvh, hd).transpose(1, 0, 2), cos, sin).transpose(0, 2, 1)
            v = v.reshape(n, kvh, hd).transpose(1, 0, 2)
            if state is not None:
                k = np.concatenate([state.k[i], k], axis=2)
                v = np.concatenate([state.v[i], v], axis=1)
            k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
            ks.append(k)
            vs.append(v)
            attn = self._causal_attention(q * scale, k, v, mask, past)
            attn = attn.reshape(self.heads, n, hd).transpose(1, 0, 2).reshape(n, -1)
            x = layer.tail(x, attn)
        return PromptState(tuple(ks), tuple(vs), past + n), self._logits(x[-1:], prefill=True)[0]

    def beams(self, state: PromptState, capacity: int) -> BeamState:
        return BeamState(state, capacity)

    def step(self, beams: BeamState, order: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Reorder the beams' own keys and values by ``order``, then run one new token per beam;
        the logits (beams, vocab)."""
        b = len(tokens)
        t = beams.length
        pos = beams.prompt.length + t
        self._check_room(pos + 1)
        if t >= beams.capacity:
            raise ValueError("beam state is full")
        hd, kvh, g = self.head_dim, self.kv_heads, self.group
        order = np.asarray(order)
        if not beams.k:
            shape = (b, kvh, beams.capacity, hd)
            beams.k = [np.zeros(shape, np.float32) for _ in self.layers]
            beams.v = [np.zeros(shape, np.float32) for _ in self.layers]
        elif t and (len(order) != beams.k[0].shape[0] or np.any(order != np.arange(len(order)))):
            # only the t positions filled so far are moved, not the whole capacity
            beams.k = [_reorder(k, order, t) for k in beams.k]
            beams.v = [_reorder(v, order, t) for v in beams.v]
        cos, sin = self._rope(pos, 1)
        x = self._embed(tokens)
        scale = np.float32(hd**-0.5)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x)
            q = self._rotate(q.reshape(b, self.heads, hd), cos, sin) * scale  # (b, heads, hd)
            beams.k[i][:, :, t] = self._rotate(k.reshape(b, kvh, hd), cos, sin)
            beams.v[i][:, :, t] = v.reshape(b, kvh, hd)
            q4 = q.reshape(b, kvh, g, hd)
            # the prompt, shared: all beams' queries of a kv head in one product
            qs = q4.transpose(1, 0, 2, 3).reshape(kvh, b * g, hd)
            sp = qs @ beams.prompt.k[i]  # (kvh, b*g, prompt)
            sg = q4 @ beams.k[i][:, :, : t + 1].transpose(0, 1, 3, 2)  # (b, kvh, g, t+1)
            sp4 = sp.reshape(kvh, b, g, -1).transpose(1, 0, 2, 3)
            top = np.maximum(sp4.max(axis=-1), sg.max(axis=-1))[..., None]
            ep = np.exp(sp - top.transpose(1, 0, 2, 3).reshape(kvh, b * g, 1))
            eg = np.exp(sg - top)
            denom = ep.reshape(kvh, b, g, -1).sum(axis=-1).transpose(1, 0, 2) + eg.sum(axis=-1)
            out = (ep @ beams.prompt.v[i]).reshape(kvh, b, g, hd).transpose(1, 0, 2, 3)
            out = out + eg @ beams.v[i][:, :, : t + 1]
            attn = (out / denom[..., None]).reshape(b, -1)
            x = layer.tail(x, attn)
        beams.length = t + 1
        return self._logits(x)
