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

MMAP_THRESHOLD = 1 << 20  # measured: see `return_large_buffers`


def return_large_buffers() -> None:
    """Have glibc give every buffer of `MMAP_THRESHOLD` or more back to the system when it is
    freed (``mallopt(M_MMAP_THRESHOLD)``; elsewhere nothing). By default glibc raises that
    threshold after the first large buffer is freed, and then keeps the next ones in its heap:
    each prompt's per-layer intermediates (a few MB each, 30 layers for the base) pile up until
    `release_memory`. Measured on the base, five 470-token prompts in one process: peak 1,561 MB
    by default, 538 MB with 1 MiB (4 MiB: 626 MB), each prompt ~0.15 s slower. For a long-lived
    process (the daemon) only."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD


def release_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). A model's load and a long prompt leave freed buffers that glibc keeps: for the
    pretrained base ~125 MB after a 400-token prompt. Takes 0.3-8 ms: never on a keystroke's path."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
