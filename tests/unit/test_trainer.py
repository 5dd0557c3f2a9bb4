import pytest
import torch

from app.ml.chat_format import tokenize_example
from tests.helpers.tiny_models import conversation
from worker.training import EpochReport, StepReport, TrainingConfig, TrainingHooks, save_adapter, train_lora
from worker.training.data import collate
from worker.training.trainer import (
    best_epoch,
    evaluate,
    full_logits_token_stats,
    linear_projection_names,
    lr_factor,
    token_stats,
)

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
    result = train_lora(
        make_model(), tokenizer, TRAIN, VALID, config(**overrides), hooks=TrainingHooks(on_step=reports.append)
    )
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
    reports: list[StepReport] = []
    result = train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        None,
        config(),
        hooks=TrainingHooks(on_step=reports.append, should_stop=lambda: len(reports) == 2),
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


def test_best_epoch_is_the_first_lowest_validation_loss():
    assert best_epoch([2.0, 1.5, 1.7, 1.9]) == 2  # rising after epoch 2: overfitting
    assert best_epoch([2.0, 1.5, 1.5, 1.4]) == 4
    assert best_epoch([1.0, 1.0]) == 1
    assert best_epoch([3.0]) == 1


def test_loss_on_labelled_positions_equals_the_full_vocabulary_loss(make_model, tokenizer):
    model = make_model()
    examples = [tokenize_example(tokenizer, messages, 1024) for messages in TRAIN]
    batch = collate(examples, tokenizer.pad_token_id)

    head_only, full = token_stats(model, batch), full_logits_token_stats(model, batch)

    assert head_only.loss_sum.item() == pytest.approx(full.loss_sum.item(), rel=1e-6)
    assert (head_only.correct, head_only.count) == (full.correct, full.count)
    assert full.count == sum(label != -100 for example in examples for label in example.labels[1:])


def test_labelled_positions_loss_works_through_the_lora_wrapper(make_model, tokenizer):
    _, result = run(make_model, tokenizer, n_epochs=1, cpu_bf16=False)
    batch = collate([tokenize_example(tokenizer, messages, 1024) for messages in VALID], tokenizer.pad_token_id)

    with torch.no_grad():
        head_only, full = token_stats(result.model, batch), full_logits_token_stats(result.model, batch)
    assert head_only.loss_sum.item() == pytest.approx(full.loss_sum.item(), rel=1e-6)


def test_reports_token_accuracy_of_each_batch_and_of_the_held_out_set(make_model, tokenizer):
    reports, result = run(make_model, tokenizer, n_epochs=15, lora_r=16)

    assert all(0.0 <= r.train_mean_token_accuracy <= 1.0 for r in reports)
    assert [r.valid_mean_token_accuracy is not None for r in reports] == [False, True] * 15
    assert reports[-1].train_mean_token_accuracy > reports[0].train_mean_token_accuracy
    assert result.valid_mean_token_accuracy is not None


def test_keeps_the_best_epoch_when_validation_loss_rises(make_model, tokenizer):
    contradicted = [conversation("What is the capital of France?", "Hello! How are you?")]  # TRAIN says Paris
    epochs: list[EpochReport] = []
    result = train_lora(
        make_model(),
        tokenizer,
        TRAIN,
        contradicted,
        config(n_epochs=5, cpu_bf16=False),
        hooks=TrainingHooks(on_epoch_end=epochs.append),
    )

    assert (result.epochs_run, len(result.epoch_losses)) == (5, 5)
    assert result.best_epoch == best_epoch(result.epoch_losses) < 5  # it got worse later: an earlier adapter
    assert result.epoch_losses[-1] > result.valid_loss
    assert result.valid_loss == min(result.epoch_losses)
    held_out = [tokenize_example(tokenizer, messages, 1024) for messages in contradicted]
    loss, accuracy = evaluate(result.model, held_out, batch_size=2, pad_token_id=tokenizer.pad_token_id)
    assert loss == pytest.approx(result.valid_loss, abs=1e-6)
    assert accuracy == result.valid_mean_token_accuracy
    assert [e.epoch for e in epochs] == list(range(1, 6))
    assert [e.valid_loss for e in epochs] == result.epoch_losses
    losses = result.epoch_losses
    assert [e.is_best for e in epochs] == [best_epoch(losses[:epoch]) == epoch for epoch in range(1, 6)]


def test_without_validation_examples_the_last_epoch_is_kept(make_model, tokenizer):
    epochs: list[EpochReport] = []
    result = train_lora(make_model(), tokenizer, TRAIN, None, config(), hooks=TrainingHooks(on_epoch_end=epochs.append))

    assert (result.best_epoch, result.epochs_run, result.epoch_losses, result.valid_loss) == (None, 3, [], None)
    assert [(e.epoch, e.step, e.valid_loss, e.is_best) for e in epochs] == [
        (1, 2, None, True), (2, 4, None, True), (3, 6, None, True)
    ]  # fmt: skip


def test_bf16_on_cpu_stays_close_to_fp32_and_gives_the_model_back_as_it_was(make_model, tokenizer):
    model = make_model()
    attention, frozen = model.config._attn_implementation, {n: p.clone() for n, p in model.named_parameters()}
    bf16: list[StepReport] = []
    result = train_lora(model, tokenizer, TRAIN, VALID, config(cpu_bf16=True), hooks=TrainingHooks(on_step=bf16.append))
    fp32, _ = run(make_model, tokenizer, cpu_bf16=False)

    for low, full in zip(bf16, fp32, strict=True):
        assert low.train_loss == pytest.approx(full.train_loss, rel=0.05)
    base = result.model.get_base_model()
    assert base.config._attn_implementation == attention
    for name, param in base.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name.replace(".base_layer", "")]), name
