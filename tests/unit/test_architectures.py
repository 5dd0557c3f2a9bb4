"""Each architecture family trains and serves: LoRA targets found per family, adapters served in one mixed batch
token for token as peft generates them (also past a sliding window, with rows joining and leaving), and logits
computed only where a label is, transformed as the model's own forward transforms them."""

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2MoeConfig, Qwen2MoeForCausalLM

from app.ml.chat_format import render_prompt_ids, tokenize_example
from app.ml.lora_targets import lora_target_names
from app.serving.batching import ContinuousBatcher, TokenStream
from app.serving.lora_slots import AdapterSlots
from tests.helpers.tiny_families import (
    EXPECTED_TARGETS,
    LLAMA_STYLE,
    SERVED_FAMILIES,
    SLIDING_WINDOW,
    build_family_model,
    build_gemma3_with_vision,
)
from tests.helpers.tiny_models import conversation
from worker.training import TrainingConfig, save_adapter, train_lora
from worker.training.data import collate
from worker.training.logits import labelled_logits

# A batcher whose decode thread dies leaves its readers waiting: fail in minutes rather than at the 15-minute default.
pytestmark = pytest.mark.timeout(120)
ADAPTERS = ("first", "second")
NEVER = {-1}  # no end-of-turn token: every row generates all its tokens
SHORT_PROMPT = [5, 17, 42]  # shorter than the sliding window


@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_lora_targets_are_every_attention_and_mlp_projection_of_the_family(family, tokenizer):
    assert lora_target_names(build_family_model(family, tokenizer)) == EXPECTED_TARGETS[family]


def test_lora_targets_leave_out_a_vision_tower_and_its_projector():
    assert lora_target_names(build_gemma3_with_vision()) == LLAMA_STYLE  # not the tower's out_proj, fc1 and fc2


def test_lora_targets_leave_out_the_routers_of_a_mixture_of_experts():
    config = Qwen2MoeConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    assert lora_target_names(Qwen2MoeForCausalLM(config)) == LLAMA_STYLE  # not the shared expert's gate


def random_adapters(model: PreTrainedModel) -> PeftModel:
    """`model` with two LoRA adapters of random, non-zero weights on every projection its family has."""
    targets = list(lora_target_names(model))

    def config() -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)

    torch.manual_seed(1)
    peft_model = get_peft_model(model, config(), adapter_name=ADAPTERS[0])
    torch.manual_seed(2)
    peft_model.add_adapter(ADAPTERS[1], config())
    return peft_model.eval()


def serve(model: PreTrainedModel, adapters: dict[str, Path], **options) -> ContinuousBatcher:
    slots = AdapterSlots(model, max_slots=4)
    for name, directory in adapters.items():
        slots.load(name, directory)
    return ContinuousBatcher(model, slots, "cpu", **({"max_batch_size": 8} | options))


def saved(peft_model: PeftModel, name: str, directory: Path) -> Path:
    peft_model.save_pretrained(directory, selected_adapters=[name])
    return next(directory.rglob("adapter_config.json")).parent


def solo(peft_model: PeftModel, prompt: list[int], adapter: str | None, n: int) -> list[int]:
    """Greedy tokens of one request generated alone by peft's `generate`."""
    input_ids = torch.tensor([prompt])
    with torch.inference_mode():
        if adapter is not None:
            peft_model.set_adapter(adapter)
        with peft_model.disable_adapter() if adapter is None else nullcontext():
            output = peft_model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, do_sample=False,
                eos_token_id=sorted(NEVER), pad_token_id=0,
            )  # fmt: skip
    return output[0, len(prompt) :].tolist()


def greedy(batcher: ContinuousBatcher, prompt: list[int], adapter: str | None, n: int) -> TokenStream:
    return batcher.submit(prompt, adapter, n, temperature=0, top_p=1, seed=None, eos_token_ids=NEVER)


def ids(stream: TokenStream) -> list[int]:
    return [token.id for token in stream]


@pytest.fixture
def prompts(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """A long chat prompt (past the sliding window), a longer one, and a short one."""
    questions = ["Hello!", "What is the capital of France? Tell me a joke."]
    chats = [render_prompt_ids(tokenizer, [{"role": "user", "content": question}]) for question in questions]
    assert min(len(chat) for chat in chats) > 2 * SLIDING_WINDOW
    return [*chats, SHORT_PROMPT]


@pytest.fixture(params=SERVED_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def adapted(family, tokenizer, tmp_path) -> tuple[PeftModel, dict[str, Path]]:
    """The family's tiny model with two random adapters, and those adapters saved by peft."""
    peft_model = random_adapters(build_family_model(family, tokenizer))
    return peft_model, {name: saved(peft_model, name, tmp_path / name) for name in ADAPTERS}


@pytest.fixture
def lm_head_rows(family, tokenizer) -> Iterator[tuple[PreTrainedModel, list[int]]]:
    """A fresh copy of the family's model, and the positions per row its LM head is applied to, forward by forward."""
    model = build_family_model(family, tokenizer)
    rows: list[int] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[1]))
    yield model, rows
    hook.remove()


