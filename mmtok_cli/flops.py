"""Estimated language-model prefill cost, from the model config alone.

Used for `speedup.estimated`: the ratio of the LLM's prefill FLOPs for the unpruned and the pruned
prompt. It counts the matrix multiplications of a decoder-only transformer (attention projections,
causal attention scores and mixing, the MLP, the LM head for the one position `generate` needs) and
ignores the vision encoder, which runs in full either way. It is an estimate: real time also depends
on memory traffic, kernel launches and decoding.
"""

from __future__ import annotations

from typing import Any


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def prefill_flops(text_config: Any, length: int) -> float:
    """FLOPs (2 per multiply-add) to prefill `length` tokens through the language model."""
    d = _get(text_config, "hidden_size")
    layers = _get(text_config, "num_hidden_layers")
    heads = _get(text_config, "num_attention_heads")
    kv_heads = _get(text_config, "num_key_value_heads", default=heads)
    head_dim = _get(text_config, "head_dim", default=d // heads)
    ffn = _get(text_config, "intermediate_size", default=4 * d)
    vocab = _get(text_config, "vocab_size", default=0)

    projections = 2 * length * d * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    attention = 2 * 2 * heads * head_dim * length * (length + 1) / 2  # QK^T and AV over the causal half
    mlp = 2 * length * d * ffn * 3  # gated MLP (gate, up, down), as in Llama, Vicuna and Qwen
    return layers * (projections + attention + mlp) + 2 * d * vocab


def estimated_speedup(config: Any, unpruned: int, pruned: int) -> float:
    """Prefill FLOPs unpruned / pruned for one prompt (`config` is the full model config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return prefill_flops(text, unpruned) / prefill_flops(text, max(pruned, 1))
