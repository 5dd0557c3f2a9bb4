"""The LM head applied only where a label is: answer tokens are a fraction of each sequence, and the head of a small
model is a large share of its compute (SmolLM2-135M: 49k × 576, ~20 % of the forward), of a large vocabulary most
of the memory (Gemma's 256k: 1 GB of fp32 logits for 1,024 tokens)."""

from collections.abc import Callable
from typing import TypeGuard

import torch
from peft import PeftModel
from transformers import PretrainedConfig, PreTrainedModel

from app.ml.chat_format import IGNORE_INDEX

LogitsTransform = Callable[[torch.Tensor], torch.Tensor]
_HEAD_SETTINGS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # as `head_transform` applies them


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def head_transform(config: PretrainedConfig) -> LogitsTransform:
    """What the model does to the LM head's output, as its own forward does it: Gemma's soft-capping
    (`final_logit_softcapping`), Cohere's `logit_scale` (a factor), Granite's `logits_scaling` (a divisor)."""
    softcap, scale, divisor = (getattr(config, name, None) for name in _HEAD_SETTINGS)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


def supports_labelled_head(lm: torch.nn.Module) -> TypeGuard[PreTrainedModel]:
    """Whether `lm` (a causal LM, not a PEFT wrapper of one) is a transformers model whose logits are its LM head
    applied to the last hidden state (then transformed by `head_transform`). A multimodal model whose text config
    transforms its logits is not: some apply that (Granite Vision), some do not (Gemma 3), as their forwards say."""
    inner = getattr(lm, "base_model", None)
    config = getattr(lm, "config", None)
    text = config.get_text_config(decoder=True) if isinstance(config, PretrainedConfig) else config
    composite_transform = text is not config and any(getattr(text, name, None) for name in _HEAD_SETTINGS)
    return (
        isinstance(lm, PreTrainedModel)
        and inner is not None
        and inner is not lm
        and lm.get_output_embeddings() is not None
        and not composite_transform
    )


def labelled_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits of the positions that predict a label, those labels, the [rows, length - 1] mask of them)."""
    targets = batch["labels"][:, 1:]
    labelled = targets != IGNORE_INDEX
    lm = causal_lm(model)
    if not supports_labelled_head(lm):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return logits[:, :-1][labelled], targets[labelled], labelled
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    logits = head_transform(lm.config)(lm.get_output_embeddings()(hidden[:, :-1][labelled]))
    return logits, targets[labelled], labelled
