"""Model configurations for training from scratch (Llama-style decoder-only, from transformers)."""

from __future__ import annotations

from typing import Any

# name → (hidden size, layers, heads, intermediate size)
# (parameter counts with a 16,384-token vocabulary and tied embeddings)
SIZES = {
    "tiny": (64, 2, 2, 128),
    "5m": (192, 4, 3, 512),  # 4.9M
    "9m": (256, 6, 4, 704),  # 9.0M
    "15m": (320, 8, 5, 896),  # 15.4M
    "20m": (384, 7, 6, 1024),  # 18.8M
}


def new_model(tokenizer: Any, size: str = "9m", max_positions: int = 1024, seed: int = 0):
    """A freshly initialized LlamaForCausalLM sized by ``size`` for this tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
