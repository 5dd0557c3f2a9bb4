"""DPO and its variants on fixed tensors against the papers' formulas written out with plain floats, and the
log-probabilities they start from against the model's own full-vocabulary forward."""

import math
from contextlib import nullcontext

import pytest
import torch

from worker.training.preference import (
    PreferenceSettings,
    answer_logps,
    preference_losses,
    preference_stats,
    tokenize_pairs,
)

# four pairs: summed answer log-probabilities of policy and reference, and answer lengths
POLICY_CHOSEN = [-12.0, -30.5, -8.25, -40.0]
POLICY_REJECTED = [-15.0, -28.0, -9.0, -39.5]
REFERENCE_CHOSEN = [-13.0, -31.0, -8.0, -41.0]
REFERENCE_REJECTED = [-14.0, -29.0, -9.5, -40.0]
CHOSEN_TOKENS = [6, 20, 4, 25]
REJECTED_TOKENS = [9, 14, 4, 30]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _expected(settings: PreferenceSettings) -> list[tuple[float, float, float]]:
    """(loss, chosen reward, rejected reward) of each pair."""
    expected = []
    for pc, pr, rc, rr, nc, nr in zip(
        POLICY_CHOSEN,
        POLICY_REJECTED,
        REFERENCE_CHOSEN,
        REFERENCE_REJECTED,
        CHOSEN_TOKENS,
        REJECTED_TOKENS,
        strict=True,
    ):
        if settings.simpo_gamma > 0:  # SimPO, eq. 6: β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ
            chosen, rejected = settings.beta * pc / nc, settings.beta * pr / nr
            expected.append((-_log_sigmoid(chosen - rejected - settings.simpo_gamma), chosen, rejected))
            continue
        chosen = pc if settings.reference_free else pc - rc  # DPO, eq. 7: β log π/π_ref
        rejected = pr if settings.reference_free else pr - rr
        if settings.length_normalized:
            chosen, rejected = chosen / nc, rejected / nr
        chosen, rejected = settings.beta * chosen, settings.beta * rejected
        expected.append((-_log_sigmoid(chosen - rejected), chosen, rejected))
    return expected


@pytest.mark.parametrize(
    "settings",
    [
        PreferenceSettings(beta=0.1),
        PreferenceSettings(beta=0.5),
        PreferenceSettings(beta=0.1, length_normalized=True),
        PreferenceSettings(beta=0.2, reference_free=True),
        PreferenceSettings(beta=2.0, simpo_gamma=0.5),
    ],
)
def test_losses_and_rewards_follow_the_papers_formulas(settings: PreferenceSettings) -> None:
    def t(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    outcome = preference_losses(
        t(POLICY_CHOSEN), t(POLICY_REJECTED), t(REFERENCE_CHOSEN), t(REFERENCE_REJECTED),
        t(CHOSEN_TOKENS), t(REJECTED_TOKENS), settings,
    )  # fmt: skip

    losses, chosen, rejected = zip(*_expected(settings), strict=True)
    assert outcome.losses.tolist() == pytest.approx(losses, rel=1e-12)
    assert outcome.chosen_rewards.tolist() == pytest.approx(chosen, rel=1e-12)
    assert outcome.rejected_rewards.tolist() == pytest.approx(rejected, rel=1e-12)


def test_the_model_before_training_is_its_own_reference(make_model, tokenizer) -> None:
    model = make_model().eval()
    pairs = tokenize_pairs(
        tokenizer,
        [([{"role": "user", "content": "Hi"}], "Hello there!", "Go away."),
         ([{"role": "user", "content": "2+2?"}], "4", "It is five, I think.")],
        max_length=64,
    )  # fmt: skip
    stats = preference_stats(
        model, pairs, pad_token_id=0, settings=PreferenceSettings(beta=0.1), as_reference=nullcontext
    )

    # computed by the same forward on the same batch, log-ratios are exactly zero: every loss is log 2, no pair is won
    assert stats.loss_sum.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert (stats.pairs, stats.correct, stats.margin_sum) == (2, 0, 0.0)
    with torch.no_grad():
        chosen, _ = answer_logps(model, [pair.chosen for pair in pairs], pad_token_id=0)
    assert stats.chosen_logps_sum == pytest.approx(chosen.sum().item(), rel=1e-5)


def test_answer_log_probabilities_equal_the_full_forward(make_model, tokenizer) -> None:
    model = make_model().eval()
    [pair] = tokenize_pairs(tokenizer, [([{"role": "user", "content": "Hi"}], "Hello!", "No.")], max_length=64)
    rows = [pair.chosen, pair.rejected]

    with torch.no_grad():
        sums, counts = answer_logps(model, rows, pad_token_id=0)
        for row, (total, count) in zip(rows, zip(sums.tolist(), counts.tolist(), strict=True), strict=True):
            ids = torch.tensor([row.input_ids])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            labels = torch.tensor(row.labels[1:])
            answer = labels != -100
            expected = logps[answer].gather(1, labels[answer].unsqueeze(1)).sum().item()
            assert total == pytest.approx(expected, rel=1e-5) and count == int(answer.sum())


def test_rpo_adds_the_chosen_answers_negative_log_likelihood(make_model, tokenizer) -> None:
    model = make_model().eval()
    pairs = tokenize_pairs(tokenizer, [([{"role": "user", "content": "Hi"}], "Hello there!", "Go.")], max_length=64)
    with torch.no_grad():
        plain = preference_stats(model, pairs, 0, PreferenceSettings(beta=0.1), nullcontext)
        rpo = preference_stats(model, pairs, 0, PreferenceSettings(beta=0.1, rpo_alpha=0.5), nullcontext)
        sums, counts = answer_logps(model, [pairs[0].chosen], 0)
    nll_per_token = -sums.item() / counts.item()
    assert rpo.loss_sum.item() == pytest.approx(plain.loss_sum.item() + 0.5 * nll_per_token, rel=1e-5)
