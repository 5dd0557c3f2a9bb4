"""The data report on crafted files: duplicates, conflicts, answer shape, short answers, leakage and tokens."""

import json

from transformers import PreTrainedTokenizerFast

from app.ml.datasets import DatasetProfiler, DatasetValidator, Example, leakage
from app.ml.datasets.report import CONFLICT_ANSWERS, GROUP_LINES
from app.ml.datasets.tokens import token_stats


def chat(question: str, answer: str, line: int, system: str | None = None) -> Example:
    messages = [{"role": "system", "content": system}] if system else []
    return Example(line, "chat", [*messages, {"role": "user", "content": question}], [answer])


def profile(*pairs: tuple[str, str]) -> DatasetProfiler:
    """A profiler fed chat examples numbered from line 1."""
    profiler = DatasetProfiler()
    for line, (question, answer) in enumerate(pairs, start=1):
        profiler.add(chat(question, answer, line))
    return profiler


def codes(report: dict) -> list[str]:
    return [warning["code"] for warning in report["warnings"]]


def distinct(count: int) -> list[tuple[str, str]]:
    return [(f"Question number {i}?", f"Answer number {i}.") for i in range(count)]


def test_a_clean_file_has_no_warnings_beyond_its_size() -> None:
    report = profile(*distinct(60)).report()
    assert report["counts"] == {
        "examples": 60,
        "messages": 120,
        "characters": sum(len(q) + len(a) for q, a in distinct(60)),
    }
    assert report["duplicates"] == {"group_count": 0, "groups": [], "group_sizes": []}
    assert report["conflicts"] == {"group_count": 0, "groups": []}
    assert report["shape"] is None
    assert report["warnings"] == []
    json.dumps(report)


def test_fewer_than_50_examples_is_a_warning() -> None:
    report = profile(*distinct(49)).report()
    assert codes(report) == ["few_examples"]


def test_duplicates_include_near_duplicates_differing_in_whitespace_or_case() -> None:
    pairs = distinct(60)
    pairs[9] = pairs[2]
    pairs[19] = ("  QUESTION number 2? ", "answer\tnumber 2.")
    pairs[29] = ("Question number 2?", "A different answer.")  # same input, other answer: a conflict, not a duplicate
    report = profile(*pairs).report()
    assert report["duplicates"]["groups"] == [[3, 10, 20]]
    assert report["conflicts"]["groups"] == [
        {"lines": [3, 10, 20, 30], "line_count": 4, "answers": [[3, 10, 20], [30]], "answer_count": 2}
    ]
    assert codes(report) == ["duplicate_examples", "conflicting_targets"]
    assert "on lines 3, 10, 20, 30" in report["warnings"][1]["message"]


def test_one_prompt_with_100k_answers_gives_a_report_of_a_few_kilobytes() -> None:
    """Audit #8: the groups were capped in number, not in size, so this report held every line (6.5 MB at 400k)."""
    profiler = DatasetProfiler()
    for line in range(1, 100_001):
        profiler.add(chat("The one prompt", f"answer {line % 50_000}", line))  # 50k answers, each twice
    report = profiler.report()
    size = len(json.dumps(report))
    assert size < 20_000, size
    conflict = report["conflicts"]["groups"][0]
    assert conflict["line_count"] == 100_000 and conflict["answer_count"] == 50_000
    assert len(conflict["lines"]) == GROUP_LINES and len(conflict["answers"]) == CONFLICT_ANSWERS
    assert report["duplicates"]["group_count"] == 50_000 and report["duplicates"]["group_sizes"][0] == 2
    message = next(w["message"] for w in report["warnings"] if w["code"] == "conflicting_targets")
    assert "and 99990 more" in message


def test_conflicts_compare_the_whole_input_before_the_answer() -> None:
    profiler = DatasetProfiler()
    profiler.add(chat("Classify: refund please", "billing", 1, system="Triage"))
    profiler.add(chat("classify:  REFUND please", "shipping", 2, system="triage"))
    profiler.add(chat("Classify: refund please", "spam", 3, system="Another system prompt"))
    assert profiler.report()["conflicts"]["groups"] == [
        {"lines": [1, 2], "line_count": 2, "answers": [[1], [2]], "answer_count": 2}
    ]


