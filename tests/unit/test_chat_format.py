from app.ml.chat_format import IGNORE_INDEX, render_prompt_ids, tokenize_example
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
