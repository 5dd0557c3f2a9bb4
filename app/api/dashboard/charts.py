"""Line charts drawn on the server as SVG: they show without JavaScript and need no chart library; the live job
page only swaps them for newer ones."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 36  # margins around the plot area, in SVG units
MAX_POINTS = 400  # a polyline of more points draws no better at this width; long jobs are thinned


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (step, value), steps ascending
    kind: str  # "train" or "valid": the stylesheet's colour and dash


def line_chart(chart_id: str, title: str, series: Sequence[Series]) -> Markup:
    """An accessible SVG chart: `<title>` and `<desc>` say what the lines show; each series is a polyline."""
    drawn = [s for s in series if s.points]
    head = (
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(_description(drawn))}</desc>'
    )
    if not drawn:
        body = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="empty">No metrics yet</text>'
        return Markup(head + body + "</svg>")
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x_ticks, y_ticks = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
    scale = _Scale(x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1])
    parts = [head, _axes(scale, x_ticks, y_ticks)]
    for s in drawn:
        points = " ".join(f"{scale.x(x):.1f},{scale.y(y):.1f}" for x, y in _thinned(s.points))
        parts.append(f'<polyline class="line {escape(s.kind)}" points="{points}"><title>{escape(s.name)}</title>')
        parts.append("</polyline>")
        if len(s.points) <= 40:  # sparse series (validation) read better with their points marked
            parts += [
                f'<circle class="dot {s.kind}" cx="{scale.x(x):.1f}" cy="{scale.y(y):.1f}" r="3"/>' for x, y in s.points
            ]
    parts.append(_legend(drawn))
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class _Scale:
    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def x(self, value: float) -> float:
        return LEFT + (value - self.x_low) / (self.x_high - self.x_low) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - (value - self.y_low) / (self.y_high - self.y_low) * (HEIGHT - TOP - BOTTOM)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering low..high."""
    if high - low < 1e-12:
        low, high = low - max(abs(low) * 0.1, 0.5), high + max(abs(high) * 0.1, 0.5)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start, end = math.floor(low / step), math.ceil(high / step)
    return [round(i * step, 10) for i in range(start, end + 1)]


def _axes(scale: _Scale, x_ticks: list[float], y_ticks: list[float]) -> str:
    bottom, left = HEIGHT - BOTTOM, LEFT
    parts = ['<g class="axes" aria-hidden="true">']
    for value in y_ticks:
        y = scale.y(value)
        parts.append(f'<line class="grid" x1="{left}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    for value in x_ticks:
        x = scale.x(value)
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{value:g}</text>')
    parts.append(f'<text x="{(left + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">step</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}"/></g>')
    return "".join(parts)


def _legend(series: Sequence[Series]) -> str:
    parts = ['<g class="legend" aria-hidden="true">']
    for index, s in enumerate(series):
        x = LEFT + index * 170
        parts.append(f'<line class="line {escape(s.kind)}" x1="{x}" x2="{x + 24}" y1="12" y2="12"/>')
        parts.append(f'<text x="{x + 30}" y="16">{escape(s.name)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _thinned(points: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    every = math.ceil(len(points) / MAX_POINTS)
    return [*points[::every], points[-1]]


def _description(series: Sequence[Series]) -> str:
    if not series:
        return "No metrics have been recorded yet."
    return "; ".join(
        f"{s.name} from {s.points[0][1]:.4g} at step {s.points[0][0]:g} to {s.points[-1][1]:.4g} at step "
        f"{s.points[-1][0]:g}"
        for s in series
    )
