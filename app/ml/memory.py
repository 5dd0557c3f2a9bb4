"""A rough estimate of the GPU memory a LoRA job needs, from the base model's config alone (no weights loaded).

It errs large: base weights at their precision (NF4 with double quantisation: ~4.5 bits a weight, embeddings kept
in bf16), the adapter with its gradients and AdamW state (16 bytes a parameter), the activations kept for the
backward pass in bf16 (per token and layer, the inputs of every projection, attention and MLP outputs, norms and
residuals: about 12 × hidden + 4 × intermediate values), the logits of every position in fp32 with their
gradient, and 512 MiB for the CUDA context.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.ml.base_models.quantization import FOUR_BIT

NF4_BYTES = 4.5 / 8
CUDA_CONTEXT_BYTES = 512 * 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + CUDA_CONTEXT_BYTES


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama-style block."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def parameter_count(config: dict[str, Any]) -> tuple[int, int]:
    """(parameters of the blocks' projections, all the others: embeddings, LM head, norms)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    projections = layers * sum(i * o for i, o in projection_shapes(config).values())
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    norms = (2 * layers + 1) * hidden
    return projections, embeddings + norms


def training_memory(
    config: dict[str, Any],
    quantization: str | None,
    batch_size: int,
    max_seq_length: int,
    lora_r: int,
    target_modules: Sequence[str],
) -> MemoryEstimate:
    projections, others = parameter_count(config)
    weight_bytes = projections * (NF4_BYTES if quantization == FOUR_BIT else 2) + others * 2
    shapes = projection_shapes(config)
    hidden = config["hidden_size"]
    targets = target_modules or list(shapes)
    adapter = config["num_hidden_layers"] * sum(lora_r * sum(shapes.get(name, (hidden, hidden))) for name in targets)
    tokens = batch_size * max_seq_length
    per_token_layer = 12 * hidden + 4 * config["intermediate_size"]
    activations = tokens * config["num_hidden_layers"] * per_token_layer * 2 + tokens * config["vocab_size"] * 4 * 2
    return MemoryEstimate(int(weight_bytes), adapter * 16, activations)