def test_several_preference_pairs_for_one_prompt_are_not_conflicts() -> None:
    profiler = DatasetProfiler()
    prompt = [{"role": "user", "content": "Hi"}]
    profiler.add(Example(1, "preference", prompt, ["Hello"], "Go away"))
    profiler.add(Example(2, "preference", prompt, ["Hi there"], "Go away"))
    profiler.add(Example(3, "preference", prompt, ["Hello"], "Go away"))
    report = profiler.report()
    assert report["conflicts"]["groups"] == []
    assert report["duplicates"]["groups"] == [[1, 3]]
    assert report["counts"]["messages"] == 9


def test_json_answers_that_break_the_common_keys_are_listed() -> None:
    answers = [json.dumps({"category": "billing", "priority": i}) for i in range(10)]
    answers[3] = json.dumps({"category": "billing"})
    answers[6] = "It is a billing question."
    answers[8] = '{"category": "billing", "priority": 1'  # broken JSON
    report = profile(*[(f"ticket {i}", answer) for i, answer in enumerate(answers)]).report()
    assert report["shape"] == {
        "kind": "json_object",
        "keys": ["category", "priority"],
        "share": 0.7,
        "count": 3,
        "lines": [4, 7, 9],
    }
    assert (
        "70% of answers are json object with keys category, priority; 3 break that shape"
        in report["warnings"][-1]["message"]
    )


def test_key_value_answers_must_keep_their_keys_in_order() -> None:
    answers = [f"category: billing\npriority: {i}" for i in range(8)]
    answers[1] = "priority: 1\ncategory: billing"
    answers[5] = "category: billing"
    report = profile(*[(f"ticket {i}", answer) for i, answer in enumerate(answers)]).report()
    assert report["shape"]["kind"] == "key_value_lines"
    assert report["shape"]["keys"] == ["category", "priority"]
    assert report["shape"]["lines"] == [2, 6]


def test_no_shape_is_reported_when_fewer_than_60_percent_share_one() -> None:
    answers = [json.dumps({"a": 1})] * 5 + ["free text"] * 5
    report = profile(*[(f"q{i}", answer) for i, answer in enumerate(answers)]).report()
    assert report["shape"] is None


def test_empty_and_one_character_answers_are_short() -> None:
    pairs = distinct(60)
    pairs[4] = ("q", " x ")
    report = profile(*pairs).report()
    assert report["short_targets"] == {"count": 1, "lines": [5]}
    assert codes(report) == ["short_targets"]


def test_leakage_lists_validation_lines_also_in_training() -> None:
    training = profile(("What is 2+2?", "4"), ("Capital of France?", "Paris"), ("Hi", "Hello")).fingerprints()
    validation = profile(("Say hi", "Hi!"), ("capital of  FRANCE?", "paris"), ("What is 2+2?", "5")).fingerprints()
    assert leakage(training, validation) == {"count": 1, "groups": [{"validation_lines": [2], "training_lines": [2]}]}


def test_the_validator_feeds_the_profiler_while_streaming() -> None:
    profiler = DatasetProfiler()
    validator = DatasetValidator(on_example=profiler.add)
    line = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    validator.feed_chunk(((line + "\n") * 12).encode())
    assert validator.finish().ok
    assert profiler.report()["duplicates"]["groups"] == [list(range(1, 13))]


def test_token_stats_count_the_rendered_conversation(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = [chat("Hi", "Hello", 1), chat("What is the capital of France? " * 20, "Paris", 2)]
    examples.append(Example(3, "preference", [{"role": "user", "content": "Hi"}], ["Hello"], "Tell me a joke " * 10))
    stats = token_stats(tokenizer, examples, max_length=64, batch_size=2)

    def tokens(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    expected = [
        tokens([*e.input_messages, {"role": "assistant", "content": answer}])
        for e in examples
        for answer in [*e.targets, *([e.rejected] if e.rejected else [])]
    ]
    per_example = [expected[0], expected[1], max(expected[2:])]
    assert stats["total_tokens"] == sum(expected)
    assert (stats["min"], stats["max"], stats["p95"]) == (min(per_example), max(per_example), max(per_example))
    assert stats["mean"] == round(sum(per_example) / 3, 1)
    assert stats["over_max_length"]["lines"] == [2, 3]
    assert stats["examples"] == 3 and stats["examples_per_second"] > 0


def test_token_stats_without_a_chat_template_count_plain_text(tokenizer: PreTrainedTokenizerFast) -> None:
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    stats = token_stats(plain, [chat("Hi", "Hello", 1)], max_length=64)
    assert stats["total_tokens"] == len(plain("Hi\nHello")["input_ids"])
    assert stats["over_max_length"] == {"count": 0, "lines": [], "message": None}