def test_adapters_and_base_model_in_one_batch_generate_what_peft_generates(adapted, prompts, lm_head_rows):
    peft_model, adapter_dirs = adapted
    jobs = [(prompts[0], "first", 16), (prompts[1], "second", 16), (prompts[2], None, 16), (prompts[1], None, 6)]
    expected = [solo(peft_model, prompt, adapter, n) for prompt, adapter, n in jobs]
    assert len({tuple(tokens) for tokens in expected}) == len(jobs)  # the adapters do change the replies
    model, head_rows = lm_head_rows
    batcher = serve(model, adapter_dirs)
    try:
        streams = batcher.run_between_steps(lambda: [greedy(batcher, *job) for job in jobs])
        assert [ids(stream) for stream in streams] == expected
    finally:
        batcher.close()
    assert set(head_rows) == {1}  # prefill and decode steps alike: logits of the last position only


@pytest.mark.parametrize(
    ("family", "max_prefill_tokens"),
    [("mistral", 512), ("mistral", 5), ("gemma2", 512), ("gemma3", 5)],
    ids=["mistral-prefilled-together", "mistral-in-chunks", "gemma2-prefilled-together", "gemma3-in-chunks"],
    indirect=["family"],
)
def test_rows_joining_and_leaving_past_the_sliding_window_generate_what_peft_generates(
    adapted, prompts, lm_head_rows, max_prefill_tokens
):
    peft_model, adapter_dirs = adapted
    long_n, short_n = 4 * SLIDING_WINDOW, 3
    expected = [
        solo(peft_model, prompts[0], "first", long_n),
        solo(peft_model, prompts[2], "second", short_n),
        solo(peft_model, prompts[1], None, 2 * SLIDING_WINDOW),
        solo(peft_model, prompts[2], "second", 2 * SLIDING_WINDOW),
    ]
    batcher = serve(lm_head_rows[0], adapter_dirs, max_prefill_tokens=max_prefill_tokens)
    try:
        long_row, leaving = batcher.run_between_steps(
            lambda: [greedy(batcher, prompts[0], "first", long_n), greedy(batcher, prompts[2], "second", short_n)]
        )
        started = [next(long_row).id for _ in range(2 * SLIDING_WINDOW)]  # the short row has left by now
        joining = [greedy(batcher, prompts[1], None, 2 * SLIDING_WINDOW), greedy(batcher, prompts[2], "second", 16)]
        assert [started + ids(long_row), ids(leaving), *map(ids, joining)] == expected
    finally:
        batcher.close()


def labelled_and_own_logits(model: PreTrainedModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """`labelled_logits` of two chats, the model's own logits at those positions, the positions the LM head took
    and the labelled ones."""
    chats = [conversation("Hello!", "I am fine, thank you."), conversation("What is the capital of France?", "Paris")]
    batch = collate([tokenize_example(tokenizer, chat, 64, False) for chat in chats], tokenizer.pad_token_id)
    head_inputs: list[torch.Tensor] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _, args: head_inputs.append(args[0]))
    with torch.no_grad():
        logits, _, labelled = labelled_logits(model, batch)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][labelled]
    return logits, own, head_inputs[0][..., 0].numel(), int(labelled.sum())


@pytest.mark.parametrize("family", ["gemma2", "cohere", "granite"])
def test_logits_of_labelled_positions_only_equal_the_models_own(family, tokenizer):
    """Gemma 2 soft-caps its logits, Cohere scales them, Granite divides them: the labelled path does the same, and
    applies the LM head (256k rows for Gemma) to the labelled positions only."""
    logits, own, head_positions, labelled = labelled_and_own_logits(build_family_model(family, tokenizer), tokenizer)

    assert head_positions == labelled
    torch.testing.assert_close(logits, own)


def test_logits_of_a_multimodal_model_equal_its_own_whatever_its_text_config_says(tokenizer):
    """Gemma 3 with vision leaves its logits as they are even when its text config asks for soft-capping."""
    logits, own, _, _ = labelled_and_own_logits(
        build_gemma3_with_vision(vocab_size=len(tokenizer), final_logit_softcapping=2.0), tokenizer
    )

    torch.testing.assert_close(logits, own)


def test_an_adapter_trained_by_our_trainer_serves_beside_another_and_the_base_model(tokenizer, prompts, tmp_path):
    """Gemma 2: soft-capped logits, a sliding window, tied embeddings and Gemma's 256k vocabulary."""
    chats = [
        conversation("What is the capital of France?", "Paris"),
        conversation("Hello! How are you?", "I am fine, thank you."),
        conversation("Tell me a joke.", "Why did the chicken cross the road?"),
    ]
    config = TrainingConfig(n_epochs=2, batch_size=2, learning_rate=1e-2, seed=3, precision="fp32")
    trained = train_lora(build_family_model("gemma2", tokenizer), tokenizer, chats, None, config).model
    assert trained.peft_config["default"].target_modules == set(LLAMA_STYLE)
    adapter_dirs = {"trained": tmp_path / "trained"}
    save_adapter(trained, adapter_dirs["trained"])
    other = random_adapters(build_family_model("gemma2", tokenizer))
    adapter_dirs["other"] = saved(other, "first", tmp_path / "other")
    jobs = [(prompts[0], "trained", 20), (prompts[1], "other", 20), (prompts[1], None, 20)]
    expected = [solo(trained, prompts[0], "default", 20), solo(other, prompts[1], "first", 20), solo(trained, *jobs[2])]
    assert expected[0] != solo(trained, prompts[0], None, 20)  # training changed the replies

    batcher = serve(build_family_model("gemma2", tokenizer), adapter_dirs)
    try:
        streams = batcher.run_between_steps(lambda: [greedy(batcher, *job) for job in jobs])
        assert [ids(stream) for stream in streams] == expected
    finally:
        batcher.close()
