"""`worker.fine_tune`: which model a fine-tune publishes (the refit, the best epoch or the last one), and that the
report still measures a model the held-out examples never trained."""

from pathlib import Path

import pytest
from peft import PeftModel

from app.ml.scoring.settings import REFIT_MIN_HELD_OUT_SHARE, EvaluationSettings
from tests.helpers.tiny_models import conversation
from worker.fine_tune import Split, fine_tune, hold_out, refits
from worker.training import StepReport, TrainingConfig, TrainingHooks, train_lora
from worker.training.trainer import held_out_metrics

EXAMPLES = [conversation(f"What is {a} plus {b}?", f"{a + b}") for a in range(4) for b in range(5)]


def config(**overrides) -> TrainingConfig:
    """fp32 on every CPU: with native bf16 the training run's held-out loss would round differently from the
    report's, and these tests compare the two to tell which model was measured."""
    settings = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "seed": 3, "precision": "fp32"}
    return TrainingConfig(**(settings | overrides))


def split(training: int, held_out: int, given: bool = False) -> Split:
    return Split(EXAMPLES[:training], EXAMPLES[training : training + held_out], given=given)


@pytest.mark.parametrize(
    ("training", "held_out", "asked", "refit"),
    [
        (18, 2, "auto", True),  # 10 %: the split costs the model examples
        (95, 5, "auto", False),  # 5 %, under the share
        (18, 2, False, False),
        (95, 5, True, True),
        (20, 0, True, False),  # nothing held out: the selection run trained on everything already
    ],
)
def test_refits_where_the_held_out_share_costs_the_model(training, held_out, asked, refit):
    examples = EXAMPLES * 5
    chosen = Split(examples[:training], examples[training : training + held_out], given=False)

    assert refits(chosen, asked) is refit
    assert (held_out / (training + held_out) >= REFIT_MIN_HELD_OUT_SHARE) is (training == 18)


def test_a_validation_file_is_the_held_out_set_exactly():
    validation = [conversation("What is 9 plus 9?", "18")]

    chosen = hold_out(EXAMPLES, validation, seed=0)

    assert (chosen.training, chosen.held_out, chosen.given) == (EXAMPLES, validation, True)


def test_without_one_a_seeded_share_is_held_out_and_named():
    chosen = hold_out(EXAMPLES, None, seed=0)

    assert len(chosen.held_out) == 2 and not chosen.given
    assert [EXAMPLES[i] for i in chosen.held_out_indices] == chosen.held_out
    assert sorted(map(str, chosen.training + chosen.held_out)) == sorted(map(str, EXAMPLES))


def _fine_tune(make_model, tokenizer, tmp_path: Path, chosen: Split, refit: bool | str, **overrides):
    steps: list[StepReport] = []
    events: list[str] = []
    outcome = fine_tune(
        make_model(), tokenizer, chosen, config(**overrides), EvaluationSettings(max_tokens=4, refit=refit),
        tmp_path / "adapter", hooks=TrainingHooks(on_step=steps.append),
        announce=lambda message, data=None, level="info": events.append(message),
    )  # fmt: skip
    return outcome, steps, events


def test_a_refit_trains_the_kept_epochs_on_every_example_and_is_published(make_model, tokenizer, tmp_path):
    chosen = split(16, 4)

    outcome, steps, events = _fine_tune(make_model, tokenizer, tmp_path, chosen, True)

    kept = outcome.selection.best_epoch
    assert outcome.publication.kind == "refit" and outcome.publication.epochs == kept
    assert outcome.publication.training_examples == 20
    # steps numbered over both runs: the selection's 2 epochs of 4 batches, then the kept epochs of 5
    assert [report.step for report in steps] == list(range(1, 8 + 5 * kept + 1))
    assert steps[-1].total_steps == 8 + 5 * kept
    assert all(report.total_steps == 8 + 5 * 2 for report in steps[:8])  # planned: every epoch of the refit
    assert outcome.trained_tokens > outcome.selection.trained_tokens
    assert any(message.startswith("Publishing: epoch") for message in events)
    assert outcome.report is not None and outcome.report["published_model"]["kind"] == "refit"
    assert outcome.report["held_out_examples"] == 4


def test_the_report_measures_the_model_that_never_saw_the_held_out_examples(make_model, tokenizer, tmp_path):
    chosen = split(16, 4)
    outcome, _, _ = _fine_tune(make_model, tokenizer, tmp_path, chosen, True, n_epochs=3)
    alone = train_lora(make_model(), tokenizer, chosen.training, chosen.held_out, config(n_epochs=3)).model
    published = PeftModel.from_pretrained(make_model(), tmp_path / "adapter")

    never_saw = held_out_metrics(alone, tokenizer, chosen.held_out, config())
    saw = held_out_metrics(published, tokenizer, chosen.held_out, config())

    assert outcome.report is not None and never_saw is not None and saw is not None
    assert outcome.report["fine_tuned_model"]["loss"] == pytest.approx(never_saw[0], abs=1e-4)
    assert saw[0] < never_saw[0]  # the published model trained on them: its loss on them would flatter it


def test_without_a_refit_the_best_epoch_is_published_and_measured(make_model, tokenizer, tmp_path):
    chosen = split(16, 4)

    outcome, steps, _ = _fine_tune(make_model, tokenizer, tmp_path, chosen, False)
    alone = train_lora(make_model(), tokenizer, chosen.training, chosen.held_out, config()).model
    published = PeftModel.from_pretrained(make_model(), tmp_path / "adapter")

    assert outcome.publication.kind in ("best_epoch", "final_epoch")
    assert outcome.trained_tokens == outcome.selection.trained_tokens
    assert len(steps) == 8 and steps[-1].total_steps == 8
    assert held_out_metrics(published, tokenizer, chosen.held_out, config()) == pytest.approx(
        held_out_metrics(alone, tokenizer, chosen.held_out, config())
    )
    assert outcome.report is not None
    assert outcome.report["fine_tuned_model"]["loss"] == pytest.approx(outcome.selection.valid_loss, abs=1e-4)
