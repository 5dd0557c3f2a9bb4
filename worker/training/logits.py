"""The LM head applied only where a label is: answer tokens are a fraction of each sequence, and the head of a small
model is a large share of its compute (SmolLM2-135M: 49k × 576, ~20 % of the forward)."""

from typing import TypeGuard

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from app.ml.chat_format import IGNORE_INDEX


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def supports_labelled_head(lm: torch.nn.Module) -> TypeGuard[PreTrainedModel]:
    """Whether `lm` (a causal LM, not a PEFT wrapper of one) is a transformers model whose logits are just the LM
    head applied to the last hidden state (no softcapping or scaling)."""
    config = getattr(lm, "config", None)
    transformed = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
    inner = getattr(lm, "base_model", None)
    return (
        isinstance(lm, PreTrainedModel)
        and inner is not None
        and inner is not lm
        and lm.get_output_embeddings() is not None
        and not transformed
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
    return lm.get_output_embeddings()(hidden[:, :-1][labelled]), targets[labelled], labelled
