"""The evaluation scorers on crafted answers whose right scores are known by hand."""

import pytest

from app.ml.scoring.measures import AnswerScore, score_answer, summarize, target_shape, wilson_interval, worst

TICKET = "category: how-to\npriority: low\nteam: support"


def test_the_target_decides_what_is_measured():
    assert target_shape(TICKET) == "fields"
    assert target_shape('{"name": "Ada", "age": 36}') == "json"
    assert target_shape("Paris is the capital of France.") == "text"
    assert target_shape("Note: a single line is a sentence, not a record") == "text"
    assert target_shape("[1, 2]") == "text"  # a JSON list has no keys to score


def test_key_value_answers_are_scored_field_by_field():
    exact = score_answer(TICKET + "\n", TICKET)
    one_wrong = score_answer("category: how-to\npriority: high\nteam: support", TICKET)
    reordered = score_answer("team: support\ncategory: how-to\npriority: low", TICKET)
    prose = score_answer("This is a how-to question for the support team.", TICKET)

    assert (exact.exact, exact.format_kept, exact.fields_right, exact.fields) == (True, True, 3, 3)
    assert (one_wrong.exact, one_wrong.format_kept, one_wrong.fields_right) == (False, True, 2)
    assert (reordered.exact, reordered.format_kept, reordered.fields_right) == (False, False, 3)  # order is format
    assert (prose.format_kept, prose.fields_right) == (False, 0)
    assert exact.chrf == pytest.approx(100) and one_wrong.chrf < 100 and prose.chrf < one_wrong.chrf


def test_json_answers_are_parsed_not_compared_as_text():
    target = '{"name": "Ada", "age": 36, "city": "London"}'
    spaced = score_answer('{ "age": 36,\n  "name": "Ada", "city": "London" }', target)
    one_wrong = score_answer('{"name": "Ada", "age": 37, "city": "London"}', target)
    extra_key = score_answer('{"name": "Ada", "age": 36, "city": "London", "note": "x"}', target)
    broken = score_answer('{"name": "Ada", "age": 36', target)

    assert (spaced.exact, spaced.format_kept, spaced.fields_right) == (True, True, 3)
    assert (one_wrong.exact, one_wrong.format_kept, one_wrong.field_accuracy) == (False, True, pytest.approx(2 / 3))
    assert (extra_key.exact, extra_key.format_kept, extra_key.fields_right) == (False, False, 3)
    assert (broken.exact, broken.format_kept, broken.fields_right) == (False, False, 0)


def test_a_target_nested_past_the_parser_s_recursion_is_scored_as_text():
    """A dataset line can hold such a target inside a string: its depth check sees only the line's own nesting."""
    deep = "[" * 100_000 + "]" * 100_000
    assert target_shape(deep) == "text"
    assert score_answer(deep, deep).exact


def test_plain_text_gets_overlap_and_length_only():
    score = score_answer("Paris", "Paris, France")
    assert (score.exact, score.format_kept, score.fields, score.field_accuracy) == (False, None, 0, None)
    assert score.length_ratio == pytest.approx(5 / 13)
    assert 0 < score.chrf < 100


def test_a_summary_pools_fields_and_gives_the_uncertainty_of_a_small_set():
    scores = [
        score_answer(TICKET, TICKET),
        score_answer("category: how-to\npriority: high\nteam: support", TICKET),
        score_answer("no idea", TICKET),
        score_answer("Paris", "Paris"),
    ]

    summary = summarize(scores)

    assert summary.examples == 4 and summary.exact == 0.5
    assert summary.format_kept == pytest.approx(2 / 3)  # of the three structured targets
    assert summary.field_accuracy == pytest.approx(5 / 9)  # 3 + 2 + 0 of 9 fields
    low, high = summary.exact_interval
    assert low < 0.2 and high > 0.8  # four examples say almost nothing


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_worst_answers_come_first():
    scores = [
        AnswerScore(True, True, 3, 3, 100.0, 1.0),
        AnswerScore(False, True, 2, 3, 80.0, 1.0),
        AnswerScore(False, False, 0, 3, 10.0, 0.5),
        AnswerScore(False, True, 2, 3, 60.0, 1.0),
    ]
    assert worst(scores, 3) == [2, 3, 1]
