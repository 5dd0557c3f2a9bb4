"""Direct preference optimisation (DPO, Rafailov et al. 2023) and its variants, as the trainer's objective.

Each pair is a prompt with a chosen and a rejected answer. The reference model is the model as training starts
(the base model for a new adapter, the starting fine-tune when training one further). Its log-probabilities are
computed on each batch beside the policy's, by the same forward on the same padded rows, without gradients (the
caller says how the model computes as the reference). A forward's rounding depends on its batch's shape: computed
once ahead, in other batches, the reference gave SmolLM2-135M in bf16 a first step's loss of 0.685 to 0.696
(depending on the CPU) where it must be log 2 = 0.6931. The price: a forward without gradients per step, ~30 % of
a SmolLM2-135M CPU step.

- DPO: loss = -log σ(β · ((log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r)))).
- `length_normalized`: each log-ratio is divided by its answer's token count (long answers stop dominating).
- `reference_free`: the reference terms are left out.
- `simpo_gamma` > 0: SimPO (Meng et al. 2024): reference-free, length-normalised, with target margin γ:
  loss = -log σ(β · (avg log π(c) - avg log π(r)) - γ).
- `rpo_alpha` > 0: RPO (Pang et al. 2024): adds α × the chosen answers' negative log-likelihood per token.

A pair's reward is β times its log-ratio (normalised as above); reward accuracy is the share of pairs whose
chosen answer gets the higher reward, and the margin is the mean difference.
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from app.ml.chat_format import IGNORE_INDEX, TokenizedExample, tokenize_example
from worker.training.data import collate, stop_check
from worker.training.logits import labelled_logits


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float = 0.1
    rpo_alpha: float = 0.0
    length_normalized: bool = False
    reference_free: bool = False
    simpo_gamma: float = 0.0


@dataclass(frozen=True)
class PairLosses:
    losses: torch.Tensor  # one per pair
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with its chosen and its rejected answer, each tokenized as a whole conversation."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    def __len__(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    settings: PreferenceSettings,
) -> PairLosses:
    """Per-pair losses and rewards from summed answer log-probabilities (policy and reference) and answer lengths.
    The RPO term needs token-level sums and is added by the caller (`preference_stats`)."""
    simpo = settings.simpo_gamma > 0
    chosen, rejected = policy_chosen, policy_rejected
    if not (settings.reference_free or simpo):
        chosen, rejected = chosen - reference_chosen, rejected - reference_rejected
    if settings.length_normalized or simpo:
        chosen, rejected = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
    chosen_rewards, rejected_rewards = settings.beta * chosen, settings.beta * rejected
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - settings.simpo_gamma)
    return PairLosses(losses, chosen_rewards.detach(), rejected_rewards.detach())


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[list[dict], str, str]],
    max_length: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[PreferencePair]:
    """(prompt messages, chosen answer, rejected answer) tokenized as training does, labels on the answer only;
    a pair left without an answer token after truncation is dropped. `Stopped` when `should_stop` says so."""
    tokenized = []
    for index, (prompt, chosen, rejected) in enumerate(pairs):
        stop_check(should_stop, index)
        rows = [
            tokenize_example(tokenizer, [*prompt, {"role": "assistant", "content": answer}], max_length)
            for answer in (chosen, rejected)
        ]
        if all(any(label != IGNORE_INDEX for label in row.labels[1:]) for row in rows):
            tokenized.append(PreferencePair(*rows))
    return tokenized


def answer_logps(
    model: torch.nn.Module, rows: Sequence[TokenizedExample], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled (answer) tokens, and how many there are. The LM head
    runs on labelled positions only."""
    return _batch_logps(model, _collated(model, rows, pad_token_id))


def _collated(model: torch.nn.Module, rows: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in collate(rows, pad_token_id).items()}


def _batch_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets, labelled = labelled_logits(model, batch)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    row_of_token = labelled.nonzero()[:, 0]
    sums = torch.zeros(len(labelled), device=logits.device).index_add(0, row_of_token, token_logps)
    return sums, labelled.sum(dim=1)


def _reference_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], as_reference: Callable[[], AbstractContextManager]
) -> torch.Tensor:
    """The summed answer log-probabilities of `batch` under the reference: `model` inside `as_reference()`, in
    eval mode (no dropout) and without gradients, otherwise computed as the policy's are."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), as_reference():
            return _batch_logps(model, batch)[0]
    finally:
        model.train(training)


def pair_logps(
    model: torch.nn.Module, pairs: Sequence[PreferencePair], batch_size: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[pairs, 2]: the summed log-probabilities of each pair's (chosen, rejected) answers under `model` as it is now
    (in eval mode, without gradients), and their token counts."""
    model.eval()
    sums, counts = [torch.zeros(0, 2)], [torch.zeros(0, 2, dtype=torch.long)]
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            batch_sums, batch_counts = answer_logps(
                model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_token_id
            )
            sums.append(batch_sums.cpu().view(2, -1).T)
            counts.append(batch_counts.cpu().view(2, -1).T)
    return torch.cat(sums), torch.cat(counts)


@dataclass(frozen=True)
class PreferenceStats:
    """Sums over a batch of pairs, so batches add up: divide by `pairs` for means."""

    loss_sum: torch.Tensor
    pairs: int
    correct: int  # pairs whose chosen answer got the higher reward
    margin_sum: float
    chosen_logps_sum: float
    rejected_logps_sum: float


def preference_stats(
    model: torch.nn.Module,
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    settings: PreferenceSettings,
    as_reference: Callable[[], AbstractContextManager],
) -> PreferenceStats:
    """The objective on a batch of pairs; inside `as_reference()` the model computes as the reference model does
    (`contextlib.nullcontext`: the model as it is now is its own reference)."""
    n = len(pairs)
    batch = _collated(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)
    reference = torch.zeros(2 * n, device=batch["input_ids"].device)  # left out of reference-free objectives
    if not (settings.reference_free or settings.simpo_gamma > 0):
        reference = _reference_logps(model, batch, as_reference)
    logps, tokens = _batch_logps(model, batch)
    outcome = preference_losses(logps[:n], logps[n:], reference[:n], reference[n:], tokens[:n], tokens[n:], settings)
    loss_sum = outcome.losses.sum()
    if settings.rpo_alpha > 0:
        loss_sum = loss_sum + settings.rpo_alpha * n * (-logps[:n].sum() / tokens[:n].sum())
    margins = outcome.chosen_rewards - outcome.rejected_rewards
    return PreferenceStats(
        loss_sum=loss_sum,
        pairs=n,
        correct=int((margins > 0).sum()),
        margin_sum=float(margins.sum()),
        chosen_logps_sum=float(logps[:n].detach().sum()),
        rejected_logps_sum=float(logps[n:].detach().sum()),
    )
