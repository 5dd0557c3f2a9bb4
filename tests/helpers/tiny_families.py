"""Tiny random-weight models of each architecture family we train and serve, built in the test from transformers'
config classes: what differs between families (biases, q/k norms, sliding windows, tied embeddings, soft-capped
logits, fused projections, a large vocabulary) is kept, the sizes are not."""

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SLIDING_WINDOW = 8  # tokens: prompts and generations of the tests run past it
GEMMA_VOCABULARY = 262_144  # Gemma 3's; the tiny tokenizer's 400 ids come first, the rest are never in a prompt
LLAMA_STYLE = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
SERVED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# The LoRA targets each family's projections give: Phi-3 fuses q/k/v and gate/up into one layer each.
EXPECTED_TARGETS = {family: LLAMA_STYLE for family in SERVED_FAMILIES} | {
    "phi3": ("down_proj", "gate_up_proj", "o_proj", "qkv_proj")
}

_GEMMA = {
    "head_dim": 8,
    "sliding_window": SLIDING_WINDOW,
    "layer_types": ["sliding_attention", "full_attention"],
    "vocab_size": GEMMA_VOCABULARY,
}
# Per family: its model class, and what its config sets beyond the common sizes.
_FAMILIES: dict[str, tuple[Callable[[Any], PreTrainedModel], Callable[..., Any], dict[str, Any]]] = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": SLIDING_WINDOW}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # biases on q, k and v
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 8}),  # q and k normalised per head
    # Soft-capping at 2 bends every logit visibly (Gemma 2's own 30 would hardly touch a tiny model's).
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, _GEMMA | {"final_logit_softcapping": 2.0}),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig, _GEMMA),
    "phi3": (Phi3ForCausalLM, Phi3Config, {}),
    # Only their logits differ from Llama's: Cohere multiplies them, Granite divides them.
    "cohere": (CohereForCausalLM, CohereConfig, {"logit_scale": 0.5}),
    "granite": (GraniteForCausalLM, GraniteConfig, {"logits_scaling": 4.0}),
}


def build_family_model(family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """A tiny model of `family` (a key of `_FAMILIES`) for the tiny tokenizer, the same weights for the same seed."""
    model_class, config_class, extra = _FAMILIES[family]
    config = config_class(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "initializer_range": 0.2,  # large enough that random adapters change the replies
        }
        | extra
    )
    torch.manual_seed(seed)
    return model_class(config).eval()
