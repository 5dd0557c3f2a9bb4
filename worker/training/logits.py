"""The LM head applied only where a label is: answer tokens are a fraction of each sequence, and the head of a small
model is a large share of its compute (SmolLM2-135M: 49k × 576, ~20 % of the forward), of a large vocabulary most
of the memory (Gemma's 256k: 1 GB of fp32 logits for 1,024 tokens).

And the tokens every row of a batch begins with (the system prompt a template adds to every conversation, or one a
dataset repeats in every example) computed once for the batch rather than once per row: their keys and values are
shared by every row, and gradients flow back through them from every row, so the loss and the gradients are those
of the whole rows computed apart (SmolLM2's template adds its system prompt to every conversation: 27 of a support
ticket's ~60 tokens)."""

from collections.abc import Callable
from typing import TypeGuard

import torch
from peft import PeftModel
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from app.ml.chat_format import IGNORE_INDEX

LogitsTransform = Callable[[torch.Tensor], torch.Tensor]
_HEAD_SETTINGS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # as `head_transform` applies them
# A shared prefix shorter than this is computed with its rows: a second forward call costs more than it saves.
SHARED_PREFIX_MIN_TOKENS = 8


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


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """How many leading tokens every row of `batch` has in common, none of them padding and none predicting a label
    (the prefix's last hidden state is not computed with the rows); 0 for a batch of one row."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    same = ((ids == ids[:1]) & (mask == 1)).all(dim=0)
    common = int(same.long().cumprod(dim=0).sum())
    labelled_columns = (labels != IGNORE_INDEX).any(dim=0)
    if not labelled_columns.any():
        return 0
    return min(common, int(labelled_columns.long().argmax()) - 1)


def _full_attention_only(config: PretrainedConfig) -> bool:
    """Whether every layer attends to the whole row (a sliding-window cache layer would drop the shared prefix)."""
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(text, "sliding_window", None) is None


def _last_hidden_state(lm: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The decoder's last hidden state of each row from its `prefix`-th token on, and that `prefix`: the tokens
    before it, shared by every row, are computed once and their keys and values repeated for each row."""
    prefix = shared_prefix_length(batch) if _full_attention_only(lm.config) else 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if prefix < SHARED_PREFIX_MIN_TOKENS:
        return lm.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state, 0
    cache = DynamicCache(config=lm.config)
    lm.base_model(input_ids=ids[:1, :prefix], cache=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    rest = lm.base_model(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache, use_cache=True)
    return rest.last_hidden_state, prefix


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
    hidden, prefix = _last_hidden_state(lm, batch)
    logits = head_transform(lm.config)(lm.get_output_embeddings()(hidden[:, :-1][labelled[:, prefix:]]))
    return logits, targets[labelled], labelled
