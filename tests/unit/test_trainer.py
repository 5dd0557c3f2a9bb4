import pytest

from app.chat_format import tokenize_example
from tests.unit.tiny_models import conversation
from worker.training import StepReport, TrainingConfig, save_adapter, train_lora
from worker.training.trainer import linear_projection_names, lr_factor

TRAIN = [
    conversation("What is the capital of France?", "Paris"),
    conversation("Hello! How are you?", "I am fine, thank you."),
    conversation("Tell me a joke.", "Why did the chicken cross the road?"),
    conversation("Why did the chicken cross the road?", "To get to the other side."),
]
VALID = [conversation("What is the capital of France?", "Paris is the capital.")]


def config(**overrides) -> TrainingConfig:
    settings = {"n_epochs": 3, "batch_size": 2, "learning_rate": 1e-2, "seed": 7, "lora_dropout": 0.1}
    return TrainingConfig(**(settings | overrides))


def run(make_model, tokenizer, **overrides) -> tuple[list[StepReport], object]:
    reports: list[StepReport] = []
    result = train_lora(make_model(), tokenizer, TRAIN, VALID, config(**overrides), on_step=reports.append)
    return reports, result


def test_same_seed_gives_identical_losses(make_model, tokenizer):
    first, _ = run(make_model, tokenizer)
    second, _ = run(make_model, tokenizer)

    assert [r.train_loss for r in first] == [r.train_loss for r in second]
    assert [r.valid_loss for r in first] == [r.valid_loss for r in second]


def test_loss_goes_down_when_overfitting_a_tiny_set(make_model, tokenizer):
    reports, result = run(make_model, tokenizer, n_epochs=15, lora_r=16)

    first_epoch = [r.train_loss for r in reports if r.epoch == 1]
    last_epoch = [r.train_loss for r in reports if r.epoch == 15]
    assert sum(last_epoch) / len(last_epoch) < 0.5 * sum(first_epoch) / len(first_epoch)
    assert result.train_loss == pytest.approx(sum(last_epoch) / len(last_epoch))


def test_reports_every_step_with_validation_loss_at_each_epoch_end(make_model, tokenizer):
    reports, result = run(make_model, tokenizer)

    assert [r.step for r in reports] == list(range(1, 7))
    assert all(r.total_steps == 6 for r in reports)
    assert [r.epoch for r in reports] == [1, 1, 2, 2, 3, 3]
    assert [r.valid_loss is not None for r in reports] == [False, True] * 3
    assert result.valid_loss == reports[-1].valid_loss
    assert (result.steps, result.stopped) == (6, False)


def test_learning_rate_warms_up_then_decays(make_model, tokenizer):
    reports, _ = run(make_model, tokenizer, n_epochs=10, warmup_ratio=0.2)
    rates = [r.learning_rate for r in reports]

    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(1e-2)
    assert rates[: peak + 1] == sorted(rates[: peak + 1])
    assert rates[peak:] == sorted(rates[peak:], reverse=True)
    assert lr_factor(0, total_steps=10, warmup_steps=2) == 0.5
    assert lr_factor(9, total_steps=10, warmup_steps=2) > 0


def test_should_stop_ends_training_early(make_model, tokenizer):
    checks = iter([False, False, True])
    reports: list[StepReport] = []
    result = train_lora(
        make_model(), tokenizer, TRAIN, None, config(), on_step=reports.append, should_stop=checks.__next__
    )

    assert (result.steps, result.stopped, len(reports)) == (2, True, 2)


def test_trained_tokens_count_every_sequence_of_every_epoch(make_model, tokenizer):
    full_lengths = [len(tokenize_example(tokenizer, messages, 10_000).input_ids) for messages in TRAIN]
    max_seq_length = max(full_lengths) - 3  # truncates the longest conversation inside its reply
    _, result = run(make_model, tokenizer, n_epochs=2, max_seq_length=max_seq_length)

    assert result.trained_tokens == 2 * sum(min(length, max_seq_length) for length in full_lengths)


def test_default_targets_are_all_attention_and_mlp_projections(make_model):
    assert set(linear_projection_names(make_model())) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip


def test_saved_adapter_holds_only_the_lora_weights(make_model, tokenizer, tmp_path):
    _, result = run(make_model, tokenizer, n_epochs=1)
    files = save_adapter(result.model, tmp_path / "adapter")

    names = {path.name for path in files}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert sum(path.stat().st_size for path in files) < 200_000
