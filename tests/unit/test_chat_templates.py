import pytest
from transformers import PreTrainedTokenizerFast

from app.ml.base_models import BaseModelRegistry
from app.ml.base_models.registry import BaseModelSpec
from app.ml.chat_format import IGNORE_INDEX, _template_marks, render_prompt_ids, tokenize_example
from app.ml.chat_templates import (
    BUILT_IN_TEMPLATES,
    DEFAULT_TEMPLATE,
    ChatTemplateError,
    check_chat_template,
    end_of_turn_ids,
    prepare_tokenizer,
    template_from_option,
)
from tests.helpers.tiny_models import build_model, build_tokenizer

# The special tokens of each family's tokenizer, added to the tiny one so that every built-in template fits it.
FAMILY_TOKENS = [
    "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>", "<end_of_turn>",
    "<|end|>", "<|user|>", "<|assistant|>", "<|system|>",
]  # fmt: skip
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
    "mistral": "</s>",  # Mistral ends a reply with EOS
    "phi3": "<|end|>",
}
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
]


def family_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with `<s>`/`</s>` as BOS/EOS, every family's special tokens, and `template`."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": FAMILY_TOKENS})
    tokenizer.chat_template = template
    return tokenizer


def trained_texts(tokenizer: PreTrainedTokenizerFast, messages: list[dict]) -> list[str]:
    """The text of each run of tokens that the loss is computed on."""
    example = tokenize_example(tokenizer, messages, max_length=1024)
    runs: list[list[int]] = []
    for position, label in enumerate(example.labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return [tokenizer.decode([example.input_ids[i] for i in run]) for run in runs]


@pytest.mark.parametrize("name", sorted(BUILT_IN_TEMPLATES))
def test_every_built_in_template_passes_the_check_and_masks_exactly_the_answers(name):
    tokenizer = family_tokenizer(None)
    assert prepare_tokenizer(tokenizer, template_from_option(name)) == "given"

    check = check_chat_template(tokenizer)

    end_of_turn = END_OF_TURN[name]
    assert check.end_of_turn == end_of_turn
    assert check.stop_ids == {tokenizer.convert_tokens_to_ids(end_of_turn), tokenizer.eos_token_id}
    assert [text.strip() for text in trained_texts(tokenizer, CONVERSATION)] == [
        "Paris is the capital of France." + end_of_turn,
        "Why did the chicken cross the road?" + end_of_turn,
    ]
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert "You are terse." in rendered  # Gemma and Mistral fold the system message into the first user turn


def test_a_tokenizer_without_a_template_gets_the_default_and_its_replies_end_with_eos():
    tokenizer = family_tokenizer(None)

    assert prepare_tokenizer(tokenizer, None) == "default"

    assert tokenizer.chat_template == DEFAULT_TEMPLATE
    assert check_chat_template(tokenizer).end_of_turn == "</s>"
    assert end_of_turn_ids(tokenizer) == {tokenizer.eos_token_id}
    assert trained_texts(tokenizer, CONVERSATION) == [
        "Paris is the capital of France.</s>",
        "Why did the chicken cross the road?</s>",
    ]
    prompt = tokenizer.decode(render_prompt_ids(tokenizer, CONVERSATION[:2]))
    assert prompt == "<s>System:\nYou are terse.\n\nUser:\nWhat is the capital of France?\n\nAssistant:\n"


def test_the_model_s_own_template_is_kept_unless_one_is_given():
    own = build_tokenizer()  # ChatML, with SmolLM2's default system prompt
    template = own.chat_template

    assert prepare_tokenizer(own, None) == "model"
    assert own.chat_template == template
    assert prepare_tokenizer(own, BUILT_IN_TEMPLATES["chatml"]) == "given"
    assert own.chat_template == BUILT_IN_TEMPLATES["chatml"]


def test_a_tokenizer_given_another_template_is_checked_and_masked_by_the_new_one():
    tokenizer = family_tokenizer(BUILT_IN_TEMPLATES["gemma"])
    assert check_chat_template(tokenizer).end_of_turn == "<end_of_turn>"
    trained_texts(tokenizer, CONVERSATION)

    prepare_tokenizer(tokenizer, BUILT_IN_TEMPLATES["llama3"])

    assert check_chat_template(tokenizer).end_of_turn == "<|eot_id|>"
    assert trained_texts(tokenizer, CONVERSATION) == [
        "Paris is the capital of France.<|eot_id|>",
        "Why did the chicken cross the road?<|eot_id|>",
    ]
    # found in one pass with the new template's marks, not by the quadratic fallback
    assert _template_marks(tokenizer) == ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}", "fails to render a test conversation"),
        ("{% for m in messages %}{{ m['content'] }", "fails to render a test conversation"),
        (  # Gemma 2's own template has no system role
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
            "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}",
            "(system/user/assistant): System role not supported",
        ),
        (
            "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '</answer>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}assistant:\n{% endif %}",
            "ends an assistant turn with '</answer>', which is not one special token",
        ),
        ("{% for m in messages %}{{ m['content'] + eos_token + '\n' }}{% endfor %}", "has no assistant marker"),
        (
            "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}",
            "writes nothing after an assistant's reply",
        ),
        (
            "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}Answer:\n{% endif %}",
            "the loss mask cannot find the assistant's replies",
        ),
        (  # a space after the prompt for a reply, which training's conversation does not have
            "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant:\n ' }}{% endif %}",
            "writes the prompt for a reply differently",
        ),
    ],
    ids=[
        "type-error",
        "syntax-error",
        "no-system-role",
        "unknown-end-of-turn",
        "no-marker",
        "no-end",
        "other-prompt",
        "prompt-space",
    ],
)
def test_an_unusable_template_is_refused_with_the_reason(template, reason):
    with pytest.raises(ChatTemplateError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_chat_template(family_tokenizer(template))


def test_a_family_template_on_a_tokenizer_without_its_tokens_is_refused():
    tokenizer = build_tokenizer()  # no <end_of_turn> in its vocabulary
    prepare_tokenizer(tokenizer, BUILT_IN_TEMPLATES["gemma"])

    with pytest.raises(ChatTemplateError, match="'<end_of_turn>', which is not one special token"):
        check_chat_template(tokenizer)


def test_a_template_option_is_a_built_in_name_or_a_valid_jinja_file(tmp_path):
    (tmp_path / "mine.jinja").write_text(BUILT_IN_TEMPLATES["phi3"])
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}")

    assert template_from_option("mine.jinja", tmp_path) == BUILT_IN_TEMPLATES["phi3"]
    assert template_from_option(str(tmp_path / "mine.jinja")) == BUILT_IN_TEMPLATES["phi3"]
    with pytest.raises(ChatTemplateError, match=r"neither a built-in \(chatml, gemma, llama3, mistral, phi3\)"):
        template_from_option("vicuna")
    with pytest.raises(ChatTemplateError, match="is not valid Jinja"):
        template_from_option("broken.jinja", tmp_path)


