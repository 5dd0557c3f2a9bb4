"""The layers a LoRA adapter trains: every linear projection of attention and MLP in the text decoder's blocks.

Never the embeddings or the LM head (Gemma ties them: the head is a `Linear` over the embedding matrix), nor what
sits outside the decoder's blocks (a vision tower, a multimodal projector), nor a mixture-of-experts router or a
shared expert's gate, whose outputs are one score per expert: low-rank updates of them only disturb the routing.
"""

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")


def lora_target_names(model: nn.Module) -> tuple[str, ...]:
    """The short names (`q_proj`, Phi-3's `qkv_proj`, ...) of the linear layers of the decoder's blocks, sorted."""
    config = model.config if isinstance(model, PreTrainedModel) else None
    router_widths = _router_widths(config.get_text_config(decoder=True)) if config is not None else {1}
    return tuple(
        sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in decoder_blocks(model).named_modules()
                if isinstance(module, nn.Linear | Conv1D) and _out_features(module) not in router_widths
            }
        )
    )


def decoder_blocks(model: nn.Module) -> nn.Module:
    """The stack of the text decoder's blocks (`model.layers`, GPT-2's `transformer.h`): its outermost `ModuleList`
    (the longest, if several), not one inside a block (experts). A model without one is its own stack, less its
    output embeddings."""
    decoder = model.get_decoder() if isinstance(model, PreTrainedModel) else model  # type: ignore[no-untyped-call]
    stacks = [
        (name.count("."), module) for name, module in decoder.named_modules() if isinstance(module, nn.ModuleList)
    ]
    if stacks:
        return min(stacks, key=lambda stack: (stack[0], -len(stack[1])))[1]
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None  # type: ignore[no-untyped-call]
    return nn.ModuleList([module for module in decoder.children() if module is not head])


def _router_widths(config: PretrainedConfig) -> set[int]:
    """Output widths of a router (one per expert) and of a shared expert's gate (one)."""
    return {1, *(count for name in _EXPERT_COUNTS if isinstance(count := getattr(config, name, None), int))}


def _out_features(module: nn.Linear | Conv1D) -> int:
    return module.out_features if isinstance(module, nn.Linear) else int(module.nf)
