"""Each validation rule, per format: a file of good lines with one bad line, and the exact line and code reported."""

import json

import pytest

from app.ml.datasets import DatasetValidator, LineSplitter, ValidationResult


def chat(question: str = "Hi", answer: str = "Hello") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def user(content: str = "Hi") -> dict:
    return {"role": "user", "content": content}


def assistant(content: str | None = "Hello", **extra) -> dict:
    return {"role": "assistant", "content": content, **extra}


GOOD = {
    "chat": chat(),
    "prompt_completion": {"prompt": "Hi", "completion": "Hello"},
    "preference": {
        "input": {"messages": [user()]},
        "preferred_output": [assistant()],
        "non_preferred_output": [assistant("Go away")],
    },
    "pair": {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
}


def encode(line: dict | bytes) -> bytes:
    return line if isinstance(line, bytes) else json.dumps(line).encode()


def validate(lines: list, **limits) -> ValidationResult:
    validator = DatasetValidator(**limits)
    for line in lines:
        validator.feed_line(encode(line) + b"\n")
    return validator.finish()


def with_line(line: dict | bytes, format: str = "chat", at: int = 3, count: int = 12) -> list:
    lines: list = [GOOD[format]] * count
    lines[at - 1] = line
    return lines


def found(result: ValidationResult) -> list[tuple[int | None, str]]:
    return [(error.line, error.code) for error in result.errors]


@pytest.mark.parametrize("format", GOOD)
def test_a_file_of_good_lines_passes(format: str) -> None:
    result = validate([GOOD[format]] * 10)
    assert found(result) == []
    assert result.ok and result.example_count == 10
    assert result.format == ("preference" if format == "pair" else format)


GOOD_VARIANTS = {
    "system prompt and named user": {
        "messages": [{"role": "system", "content": "Be brief"}, {**user(), "name": "ann"}, assistant()]
    },
    "text parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, assistant()]},
    "weights": {"messages": [user(), assistant("draft", weight=0), user("again"), assistant("final", weight=1)]},
    "tool calls": {
        "messages": [
            user(),
            assistant(
                None, tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
            ),
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            assistant("It is 42"),
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "parallel_tool_calls": False,
    },
}


@pytest.mark.parametrize("variant", GOOD_VARIANTS)
def test_chat_variants_are_valid(variant: str) -> None:
    assert found(validate(with_line(GOOD_VARIANTS[variant]))) == []


BAD_LINES = [
    # chat
    ("chat", {"messages": "hi"}, "wrong_type"),
    ("chat", {"messages": []}, "empty_messages"),
    ("chat", {"messages": ["hi", assistant()]}, "wrong_type"),
    ("chat", {**chat(), "temperature": 1}, "unknown_key"),
    ("chat", {"messages": [{**user(), "lang": "en"}, assistant()]}, "unknown_key"),
    ("chat", {"messages": [{"content": "Hi"}, assistant()]}, "missing_key"),
    ("chat", {"messages": [{"role": "user"}, assistant()]}, "missing_key"),
    ("chat", {"messages": [{"role": "human", "content": "Hi"}, assistant()]}, "unknown_role"),
    ("chat", {"messages": [{"role": ["user"], "content": "Hi"}, assistant()]}, "unknown_role"),
    ("chat", {"messages": [user(" \n"), assistant()]}, "empty_content"),
    ("chat", {"messages": [user(), assistant("")]}, "empty_content"),
    ("chat", {"messages": [user(), assistant(None)]}, "wrong_type"),
    ("chat", {"messages": [{"role": "user", "content": 7}, assistant()]}, "wrong_type"),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, assistant()]},
        "wrong_type",
    ),
    ("chat", {"messages": [user(), {"role": "system", "content": "Be brief"}]}, "no_assistant_message"),
    ("chat", {"messages": [user(), assistant(weight=0)]}, "no_assistant_message"),
    ("chat", {"messages": [user(), assistant(weight=2)]}, "invalid_weight"),
    ("chat", {"messages": [user(), assistant(weight=True)]}, "invalid_weight"),
    ("chat", {"messages": [{**user(), "weight": 1}, assistant()]}, "invalid_weight"),
    ("chat", {**chat(), "tools": "f"}, "wrong_type"),
    # prompt/completion
    ("prompt_completion", {"prompt": "Hi"}, "missing_key"),
    ("prompt_completion", {"prompt": "Hi", "completion": "Hello", "id": 3}, "unknown_key"),
    ("prompt_completion", {"prompt": 3, "completion": "Hello"}, "wrong_type"),
    ("prompt_completion", {"prompt": "Hi", "completion": ""}, "empty_content"),
    # OpenAI preference pairs
    (
        "preference",
        {**GOOD["preference"], "input": {"messages": [user(), assistant()]}},
        "last_input_message_from_assistant",
    ),
    ("preference", {**GOOD["preference"], "preferred_output": [assistant(), assistant()]}, "invalid_preference_output"),
    ("preference", {**GOOD["preference"], "preferred_output": [user()]}, "invalid_preference_output"),
    ("preference", {"input": {"messages": [user()]}, "preferred_output": [assistant()]}, "missing_key"),
    ("preference", {**GOOD["preference"], "input": [user()]}, "wrong_type"),
    ("preference", {**GOOD["preference"], "input": {"messages": [{"role": "robot", "content": "Hi"}]}}, "unknown_role"),
    ("preference", {**GOOD["preference"], "non_preferred_output": [assistant(" ")]}, "empty_content"),
    # prompt/chosen/rejected pairs
    (
        "pair",
        {"prompt": [user(), assistant()], "chosen": "Hello", "rejected": "No"},
        "last_input_message_from_assistant",
    ),
    ("pair", {"prompt": "Hi", "chosen": "Hello"}, "missing_key"),
    ("pair", {"prompt": "Hi", "chosen": "", "rejected": "No"}, "empty_content"),
    ("pair", {"prompt": 5, "chosen": "Hello", "rejected": "No"}, "wrong_type"),
    ("pair", {**GOOD["pair"], "score": 1}, "unknown_key"),
    ("pair", {"prompt": "Hi", "chosen": [user()], "rejected": "No"}, "invalid_preference_output"),
]


