"""Preference training on a tiny model: it learns which answer is preferred, held-out pairs included, reports the
DPO metrics at every step, a policy that has not moved is exactly its reference in either precision, and a resumed
run ends like an uninterrupted one."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.unit.test_trainer import config
from worker.training import EpochReport, StepReport, TrainingHooks
from worker.training.preference import PreferenceSettings
from worker.training.state import TrainingState
from worker.training.trainer import train_preference

# The preferred answer is always polite; the other one is curt.
QUESTIONS = [
    "Where is my order?", "Can I get a refund?", "How do I reset my password?", "Is the app down?",
    "Do you ship abroad?", "Can I change my plan?", "Why was I charged?", "How do I delete my account?",
]  # fmt: skip
PAIRS = [([{"role": "user", "content": q}], "Thank you for asking! Happy to help.", "No.") for q in QUESTIONS]
TRAIN, HELD_OUT = PAIRS[:6], PAIRS[6:]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_it_learns_the_preferred_answers_and_reports_dpo_metrics(make_model, tokenizer, precision):
    steps: list[StepReport] = []
    result = train_preference(
        make_model(), tokenizer, TRAIN, HELD_OUT, config(n_epochs=4, lora_dropout=0.0, precision=precision),
        PreferenceSettings(beta=0.5), hooks=TrainingHooks(on_step=steps.append),
    )  # fmt: skip

    first, last = steps[0], steps[-1]
    assert first.accuracy_name == "reward_accuracy" and first.train_mean_token_accuracy == 0.0  # no pair won yet
    assert set(first.train_metrics) == {"reward_margin", "chosen_logps", "rejected_logps"}
    assert first.train_loss == pytest.approx(math.log(2), rel=1e-5)  # policy = reference at the first step
    assert last.train_loss < first.train_loss and last.train_metrics["reward_margin"] > 0
    assert last.valid_mean_token_accuracy == 1.0 and last.valid_metrics is not None  # both held-out pairs won
    first_epoch = next(step for step in steps if step.valid_metrics is not None)
    assert first_epoch.epoch == 1 and first_epoch.valid_metrics is not None
    assert last.valid_metrics["reward_margin"] > first_epoch.valid_metrics["reward_margin"] > 0
    assert result.trained_tokens > 0 and result.epochs_run == 4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_policy_that_has_not_moved_is_exactly_its_reference_in_every_batch(make_model, tokenizer, precision):
    # A learning rate of 0 keeps the policy where it started; each epoch shuffles the pairs into other batches, whose
    # padding changes a forward's rounding (in bf16 by ~1e-3 of a loss). A reference computed as the policy is, on
    # the same batch, still gives exactly zero log-ratios: every loss log 2, every margin 0.
    steps: list[StepReport] = []
    still = config(n_epochs=3, learning_rate=0.0, precision=precision)
    train_preference(
        make_model(), tokenizer, TRAIN, HELD_OUT, still, PreferenceSettings(beta=0.5), hooks=TrainingHooks(steps.append)
    )

    assert len(steps) == 9 and [step.train_metrics["reward_margin"] for step in steps] == [0.0] * 9
    assert [step.train_loss for step in steps] == pytest.approx([math.log(2)] * 9, abs=1e-7)
    evaluated = [step for step in steps if step.valid_metrics is not None]
    assert [step.valid_metrics["reward_margin"] for step in evaluated] == [0.0] * 3  # type: ignore[index]
    assert [step.valid_loss for step in evaluated] == pytest.approx([math.log(2)] * 3, abs=1e-7)


def test_a_resumed_preference_run_ends_like_an_uninterrupted_one(make_model, tokenizer):
    settings, preference = config(n_epochs=3), PreferenceSettings(beta=0.5, rpo_alpha=0.2)
    saved: dict[int, bytes] = {}

    def checkpoint(report: EpochReport) -> None:
        saved[report.epoch] = report.state.to_bytes()

    steps: list[StepReport] = []
    whole = train_preference(
        make_model(),
        tokenizer,
        TRAIN,
        HELD_OUT,
        settings,
        preference,
        hooks=TrainingHooks(steps.append, on_epoch_end=checkpoint),
    )
    resumed_steps: list[StepReport] = []
    state = TrainingState.from_bytes(saved[1])
    resumed = train_preference(
        make_model(),
        tokenizer,
        TRAIN,
        HELD_OUT,
        settings,
        preference,
        hooks=TrainingHooks(resumed_steps.append, resume=state),
    )

    assert resumed_steps == steps[state.step :]
    assert (resumed.valid_loss, resumed.epoch_losses) == (whole.valid_loss, whole.epoch_losses)


def test_training_a_fine_tune_further_takes_that_fine_tune_as_the_reference(make_model, tokenizer, tmp_path):
    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(make_model(), lora).save_pretrained(tmp_path)  # an SFT model unlike its base
    steps: list[StepReport] = []

    train_preference(
        make_model(), tokenizer, TRAIN, HELD_OUT, config(n_epochs=1, lora_dropout=0.0), PreferenceSettings(),
        hooks=TrainingHooks(on_step=steps.append, start_from=tmp_path),
    )  # fmt: skip

    # log-ratios against the starting adapter are zero at the first step; against the base model they would not be
    assert steps[0].train_loss == pytest.approx(math.log(2), rel=1e-5)
    assert steps[0].train_metrics["reward_margin"] == pytest.approx(0, abs=1e-6)
