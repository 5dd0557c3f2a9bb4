"""Held-out answers through the serving engine: each equals what peft's `generate` answers alone, for the base
model and for the adapter, whatever else runs in the batch."""

from contextlib import nullcontext

import torch
from peft import LoraConfig, get_peft_model

from app.ml.chat_format import render_prompt_ids
from app.serving.answers import greedy_answers
from app.serving.batching import ContinuousBatcher
from app.serving.lora_slots import AdapterSlots

PROMPTS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "How are you today?"}],
]


def test_greedy_answers_equal_peft_generating_each_alone(make_model, tokenizer, tmp_path):
    torch.manual_seed(4)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(make_model(), config).eval()
    peft_model.save_pretrained(tmp_path)
    model = make_model().eval()
    slots = AdapterSlots(model, max_slots=1)
    slots.load("tuned", tmp_path)
    end = {tokenizer.eos_token_id}

    def alone(prompt: list[dict], tuned: bool) -> str:
        ids = torch.tensor([render_prompt_ids(tokenizer, prompt)])
        options = {"max_new_tokens": 10, "do_sample": False, "eos_token_id": sorted(end)}
        with torch.inference_mode(), nullcontext() if tuned else peft_model.disable_adapter():
            output = peft_model.generate(input_ids=ids, **options)
        return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)

    batcher = ContinuousBatcher(model, slots, "cpu", max_batch_size=2)  # fewer rows than prompts: they queue
    try:
        answers = greedy_answers(batcher, tokenizer, end, PROMPTS, [None, "tuned"], 10)
    finally:
        batcher.close()

    assert answers[None] == [alone(prompt, tuned=False) for prompt in PROMPTS]
    assert answers["tuned"] == [alone(prompt, tuned=True) for prompt in PROMPTS]
    assert answers[None] != answers["tuned"]
