"""The evaluation report of a fine-tune: held-out answers of the base model and of the fine-tuned one, scored side
by side, with a verdict in plain words and the warnings a user should not miss."""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from app.ml.scoring.measures import AnswerScore, Summary, score_answer, summarize, wilson_interval, worst

TOO_UNCERTAIN = 0.3  # a 95 % interval of the exact-match rate wider than this is called out
WORST_SHOWN = 5


class ReportWarning(TypedDict):
    code: str
    message: str


class PreferenceSummary(TypedDict):
    preference_accuracy: float  # share of held-out pairs whose chosen answer the model finds the likelier one
    interval: tuple[float, float]  # its 95 % Wilson interval
    mean_margin: float


@dataclass(frozen=True)
class HeldOutExample:
    prompt: list[dict[str, Any]]  # the conversation up to the answer
    target: str  # the answer the example holds


def held_out_examples(conversations: Iterable[list[dict[str, Any]]], max_examples: int) -> list[HeldOutExample]:
    """At most `max_examples` held-out examples: each conversation's last assistant turn is the target, the turns
    before it the prompt. Conversations without an assistant turn after some other turn are skipped."""
    examples: list[HeldOutExample] = []
    for messages in conversations:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if last == 0 or not isinstance(messages[last].get("content"), str):
            continue
        examples.append(HeldOutExample(messages[:last], messages[last]["content"]))
        if len(examples) == max_examples:
            break
    return examples


@dataclass(frozen=True)
class Losses:
    """Per finished epoch: the mean training loss and the validation loss; and the epoch kept as the model."""

    train: list[float]
    valid: list[float]
    kept_epoch: int | None


@dataclass(frozen=True)
class Sides:
    """How the report names the two models it compares: keys of their summaries and answers, words in the text."""

    baseline_key: str
    candidate_key: str
    baseline_answer: str
    candidate_answer: str
    baseline_word: str
    candidate_word: str


FINE_TUNE = Sides("base_model", "fine_tuned_model", "base_answer", "fine_tuned_answer", "base", "fine-tuned")


@dataclass(frozen=True)
class TokenMetrics:
    """Teacher-forced on the held-out examples: loss per answer token, and the share of them predicted exactly."""

    loss: float
    token_accuracy: float


def evaluation_report(
    examples: Sequence[HeldOutExample],
    base_answers: Sequence[str],
    tuned_answers: Sequence[str],
    losses: Losses | None = None,
    leaked_examples: int = 0,
    token_metrics: tuple[TokenMetrics | None, TokenMetrics | None] = (None, None),
    sides: Sides = FINE_TUNE,
) -> dict[str, Any]:
    """The report as the API returns it and the results file holds it; answers and `token_metrics` of the base
    model (the baseline) and of the fine-tuned one (the candidate)."""
    if not examples:
        raise ValueError("no held-out examples to evaluate on")
    base_scores = [score_answer(a, e.target) for a, e in zip(base_answers, examples, strict=True)]
    tuned_scores = [score_answer(a, e.target) for a, e in zip(tuned_answers, examples, strict=True)]
    base, tuned = summarize(base_scores), summarize(tuned_scores)
    base_metrics, tuned_metrics = token_metrics
    return {
        "held_out_examples": len(examples),
        sides.baseline_key: asdict(base) | _token_fields(base_metrics),
        sides.candidate_key: asdict(tuned) | _token_fields(tuned_metrics),
        "verdict": verdict(base, tuned, losses, sides),
        "warnings": warnings(tuned, losses, leaked_examples, sides),
        "worst_examples": [
            _side_by_side(examples[i], base_answers[i], tuned_answers[i], tuned_scores[i], sides)
            for i in worst(tuned_scores, WORST_SHOWN)
            if not tuned_scores[i].exact
        ],
    }


def verdict(base: Summary, tuned: Summary, losses: Losses | None, sides: Sides = FINE_TUNE) -> str:
    """E.g. "fine-tuned: 92 % exact (base: 0 %); format kept in 100 % of answers; fields right: 97 % (base: 31 %);
    validation loss lowest at epoch 2 of 3 (kept)"."""
    other = sides.baseline_word
    parts = [f"{sides.candidate_word}: {_percent(tuned.exact)} exact ({other}: {_percent(base.exact)})"]
    if tuned.format_kept is not None:
        parts.append(f"format kept in {_percent(tuned.format_kept)} of answers ({other}: {_percent(base.format_kept)})")
    if tuned.field_accuracy is not None:
        parts.append(f"fields right: {_percent(tuned.field_accuracy)} ({other}: {_percent(base.field_accuracy)})")
    if tuned.format_kept is None:
        parts.append(f"chrF {tuned.chrf:.0f} ({other}: {base.chrf:.0f})")
    parts += _epochs_part(losses)
    return "; ".join(parts)


