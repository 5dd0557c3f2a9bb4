"""The evaluation report at the end of a fine-tune: measured on the held-out examples (or pairs), announced in
events, and never a reason to lose the trained model.

Only the base model and the measured model answer the held-out prompts; the other epochs' checkpoints are shown
by their teacher-forced held-out loss and token accuracy, which the selection run measured as it went.
"""

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import structlog
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.core.metrics import EVALUATION_SECONDS
from app.ml.scoring.report import Losses
from app.ml.scoring.settings import EvaluationSettings
from worker.datasets import PreferenceExample
from worker.held_out import evaluate_fine_tune, evaluate_preference_tune
from worker.training.trainer import TrainingConfig, TrainingResult, save_adapter

log = structlog.get_logger()
CHECKPOINTS_SHOWN = 3  # besides the kept epoch: the latest epochs, as many as OpenAI keeps checkpoints of


class Announce(Protocol):
    """Writes one of the job's events."""

    def __call__(self, message: str, data: dict | None = None, level: str = "info") -> None: ...


@dataclass(frozen=True)
class ReportInputs:
    """What the report measures: the selection run, the held-out examples it never trained on, and where the
    measured model's adapter is when it is not the published one (a refit)."""

    selection: TrainingResult
    measured_dir: Path | None  # None: the published model is the measured one
    held_out: Sequence[list[dict]] | Sequence[PreferenceExample]
    config: TrainingConfig
    leaked_examples: int
    checkpoint_name: Callable[[int], str]  # the model id of the selection run's checkpoint at a step
    targets: str | None = None  # what the held-out answers are, when not the file's (a teacher's)
    preference: bool = False  # `held_out` holds preference pairs (DPO)


def report_on_fine_tune(
    published: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: ReportInputs,
    options: EvaluationSettings,
    announce: Announce,
) -> dict | None:
    """The evaluation report, with events before and after; None when there is nothing to evaluate. `published`
    loses its adapter. A failed evaluation is reported, and the trained model is published without it."""
    if options.max_examples == 0 or not inputs.held_out:
        return None
    count = min(options.max_examples, len(inputs.held_out))
    kind = "preference pairs" if inputs.preference else "examples"
    announce(
        f"Evaluating the base model and the fine-tuned model on {count} held-out {kind}", {"held_out_examples": count}
    )
    try:
        with EVALUATION_SECONDS.labels("job").time():
            report = _measured(published, tokenizer, inputs, options)
    except Exception as error:
        log.exception("jobs.evaluation.failed")
        announce(f"The evaluation failed ({error}); the model is published without it", None, "warn")
        return None
    if report is None:
        announce("No held-out example has an answer to evaluate")
        return None
    announce(
        f"Evaluation: {report['verdict']}", {"warnings": report["warnings"]}, "warn" if report["warnings"] else "info"
    )
    return report


def _measured(
    published: PeftModel, tokenizer: PreTrainedTokenizerBase, inputs: ReportInputs, options: EvaluationSettings
) -> dict | None:
    selection = inputs.selection
    losses = Losses(selection.epoch_train_losses, selection.epoch_losses, selection.best_epoch)
    if inputs.preference:
        pairs = cast(Sequence[PreferenceExample], inputs.held_out)
        measured = published
        if inputs.measured_dir is not None:
            measured = PeftModel.from_pretrained(published.unload(), inputs.measured_dir)
        return evaluate_preference_tune(
            measured, tokenizer, pairs, inputs.config, options, losses, inputs.leaked_examples
        )
    conversations = cast(Sequence[list[dict]], inputs.held_out)
    with tempfile.TemporaryDirectory() as directory:
        adapter_dir = inputs.measured_dir
        if adapter_dir is None:
            adapter_dir = Path(directory)
            save_adapter(published, adapter_dir)
        report = evaluate_fine_tune(
            published, tokenizer, adapter_dir, conversations, inputs.config, options, losses, inputs.leaked_examples
        )
    if report is None:
        return None
    report["checkpoints"] = _checkpoints(inputs, len(conversations)) if options.checkpoints else []
    if inputs.targets is not None:
        report["targets"] = inputs.targets
    return report


def _checkpoints(inputs: ReportInputs, examples: int) -> list[dict[str, Any]]:
    """The latest epochs besides the kept one, by the teacher-forced held-out metrics measured at their end."""
    selection = inputs.selection
    kept = selection.best_epoch or selection.epochs_run
    epochs = [epoch for epoch in range(selection.epochs_run, 0, -1) if epoch != kept][:CHECKPOINTS_SHOWN]
    return [
        {
            "model": inputs.checkpoint_name(epoch * selection.steps_per_epoch),
            "epoch": epoch,
            "examples": examples,
            "loss": selection.epoch_losses[epoch - 1],
            "token_accuracy": selection.epoch_accuracies[epoch - 1],
        }
        for epoch in epochs
        if epoch <= len(selection.epoch_losses)
    ]