@pytest.mark.parametrize(("format", "bad", "code"), BAD_LINES)
def test_a_bad_line_is_reported_with_its_line_number_and_code(format: str, bad: dict, code: str) -> None:
    result = validate(with_line(bad, format, at=3))
    assert found(result) == [(3, code)]
    assert "line 3" in result.errors[0].message
    assert result.example_count == 11 and not result.ok


def test_pairs_accept_messages_for_prompt_and_outputs() -> None:
    line = {
        "prompt": [{"role": "system", "content": "Be kind"}, user()],
        "chosen": [assistant()],
        "rejected": [assistant("No")],
    }
    assert found(validate(with_line(line, "pair"))) == []


@pytest.mark.parametrize(
    ("raw", "code", "detail"),
    [
        (b'{"messages": "\xff"}', "not_utf8", "byte 0xff at column 15"),
        (b'{"messages": [}', "invalid_json", "(column 15)"),
        (b"[1, 2]", "not_a_json_object", "found an array"),
        (b'"just text"', "not_a_json_object", "found a string"),
        (b'{"text": "Hi"}', "unknown_format", "keys: text"),
    ],
)
def test_lines_that_are_not_json_objects(raw: bytes, code: str, detail: str) -> None:
    result = validate(with_line(raw, at=5))
    assert found(result) == [(5, code)]
    assert detail in result.errors[0].message


def test_mixed_formats_name_both_formats_and_the_line() -> None:
    result = validate(with_line(GOOD["prompt_completion"], at=7))
    assert found(result) == [(7, "mixed_formats")]
    assert "Got chat and prompt_completion on line 7" in result.errors[0].message


def test_the_format_comes_from_the_first_valid_line() -> None:
    lines = [GOOD["prompt_completion"] | {"completion": ""}] + [GOOD["chat"]] * 11
    result = validate(lines)
    assert result.format == "chat"
    assert found(result) == [(1, "empty_content")]


def test_both_preference_shapes_may_share_a_file() -> None:
    assert found(validate([GOOD["preference"], GOOD["pair"]] * 5)) == []


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    result = validate([GOOD["chat"], b"", b"  \r", {"messages": []}] + [GOOD["chat"]] * 10)
    assert found(result) == [(4, "empty_messages")]
    assert [(w.line, w.code) for w in result.warnings] == [(None, "blank_lines")]
    assert "Skipped 2 blank line(s), the first on line 2" in result.warnings[0].message


def test_a_utf8_byte_order_mark_is_accepted_on_the_first_line() -> None:
    assert found(validate([b"\xef\xbb\xbf" + encode(GOOD["chat"])] + [GOOD["chat"]] * 9)) == []


def test_too_few_examples_and_empty_file_are_file_level_errors() -> None:
    assert found(validate([GOOD["chat"]] * 9)) == [(None, "too_few_examples")]
    assert found(validate([GOOD["chat"]] * 3, min_examples=3)) == []
    assert found(validate([])) == [(None, "empty_file")]
    assert found(validate([b"", b" "])) == [(None, "empty_file")]


def test_a_file_cut_off_mid_line_fails_on_that_line() -> None:
    validator = DatasetValidator()
    for _ in range(10):
        validator.feed_line(encode(GOOD["chat"]) + b"\n")
    validator.feed_line(b'{"messages": [{"role": "us')
    result = validator.finish()
    assert found(result) == [(11, "invalid_json")]
    assert "cut off" in result.errors[0].message


def test_a_line_over_the_byte_limit_is_rejected() -> None:
    long = {"messages": [user("x" * 500), assistant()]}
    result = validate(with_line(long, at=2), max_line_bytes=400)
    assert found(result) == [(2, "line_too_long")]


