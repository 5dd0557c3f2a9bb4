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
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
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
    SiglipVisionConfig,
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


def build_gemma3_with_vision(**text_settings: Any) -> Gemma3ForConditionalGeneration:
    """A tiny Gemma 3 with a vision tower (SigLIP: q/k/v_proj, out_proj, fc1, fc2) and a multimodal projector."""
    text = Gemma3TextConfig(
        **{
            "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": SLIDING_WINDOW,
            "initializer_range": 0.2,
        }
        | text_settings
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, initializer_range=0.2)
    return Gemma3ForConditionalGeneration(config).eval()
