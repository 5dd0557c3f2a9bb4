from app.ml.chat_format import (
    IGNORE_INDEX,
    _assistant_spans,
    _tokenize_by_prefixes,
    render_prompt_ids,
    tokenize_example,
)
from tests.helpers.tiny_models import DEFAULT_SYSTEM_PROMPT, conversation


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    )


def test_labels_cover_exactly_the_assistant_reply_and_its_end_of_turn_token(tokenizer):
    example = tokenize_example(tokenizer, conversation("What is the capital of France?", "Paris"), max_length=512)

    assert trained_text(tokenizer, example) == "Paris<|im_end|>"
    trained = [label != IGNORE_INDEX for label in example.labels]
    first = trained.index(True)
    assert all(trained[first : first + sum(trained)]), "the trained tokens form one contiguous span"


def test_training_prompt_is_the_prompt_served_at_inference(tokenizer):
    messages = conversation("What is the capital of France?", "Paris")
    example = tokenize_example(tokenizer, messages, max_length=512)
    prompt = render_prompt_ids(tokenizer, messages[:1])

    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[:first_trained] == prompt
    assert DEFAULT_SYSTEM_PROMPT in tokenizer.decode(prompt)


def test_every_assistant_turn_is_trained_but_not_user_or_system_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        *conversation("Hello!", "I am fine."),
        *conversation("Tell me a joke.", "Why did the chicken cross the road?"),
    ]
    example = tokenize_example(tokenizer, messages, max_length=512)

    assert trained_text(tokenizer, example) == "I am fine.<|im_end|>Why did the chicken cross the road?<|im_end|>"
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_assistant_turn_with_weight_zero_is_context_only(tokenizer):
    first, second = (
        conversation("Hello!", "I am fine."),
        conversation("Tell me a joke.", "To get to the other side."),
    )
    first[1]["weight"] = 0
    example = tokenize_example(tokenizer, first + second, max_length=512)

    assert trained_text(tokenizer, example) == "To get to the other side.<|im_end|>"


def test_reply_starting_with_whitespace_keeps_prompt_and_reply_apart(tokenizer):
    example = tokenize_example(tokenizer, conversation("Hello!", "\n  Paris"), max_length=512)

    assert trained_text(tokenizer, example).endswith("Paris<|im_end|>")
    assert "assistant" not in trained_text(tokenizer, example)


def test_long_conversations_are_truncated_to_max_length(tokenizer):
    messages = conversation("What is the capital of France? " * 10, "Paris " * 20)
    example = tokenize_example(tokenizer, messages, max_length=50)

    assert len(example.input_ids) == len(example.labels) == 50
    assert example.input_ids == tokenize_example(tokenizer, messages, max_length=10_000).input_ids[:50]


def _conversations() -> list[list[dict]]:
    """Multi-turn conversations with the shapes that move label boundaries: a system turn, context-only replies,
    replies with leading or trailing whitespace, empty and repeated replies, replies that quote the template."""
    turns = [
        ("Hello!", "I am fine."),
        ("Tell me a joke.", "\n  Why did the chicken cross the road?  "),
        ("And?", "To get to the other side."),
        ("Say assistant", "assistant"),
        ("Nothing", ""),
        ("Again", "To get to the other side."),
    ]
    plain = [message for user, reply in turns for message in conversation(user, reply)]
    weighted = [dict(message) for message in plain]
    weighted[1]["weight"] = weighted[7]["weight"] = 0
    return [plain, [{"role": "system", "content": "Be brief."}, *plain], weighted, plain[:2], plain[:6]]


def test_labels_from_one_render_equal_those_of_rendering_every_prefix(tokenizer):
    for messages in _conversations():
        assert _assistant_spans(tokenizer, messages, tokenizer.apply_chat_template(messages, tokenize=False), False)
        for max_length in (512, 60, 33, 7):
            expected = _tokenize_by_prefixes(tokenizer, messages, max_length)
            assert tokenize_example(tokenizer, messages, max_length) == expected, (messages, max_length)


class _CountingTokenizer:
    """The tokenizer, counting the characters it renders and tokenizes: what tokenizing an example costs."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer, self.characters = tokenizer, 0

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def __call__(self, text: str, **options):
        self.characters += len(text)
        return self._tokenizer(text, **options)

    def apply_chat_template(self, messages, **options):
        rendered = self._tokenizer.apply_chat_template(messages, **options)
        self.characters += len(rendered)
        return rendered


def _characters_for(tokenizer, turns: int, max_length: int) -> int:
    counting = _CountingTokenizer(tokenizer)
    messages = [message for i in range(turns) for message in conversation(f"Question {i}?", f"Answer {i}.")]
    tokenize_example(counting, messages, max_length)
    return counting.characters


def test_tokenizing_a_long_conversation_costs_work_linear_in_its_length(tokenizer):
    cost = {turns: _characters_for(tokenizer, turns, max_length=1_000_000) for turns in (100, 200, 400)}

    assert cost[400] < 4.5 * cost[100]  # rendering and re-tokenizing every prefix made it about 16 times
    assert cost[200] < 2.3 * cost[100]


def test_a_conversation_far_longer_than_max_length_is_tokenized_only_up_to_it(tokenizer):
    short, long = (_characters_for(tokenizer, turns, max_length=64) for turns in (100, 1000))

    rendered_once = len(
        tokenizer.apply_chat_template(
            [message for i in range(1000) for message in conversation(f"Question {i}?", f"Answer {i}.")],
            tokenize=False,
        )
    )
    assert long - rendered_once <= short  # beyond the one render, the work does not grow with the conversation
