"""From a job's examples to the model it publishes and the report on it, with nothing but the model in memory:
the held-out split, a selection run that keeps its best epoch, a refit on every example where the split costs the
published model too much, and the report on a model the held-out examples never trained.

Why the refit: on a small set the held-out share is what the model misses most (180 support tickets: 10 % fewer
examples cost about 15 points of exact match). The selection run measures how many epochs the data wants; the
refit trains that many epochs on everything, and is published. The report measures the selection run's model, as
it is the one the held-out examples can judge honestly, and says so.

The job runner (`worker.job_runner`) and the benchmark against TRL (`bench.vs_trl`) both run this.
"""

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.scoring.settings import REFIT_MIN_HELD_OUT_SHARE, EvaluationSettings, Refit
from app.serving.answers import Stopped
from worker.job_evaluation import Announce, ReportInputs, report_on_fine_tune
from worker.training.data import batches_per_epoch, split_held_out
from worker.training.preference import PreferenceSettings
from worker.training.trainer import (
    StepReport,
    TrainingConfig,
    TrainingHooks,
    TrainingResult,
    save_adapter,
    train_lora,
    train_preference,
)

# The report's time as a share of the training's, for a job's estimated finish: issue 21's target, until bench.vs_trl
# has measured the real share (its report_seconds / training_seconds).
REPORT_SHARE_OF_TRAINING = 0.15

NO_HOOKS = TrainingHooks()
PublishedKind = Literal["refit", "best_epoch", "final_epoch"]


@dataclass(frozen=True)
class Split:
    training: list
    held_out: list
    given: bool  # the held-out examples are the job's validation file
    held_out_indices: tuple[int, ...] = ()  # without one: which of the training file's examples were held out

    @property
    def held_out_share(self) -> float:
        return len(self.held_out) / (len(self.training) + len(self.held_out))


def hold_out(examples: list, validation: list | None, seed: int) -> Split:
    """The validation file as the held-out set, exactly; without one, a seeded share of `examples`."""
    if validation is not None:
        return Split(examples, validation, given=True)
    train_indices, held_out_indices = split_held_out(len(examples), seed)
    training, held_out = [examples[i] for i in train_indices], [examples[i] for i in held_out_indices]
    return Split(training, held_out, given=False, held_out_indices=tuple(held_out_indices))


def refits(split: Split, asked: Refit) -> bool:
    """Whether the published model is trained again on every example once the epochs are chosen."""
    if not split.held_out or asked is False:
        return False
    return asked is True or split.held_out_share >= REFIT_MIN_HELD_OUT_SHARE


@dataclass(frozen=True)
class Publication:
    """Which model a job publishes, and why; the report and the job's events say it."""

    kind: PublishedKind
    epochs: int  # of training the published model had
    training_examples: int  # it trained on
    measured_examples: int  # the model the report measured trained on (the selection run's)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epochs": self.epochs,
            "training_examples": self.training_examples,
            "measured_model_training_examples": self.measured_examples,
            "reason": self.reason,
        }


def publication(selection: TrainingResult, split: Split, refit: bool) -> Publication:
    """The model a fine-tune publishes: the refit, or the selection run's best (or last) epoch."""
    kept = selection.best_epoch or selection.epochs_run
    trained, held, share = (
        len(split.training),
        len(split.held_out),
        f"{split.held_out_share:.0%}" if split.held_out else "",
    )
    if refit:
        which = "the validation file's" if split.given else "the held-out"
        reason = (
            f"epoch {kept} had the lowest validation loss, so the published model trained {kept} epoch(s) on all "
            f"{trained + held} examples, {which} {held} included ({share} of the data); the report measures the "
            f"model trained on the other {trained}, which never saw them"
        )
        return Publication("refit", kept, trained + held, trained, reason)
    if selection.best_epoch is not None and selection.best_epoch < selection.epochs_run:
        reason = f"validation loss was lowest at epoch {kept} of {selection.epochs_run}; that epoch's adapter is kept"
        return Publication("best_epoch", kept, trained, trained, reason)
    if not held:
        reason = "too few examples to hold any out: the last epoch's adapter, trained on every example"
    elif split.held_out_share < REFIT_MIN_HELD_OUT_SHARE:
        reason = (
            f"the last epoch had the lowest validation loss; the held-out examples are {share} of the data, too few "
            "for a second run on every example to pay for itself"
        )
    else:
        reason = "the last epoch had the lowest validation loss; refit was turned off"
    return Publication("final_epoch", kept, trained, trained, reason)


@dataclass(frozen=True)
class Method:
    """What a job trains: supervised on conversations (distillation included), or DPO on preference pairs."""

    preference: PreferenceSettings | None = None
    targets: str | None = None  # what the held-out answers are, when not the file's (a teacher's)


