"""The dashboard's server-side drawing and formatting: chart scales, thinning, empty charts, report values."""

import re
from datetime import UTC, datetime, timedelta

from app.api.dashboard.charts import MAX_POINTS, RIGHT, WIDTH, Series, _ticks, line_chart
from app.api.dashboard.formats import age, measure, prompt_text


def test_ticks_are_round_and_cover_the_values() -> None:
    assert _ticks(0.37, 2.91) == [0.0, 1.0, 2.0, 3.0]
    assert _ticks(0.41, 0.86) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert _ticks(1, 10) == [0, 2, 4, 6, 8, 10]
    flat = _ticks(0.5, 0.5)  # one value: still a visible range around it
    assert flat[0] < 0.5 < flat[-1]


def test_a_long_series_is_thinned_but_keeps_its_last_point() -> None:
    points = [(float(step), 1.0 / step) for step in range(1, 5001)]

    chart = line_chart("c", "Loss", [Series("train loss", points, "train")])

    drawn = re.search(r'class="line train" points="([^"]+)"', chart).group(1).split()
    assert len(drawn) <= MAX_POINTS + 1 and drawn[-1].startswith(f"{WIDTH - RIGHT:.1f},")  # step 5000, at the edge
    assert "to 0.0002 at step 5000" in chart  # the description names the true last point


def test_a_chart_without_points_says_so_and_escapes_its_title() -> None:
    chart = line_chart("c", "<Loss>", [Series("train loss", [], "train")])

    assert "No metrics yet" in chart and "<Loss>" not in chart and "&lt;Loss&gt;" in chart


def test_report_values_read_as_people_read_them() -> None:
    assert measure(0.923, "exact") == "92 %" and measure(1.7162, "loss") == "1.716" and measure(None, "exact") == "–"
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "Ticket: hi"}]) == "Ticket: hi"
    assert age(datetime.now(UTC) - timedelta(minutes=5, seconds=3)) == "5 min ago"
    assert age(int((datetime.now(UTC) - timedelta(days=2)).timestamp())) == "2 d ago"
