"""Any transformers causal LM behind the runtime interface of `cmc.runtime.llama.NumpyLlama`:
the fallback for models the numpy runtime does not run (and the reference it is pinned to)."""

from __future__ import annotations

import copy
import inspect
from functools import lru_cache
from typing import Any

import numpy as np
import torch


@lru_cache(maxsize=8)
def _cache_argument(model_class: type) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class TorchCausalLM:
    kind = "transformers"

    def __init__(self, model: Any):
        self.hf = model
        self.vocab_size = model.config.vocab_size
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, cache: Any) -> np.ndarray:
        kw = {_cache_argument(type(self.hf)): cache}
        out = self.hf(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1].float().numpy()

    def prefill(self, state: Any, ids: list[int]) -> tuple[Any, np.ndarray]:
        """Like `NumpyLlama.prefill`: ``state`` is left as it was."""
        from transformers import DynamicCache

        cache = DynamicCache() if state is None else copy.deepcopy(state)
        logits = self._run(torch.tensor([ids], dtype=torch.long), cache)
        return cache, logits[0]

    def beams(self, state: Any, capacity: int) -> Any:
        return copy.deepcopy(state)

    def step(self, beams: Any, order: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        beams.reorder_cache(torch.as_tensor(np.asarray(order), dtype=torch.long))
        return self._run(torch.as_tensor(np.asarray(tokens), dtype=torch.long)[:, None], beams)


class TorchSeq2Seq:
    """An encoder-decoder (the paper's CodeT5s) behind the same interface. Its prompt ids are
    ``encoder ids, ENCODER_END, decoder ids`` (`cmc.prompt.build_seq2seq_prompt`): the first
    prefill runs the encoder once; the decoder then extends and searches like a causal LM."""

    kind = "seq2seq"

    def __init__(self, model: Any, eos_id: int):
        self.hf = model
        self.eos_id = eos_id
        self.vocab_size = model.config.vocab_size
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.inference_mode()
    def _decode(self, encoded: torch.Tensor, ids: torch.Tensor, cache: Any) -> np.ndarray:
        from transformers.modeling_outputs import BaseModelOutput

        rows = ids.shape[0]
        kw = {_cache_argument(type(self.hf)): cache}
        out = self.hf(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.expand(rows, -1, -1)),
            decoder_input_ids=ids, use_cache=True, **kw,
        )  # fmt: skip
        return out.logits[:, -1].float().numpy()

    @torch.inference_mode()
    def prefill(self, state: Any, ids: list[int]) -> tuple[Any, np.ndarray]:
        from transformers import DynamicCache, EncoderDecoderCache

        from cmc.prompt import ENCODER_END

        if state is None:
            if ENCODER_END not in ids:
                raise ValueError("a seq2seq prompt starts with its encoder ids")
            split = ids.index(ENCODER_END)
            encoder_ids, ids = ids[:split], ids[split + 1 :]
            encoded = self.hf.get_encoder()(
                input_ids=torch.tensor([encoder_ids], dtype=torch.long)
            ).last_hidden_state
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        else:
            encoded, cache = state[0], copy.deepcopy(state[1])
        logits = self._decode(encoded, torch.tensor([ids], dtype=torch.long), cache)
        return (encoded, cache), logits[0]

    def beams(self, state: Any, capacity: int) -> Any:
        return [state[0], copy.deepcopy(state[1])]

    def step(self, beams: Any, order: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        encoded, cache = beams
        cache.reorder_cache(torch.as_tensor(np.asarray(order), dtype=torch.long))
        ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)[:, None]
        return self._decode(encoded, ids, cache)
