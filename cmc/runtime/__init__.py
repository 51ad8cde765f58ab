"""Completion runtimes: a model behind three calls, whatever computes it.

* ``prefill(state, ids) -> (state, logits)``: run ``ids`` after a prompt state (None: from
  scratch); the state passed in is left as it was, the logits are those of the last position.
* ``beams(state, capacity) -> search``: the per-search state of a beam search over that prompt.
* ``step(search, order, tokens) -> logits``: reorder the beams by ``order`` (indices of the
  previous beams), feed one token to each, logits (beams, vocab) as float32 numpy.

`cmc.runtime.llama.NumpyLlama` runs cmc's own (Llama) models without torch: attention in numpy,
weight products on onnxruntime (int8 by default, `cmc.runtime.linear`) or numpy;
`cmc.runtime.hf.TorchCausalLM` runs any transformers causal LM. `cmc.model.load_model` picks one.
"""