@pytest.mark.parametrize("name", ["chatml", "gemma", "llama3"])
def test_end_of_turn_ids_hold_the_template_s_end_of_turn_token_and_eos(name):
    tokenizer = family_tokenizer(BUILT_IN_TEMPLATES[name])

    expected = {tokenizer.convert_tokens_to_ids(END_OF_TURN[name]), tokenizer.eos_token_id}
    assert end_of_turn_ids(tokenizer) == expected


def test_the_registry_applies_the_template_a_model_was_given_else_its_own_else_the_default(tmp_path):
    weights = tmp_path / "weights"
    tokenizer = family_tokenizer(None)  # saved without a chat template
    build_model(tokenizer).save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    (tmp_path / "mine.jinja").write_text(BUILT_IN_TEMPLATES["llama3"])
    given = {"bare": None, "gemma-style": "gemma", "from-file": str(tmp_path / "mine.jinja")}
    specs = [
        BaseModelSpec(
            id=model_id,
            source="local",
            location=str(weights),
            gguf_filename=None,
            lora_target_modules=(),
            max_seq_length=512,
            created=0,
            chat_template=option and template_from_option(option),
        )  # fmt: skip
        for model_id, option in given.items()
    ]

    registry = BaseModelRegistry(cache_dir=tmp_path / "cache", catalogue=lambda: specs)

    assert [spec.chat_template for spec in specs] == [None, BUILT_IN_TEMPLATES["gemma"], BUILT_IN_TEMPLATES["llama3"]]
    assert [registry.template_source(model_id) for model_id in given] == ["default", "given", "given"]
    assert check_chat_template(registry.tokenizer("gemma-style")).end_of_turn == "<end_of_turn>"
    _, loaded = registry.load("bare")
    assert loaded.chat_template == DEFAULT_TEMPLATE
