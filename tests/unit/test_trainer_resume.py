"""A run resumed from an epoch's saved state ends exactly where an uninterrupted run ends; an adapter can be
trained further; the Together-style options change what they say."""

import pytest
import torch

from app.ml.chat_format import IGNORE_INDEX, tokenize_example
from tests.helpers.tiny_models import conversation
from tests.unit.test_trainer import TRAIN, VALID, config
from worker.training import EpochReport, StepReport, TrainingHooks, save_adapter, train_lora
from worker.training.state import TrainingState
from worker.training.trainer import lr_factor

CONTRADICTED = [conversation("What is the capital of France?", "Hello! How are you?")]  # TRAIN says Paris


def _adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("validation", "crash_after_epoch"), [(VALID, 1), (CONTRADICTED, 4), (None, 2)])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(make_model, tokenizer, validation, crash_after_epoch):
    settings = config(n_epochs=5, lora_dropout=0.1, cpu_bf16=False)  # dropout: the RNG state must come back too
    saved: dict[int, bytes] = {}

    def checkpoint(report: EpochReport) -> None:
        saved[report.epoch] = report.state.to_bytes()

    steps: list[StepReport] = []
    whole = train_lora(
        make_model(), tokenizer, TRAIN, validation, settings, hooks=TrainingHooks(steps.append, on_epoch_end=checkpoint)
    )

    state = TrainingState.from_bytes(saved[crash_after_epoch])
    resumed_steps: list[StepReport] = []
    resumed = train_lora(
        make_model(), tokenizer, TRAIN, validation, settings, hooks=TrainingHooks(resumed_steps.append, resume=state)
    )

    assert resumed_steps == steps[state.step :]
    assert (resumed.steps, resumed.trained_tokens, resumed.train_loss) == (
        whole.steps,
        whole.trained_tokens,
        whole.train_loss,
    )
    assert (resumed.best_epoch, resumed.valid_loss, resumed.epoch_losses) == (
        whole.best_epoch,
        whole.valid_loss,
        whole.epoch_losses,
    )
    expected, got = _adapter(whole.model), _adapter(resumed.model)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    if validation is CONTRADICTED:
        assert whole.best_epoch < crash_after_epoch  # the best adapter itself came back from the state


def test_resuming_with_a_state_from_other_data_is_refused(make_model, tokenizer):
    saved: list[bytes] = []
    train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(n_epochs=2),
        hooks=TrainingHooks(on_epoch_end=lambda r: saved.append(r.state.to_bytes())),
    )

    with pytest.raises(ValueError, match="cannot resume"):
        train_lora(
            make_model(),
            tokenizer,
            TRAIN * 2,
            None,
            config(n_epochs=2),
            hooks=TrainingHooks(resume=TrainingState.from_bytes(saved[0])),
        )


def test_training_starts_from_a_saved_adapter(make_model, tokenizer, tmp_path):
    first = train_lora(make_model(), tokenizer, TRAIN, None, config(n_epochs=2, lora_r=4))
    save_adapter(first.model, tmp_path / "parent")

    unchanged = train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(n_epochs=1, learning_rate=0.0),
        hooks=TrainingHooks(start_from=tmp_path / "parent"),
    )
    parent = _adapter(first.model)
    assert _adapter(unchanged.model).keys() == parent.keys()  # the parent's LoRA settings (r=4), not the config's
    assert all(torch.equal(parent[name], tensor) for name, tensor in _adapter(unchanged.model).items())

    further = train_lora(
        make_model(), tokenizer, TRAIN, None, config(n_epochs=1), hooks=TrainingHooks(start_from=tmp_path / "parent")
    )
    assert any(not torch.equal(parent[name], tensor) for name, tensor in _adapter(further.model).items())


def test_train_on_inputs_labels_every_token(tokenizer):
    messages = conversation("What is the capital of France?", "Paris")
    default = tokenize_example(tokenizer, messages, 512)
    everything = tokenize_example(tokenizer, messages, 512, train_on_inputs=True)

    assert everything.input_ids == default.input_ids
    assert everything.labels == everything.input_ids
    assert IGNORE_INDEX in default.labels


def test_train_on_inputs_trains_on_more_tokens(make_model, tokenizer):
    steps: list[StepReport] = []
    train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(n_epochs=1, train_on_inputs=True),
        hooks=TrainingHooks(steps.append),
    )
    masked: list[StepReport] = []
    train_lora(make_model(), tokenizer, TRAIN, None, config(n_epochs=1), hooks=TrainingHooks(masked.append))

    assert [step.train_loss for step in steps] != [step.train_loss for step in masked]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_learning_rate_schedules_after_warmup(schedule, expected):
    factors = [lr_factor(step, total_steps=6, warmup_steps=2, schedule=schedule) for step in range(6)]

    assert factors == pytest.approx(expected, abs=1e-6)


def test_gradient_clipping_can_be_turned_off(make_model, tokenizer):
    clipped, unclipped = [], []
    big_steps = {"learning_rate": 0.5, "n_epochs": 1, "cpu_bf16": False}
    train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(max_grad_norm=1e-3, **big_steps),
        hooks=TrainingHooks(clipped.append),
    )
    train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(max_grad_norm=0, **big_steps),
        hooks=TrainingHooks(unclipped.append),
    )

    assert clipped[0].train_loss == unclipped[0].train_loss  # same first batch, before any update
    assert clipped[1].train_loss != unclipped[1].train_loss