@dataclass(frozen=True)
class FineTuneOutcome:
    publication: Publication
    report: dict | None
    selection: TrainingResult
    trained_tokens: int  # every run's, refit included
    training_seconds: float  # the selection run and the refit
    report_seconds: float
    padding_share: float | None  # of the token positions the training runs computed; None after a resume


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    config: TrainingConfig,
    evaluation: EvaluationSettings,
    adapter_dir: Path,
    *,
    method: Method = Method(),
    hooks: TrainingHooks = NO_HOOKS,
    announce: Announce | None = None,
    checkpoint_name: Callable[[int], str] = lambda step: f"step-{step}",
    leaked_examples: int = 0,
) -> FineTuneOutcome:
    """Trains, refits where `refits` says so, saves the published adapter in `adapter_dir`, and reports on it;
    raises `Stopped` when `hooks.should_stop` says so. `model` is modified in place.

    `hooks.on_step` sees steps numbered over both runs, with a total that counts the refit's planned steps;
    `hooks.on_epoch_end` and `hooks.resume` are the selection run's only: a refit lost with its worker is run again
    from the selection run's last state. `checkpoint_name` names the model of a selection step's checkpoint.
    """
    say = announce or (lambda message, data=None, level="info": None)
    refit = refits(split, evaluation.refit)
    every = [*split.training, *split.held_out]
    planned_refit = batches_per_epoch(len(every), config.batch_size) * config.n_epochs if refit else 0
    started = time.monotonic()
    selection = _train(
        model, tokenizer, split.training, split.held_out, config, method, _numbered(hooks, 0, planned_refit)
    )
    if selection.stopped:
        raise Stopped
    _announce_best_epoch(selection, say)
    published = publication(selection, split, refit)
    say(f"Publishing: {published.reason}", {"published_model": published.kind, "epochs": published.epochs})
    with tempfile.TemporaryDirectory() as directory:
        measured = Path(directory) if refit else adapter_dir
        save_adapter(selection.model, measured)
        final, trained_tokens, computed = selection, selection.trained_tokens, selection.computed_positions
        if refit:
            refit_hooks = TrainingHooks(
                on_step=_numbered(hooks, selection.steps, 0).on_step, should_stop=hooks.should_stop,
                start_from=hooks.start_from,
            )  # fmt: skip
            refit_config = replace(config, n_epochs=published.epochs)
            final = _train(selection.model.unload(), tokenizer, every, [], refit_config, method, refit_hooks)
            if final.stopped:
                raise Stopped
            save_adapter(final.model, adapter_dir)
            trained_tokens += final.trained_tokens
            computed += final.computed_positions
        training_seconds = time.monotonic() - started
        inputs = ReportInputs(
            selection=selection, measured_dir=measured, held_out=split.held_out, config=config,
            leaked_examples=leaked_examples, checkpoint_name=checkpoint_name, targets=method.targets,
            preference=method.preference is not None,
        )  # fmt: skip
        report = report_on_fine_tune(final.model, tokenizer, inputs, evaluation, say)
    if report is not None:
        report["published_model"] = published.as_dict()
    return FineTuneOutcome(
        publication=published, report=report, selection=selection, trained_tokens=trained_tokens,
        training_seconds=training_seconds, report_seconds=time.monotonic() - started - training_seconds,
        padding_share=1 - trained_tokens / computed if computed and hooks.resume is None else None,
    )  # fmt: skip


def _announce_best_epoch(selection: TrainingResult, say: Announce) -> None:
    """Says so when a later epoch overfit and an earlier one is the best."""
    best = selection.best_epoch
    if best is None or best == selection.epochs_run:
        return
    losses = selection.epoch_losses
    message = (
        f"Validation loss rose from {losses[best - 1]:.4f} to {losses[-1]:.4f} after epoch {best}; "
        f"epoch {best} is the best"
    )
    say(message, {"best_epoch": best, "valid_losses": losses})


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    training: Sequence,
    held_out: Sequence,
    config: TrainingConfig,
    method: Method,
    hooks: TrainingHooks,
) -> TrainingResult:
    if method.preference is None:
        return train_lora(model, tokenizer, list(training), list(held_out), config, hooks=hooks)
    return train_preference(model, tokenizer, list(training), list(held_out), config, method.preference, hooks=hooks)


def _numbered(hooks: TrainingHooks, steps_before: int, steps_after: int) -> TrainingHooks:
    """`hooks` whose `on_step` sees the job's step numbers: a run's own, after `steps_before` of an earlier run, out
    of a total that counts `steps_after` planned for a later one."""
    on_step = hooks.on_step
    if on_step is None:
        return hooks

    def numbered(report: StepReport) -> None:
        on_step(
            replace(
                report, step=report.step + steps_before, total_steps=report.total_steps + steps_before + steps_after
            )
        )

    return replace(hooks, on_step=numbered)