def _epochs_part(losses: Losses | None) -> list[str]:
    if not (losses and losses.valid and losses.kept_epoch):
        return []
    lowest = 1 + min(range(len(losses.valid)), key=losses.valid.__getitem__)
    kept = " (kept)" if lowest == losses.kept_epoch else f"; epoch {losses.kept_epoch} kept"
    return [f"validation loss lowest at epoch {lowest} of {len(losses.valid)}{kept}"]


def warnings(
    tuned: Summary, losses: Losses | None, leaked_examples: int, sides: Sides = FINE_TUNE
) -> list[ReportWarning]:
    measured = f"the {sides.candidate_word} model's {_percent(tuned.exact)} exact"
    return _warnings(tuned.examples, tuned.exact_interval, measured, losses, leaked_examples)


def _warnings(
    examples: int, interval: tuple[float, float], measured: str, losses: Losses | None, leaked_examples: int
) -> list[ReportWarning]:
    found: list[ReportWarning] = []
    low, high = interval
    if high - low > TOO_UNCERTAIN:
        found.append({
            "code": "small_held_out_set",
            "message": (
                f"Only {examples} held-out examples: {measured} could be anywhere from {_percent(low)} to "
                f"{_percent(high)} (95 % interval); hold out more"
            ),
        })  # fmt: skip
    if losses and _overfitting(losses):
        found.append({
            "code": "overfitting",
            "message": (
                f"Validation loss rose from {min(losses.valid):.4f} to {losses.valid[-1]:.4f} while the training "
                f"loss fell to {losses.train[-1]:.4f}: the model memorises its training examples"
                + (f"; epoch {losses.kept_epoch} is kept" if losses.kept_epoch else "")
            ),
        })  # fmt: skip
    if leaked_examples:
        found.append({
            "code": "validation_leakage",
            "message": (
                f"{leaked_examples} held-out example(s) also appear in the training file: the scores above "
                "flatter the model"
            ),
        })  # fmt: skip
    return found


def preference_report(
    base_margins: Sequence[float],
    tuned_margins: Sequence[float],
    losses: Losses | None = None,
    leaked_examples: int = 0,
) -> dict[str, Any]:
    """The report of a preference (DPO) job. A margin is how much more likely a model finds a pair's chosen answer
    than its rejected one (mean log-probability per answer token, chosen minus rejected); a pair is won when it is
    positive. Both models are measured alike, so the base model's share shows where training started."""
    if not tuned_margins:
        raise ValueError("no held-out pairs to evaluate on")
    base, tuned = _preference_summary(base_margins), _preference_summary(tuned_margins)
    accuracy = _percent(tuned["preference_accuracy"])
    parts = [
        f"fine-tuned prefers the chosen answer in {accuracy} of held-out pairs "
        f"(base: {_percent(base['preference_accuracy'])})",
        *_epochs_part(losses),
    ]
    measured = f"the fine-tuned model's {accuracy} preference accuracy"
    return {
        "method": "dpo",
        "held_out_pairs": len(tuned_margins),
        "base_model": base,
        "fine_tuned_model": tuned,
        "verdict": "; ".join(parts),
        "warnings": _warnings(len(tuned_margins), tuned["interval"], measured, losses, leaked_examples),
    }


def _preference_summary(margins: Sequence[float]) -> PreferenceSummary:
    won = sum(margin > 0 for margin in margins)
    return {
        "preference_accuracy": won / len(margins),
        "interval": wilson_interval(won, len(margins)),
        "mean_margin": round(sum(margins) / len(margins), 4),
    }


def _overfitting(losses: Losses) -> bool:
    """The validation loss ended above its lowest point while the training loss kept falling past it."""
    if len(losses.valid) < 2 or len(losses.train) != len(losses.valid):
        return False
    best = min(range(len(losses.valid)), key=losses.valid.__getitem__)
    return best < len(losses.valid) - 1 and losses.train[-1] < losses.train[best]


def _token_fields(metrics: TokenMetrics | None) -> dict[str, float | None]:
    if metrics is None:
        return {"loss": None, "token_accuracy": None}
    return {"loss": round(metrics.loss, 4), "token_accuracy": round(metrics.token_accuracy, 4)}


def _side_by_side(
    example: HeldOutExample, base_answer: str, tuned_answer: str, score: AnswerScore, sides: Sides
) -> dict[str, Any]:
    return {
        "prompt": example.prompt,
        "target": example.target,
        sides.baseline_answer: base_answer,
        sides.candidate_answer: tuned_answer,
        "field_accuracy": score.field_accuracy,
        "chrf": round(score.chrf, 1),
    }


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f} %"
