"""A job's training curves from its metrics events: loss, and the accuracy its method measures (token accuracy
for supervised and distillation jobs, reward accuracy for DPO), each for training and validation."""

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from app.api.dashboard.charts import Series, line_chart

_ACCURACY_NAMES = {"mean_token_accuracy": "token accuracy", "reward_accuracy": "reward accuracy"}


@dataclass(frozen=True)
class Curve:
    title: str
    chart: Markup
    series: Sequence[Series]  # the same numbers, for the table beside the chart


def job_curves(metrics: Sequence[dict]) -> list[Curve]:
    """The loss chart, then one accuracy chart per accuracy the events carry."""
    curves = [_curve("loss", "loss", metrics)]
    for key, words in _ACCURACY_NAMES.items():
        if any(f"train_{key}" in data or f"valid_{key}" in data for data in metrics):
            curves.append(_curve(key, words, metrics))
    return curves


def _curve(key: str, words: str, metrics: Sequence[dict]) -> Curve:
    series = [
        Series(f"{side} {words}", [(data["step"], data[name]) for data in metrics if data.get(name) is not None], kind)
        for side, kind, name in (("train", "train", f"train_{key}"), ("validation", "valid", f"valid_{key}"))
    ]
    title = f"{words[0].upper()}{words[1:]} by step"
    return Curve(title, line_chart(f"chart-{key.replace('_', '-')}", title, series), [s for s in series if s.points])