def test_deep_nesting_is_rejected_without_recursion() -> None:
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert found(validate(with_line(deep, at=4))) == [(4, "too_deeply_nested")]


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    code = '[{"a": [1]}]' * 50 + '\\"[[['
    assert found(validate(with_line(chat("Fix this: " + code, "{[" * 80), at=4))) == []


def test_the_parsers_recursion_limit_is_caught_when_the_depth_limit_is_high() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert found(validate(with_line(deep, at=2), max_depth=10**6)) == [(2, "too_deeply_nested")]


def test_errors_are_bounded_but_all_counted() -> None:
    result = validate([b"nope"] * 250, max_errors=100)
    assert result.error_count == 250
    assert len(result.errors) == 100
    assert "The file has 250 error(s). Line 1 is not valid JSON" in result.summary()
    assert result.summary().endswith("And 245 more error(s).")


def test_summary_of_a_valid_file() -> None:
    assert validate([GOOD["chat"]] * 10).summary() == "Checks passed: 10 chat examples"
    assert validate([GOOD["chat"]] * 10).as_dict()["errors"] == []


def examples_of(*lines: dict) -> list:
    seen: list = []
    validator = DatasetValidator(on_example=seen.append, min_examples=1)
    for line in lines:
        validator.feed_line(encode(line) + b"\n")
    assert validator.finish().ok
    return seen


def test_valid_examples_are_normalised_for_the_report() -> None:
    (first, second) = examples_of(GOOD["chat"], GOOD_VARIANTS["weights"])
    assert second.line == 2
    assert [m["content"] for m in second.input_messages] == ["Hi", "draft", "again"]
    assert second.targets == ["final"]
    (completion,) = examples_of(GOOD["prompt_completion"] | {"prompt": "Q"})
    assert (completion.input_messages, completion.targets) == ([user("Q")], ["Hello"])
    for pair in examples_of(GOOD["preference"], GOOD["pair"]):
        assert (pair.format, pair.input_messages, pair.targets, pair.rejected) == (
            "preference",
            [user()],
            ["Hello"],
            "Go away",
        )


def test_a_tool_call_without_text_is_trained_on_its_arguments() -> None:
    (example,) = examples_of({"messages": GOOD_VARIANTS["tool calls"]["messages"][:2]})
    assert json.loads(example.targets[0])[0]["function"]["name"] == "f"


def messy_file() -> bytes:
    lines = [encode(GOOD["chat"])] * 12
    lines[2] = b'{"messages": [}'
    lines[5] = b""
    lines[7] = b"\xff\xfe"
    lines[9] = encode({"messages": [user(), assistant("y" * 300)]})
    return b"\n".join(lines) + b'\n{"messages": [{"role": "us'


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1000, 10**6])
def test_chunks_of_any_size_give_the_same_result_as_lines(chunk_size: int) -> None:
    data = messy_file()
    by_lines = DatasetValidator(max_line_bytes=200)
    for line in data.splitlines(keepends=True):
        by_lines.feed_line(line)
    by_chunks = DatasetValidator(max_line_bytes=200)
    for start in range(0, len(data), chunk_size):
        by_chunks.feed_chunk(data[start : start + chunk_size])
    expected = [(3, "invalid_json"), (8, "not_utf8"), (10, "line_too_long"), (13, "invalid_json")]
    assert found(by_chunks.finish()) == found(by_lines.finish()) == expected


@pytest.mark.parametrize("chunk_size", [1, 5, 100, 4096])
def test_the_splitter_never_holds_more_than_the_line_limit(chunk_size: int) -> None:
    data = b"a" * 10_000 + b"\nshort\n" + b"b" * 300
    splitter = LineSplitter(max_line_bytes=50)
    lines = []
    for start in range(0, len(data), chunk_size):
        lines += splitter.push(data[start : start + chunk_size])
        assert len(splitter._partial) <= 51
    lines += splitter.close()
    assert lines == [b"a" * 51, b"short", b"b" * 51]


def test_prompts_alone_are_a_format_of_their_own_for_distillation() -> None:
    prompts = [{"prompt": "Hi"}, {"messages": [{"role": "system", "content": "Be brief"}, user("Hello?")]}] * 5

    result = validate(prompts)

    assert (found(result), result.format, result.example_count) == ([], "prompts", 10)


def test_a_prompt_without_its_answer_in_a_file_of_answered_examples_is_still_that_mistake() -> None:
    chat_file = validate(with_line({"messages": [user()]}, "chat", at=4))
    completion_file = validate(with_line({"prompt": "Hi"}, "prompt_completion", at=2))
    prompts_file = validate([{"prompt": "Hi"}] * 3 + [chat()] + [{"prompt": "Hi"}] * 8)

    assert found(chat_file) == [(4, "no_assistant_message")]
    assert found(completion_file) == [(2, "missing_key")]
    assert found(prompts_file) == [(4, "mixed_formats")]  # the first line said prompts
