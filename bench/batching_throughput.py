"""Generation throughput of continuous batching against one request at a time, side by side in one run.

    .venv/bin/python -m bench.batching_throughput [--threads 1] [--requests 16] [--tokens 32] [--adapters 8]

SmolLM2-135M-Instruct with `--adapters` random LoRA adapters (r=16 on all projections, non-zero B so they
change the outputs). `--requests` short chat prompts, greedy, `--tokens` new tokens each (end-of-turn ignored,
so every request generates as many), all submitted at once:
  (a) all on one adapter, through the batcher (peft's single-adapter path, after `set_adapter`);
  (a*) the same, forced through peft's per-row `adapter_names` path, to see what that path costs;
  (b) spread over all adapters, through the batcher (mixed-adapter batches);
  (c) one request at a time: `set_adapter` then `model.generate`, as the engine does today.
Prints generated tokens/s for each and the ratios b/a and b/c. A short warm-up runs first.

One intra-op thread by default: with another process busy on a 2-core machine, 2 OpenMP threads make every
forward 10-50x slower (they spin-wait for each other), which drowns what is measured here.
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from app.base_models.registry import BaseModelRegistry
from app.chat_format import render_prompt_ids
from app.inference import batching
from app.inference.batching import ContinuousBatcher

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reset my password?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for a job interview.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
]

Job = tuple[list[int], str]  # prompt ids, adapter key


def with_adapters(model: torch.nn.Module, count: int) -> PeftModel:
    config = LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config, adapter_name="adapter_0")
    for index in range(1, count):
        peft_model.add_adapter(f"adapter_{index}", config)
    return peft_model.eval()


def batched(model: PeftModel, jobs: list[Job], tokens: int) -> int:
    batcher = ContinuousBatcher(lambda: model, "cpu", max_batch_size=len(jobs))
    try:
        streams = batcher.run_between_steps(
            lambda: [batcher.submit(prompt, adapter, tokens, 0, 1, None, set()) for prompt, adapter in jobs]
        )
        return sum(len(list(stream)) for stream in streams)
    finally:
        batcher.close()


def one_at_a_time(model: PeftModel, jobs: list[Job], tokens: int) -> int:
    generated = 0
    with torch.inference_mode():
        for prompt, adapter in jobs:
            model.set_adapter(adapter)
            input_ids = torch.tensor([prompt])
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                min_new_tokens=tokens, max_new_tokens=tokens,
            )  # fmt: skip
            generated += output.shape[1] - len(prompt)
    return generated


def always_mixed(model: PeftModel, adapters: list[str | None], **inputs: Any) -> torch.Tensor:
    """The batcher's forward, made to take peft's per-row `adapter_names` path even for a single adapter."""
    inputs |= {"use_cache": True, "logits_to_keep": 1}
    return batching._mixed_forward(model, [adapter or "__base__" for adapter in adapters], inputs)


def timed(run: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    generated = run()
    return generated, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="2 on an idle 2-core machine only")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = BaseModelRegistry(ROOT / ".loraport-test" / "models").load(MODEL_ID)
    model = with_adapters(model, args.adapters)
    prompts = [
        render_prompt_ids(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        for i in range(args.requests)
    ]
    one_adapter = [(prompt, "adapter_0") for prompt in prompts]
    spread = [(prompt, f"adapter_{i % args.adapters}") for i, prompt in enumerate(prompts)]
    batched(model, spread[:4], 2)  # warm-up

    results = {}
    results["a"] = timed(lambda: batched(model, one_adapter, args.tokens))
    with mock.patch.object(batching, "_forward", always_mixed):
        results["a*"] = timed(lambda: batched(model, one_adapter, args.tokens))
    results["b"] = timed(lambda: batched(model, spread, args.tokens))
    results["c"] = timed(lambda: one_at_a_time(model, spread, args.tokens))

    names = {
        "a": "batcher, 1 adapter",
        "a*": "batcher, 1 adapter, adapter_names path",
        "b": f"batcher, {args.adapters} adapters mixed",
        "c": "one at a time, set_adapter + generate",
    }
    print(f"{args.requests} requests x {args.tokens} new tokens, {args.threads} threads")
    print(f"{'case':<44} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for key, (generated, seconds) in results.items():
        print(f"({key}) {names[key]:<39} {generated:>7} {seconds:>8.2f} {generated / seconds:>9.1f}")
    rate = {key: generated / seconds for key, (generated, seconds) in results.items()}
    print("   ".join(f"{x}/{y} = {rate[x] / rate[y]:.2f}" for x, y in [("b", "a"), ("b", "c"), ("a*", "a")]))


if __name__ == "__main__":
    main()
