"""Held-out answering for the evaluation report: batched through the continuous batcher against peft's `generate`
one prompt at a time, side by side in one run.

    .venv/bin/python -m bench.evaluation_speed [--examples 32] [--tokens 24] [--threads 1] [--rounds 2]

SmolLM2-135M-Instruct with a random LoRA adapter (r=16 on every projection) answers `--examples` test tickets
of `bench.tickets`, as the base model and as the adapter (what a job's report asks for), each answer exactly
`--tokens` tokens long (end-of-turn ignored, so both paths do the same work). The rounds interleave the two
paths; the fastest run of each counts. Prints seconds, generated tokens/s and the ratio, and how many answers
the two paths gave alike: the paths round differently (padded batches, another attention kernel), so where two
tokens nearly tie an answer can part from the other path's.
"""

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.serving.answers import answering, greedy_answers
from bench.tickets import ticket_split
from worker.training.trainer import linear_projection_names

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
ADAPTER = "tuned"


def _prompts(count: int) -> list[list[dict]]:
    _, test = ticket_split(seed=0)
    return [[{"role": "user", "content": f"Ticket: {text}"}] for text, _ in test[:count]]


def batched(registry: BaseModelRegistry, adapter_dir: Path, prompts: list, tokens: int) -> tuple[float, dict]:
    model, tokenizer = registry.load(MODEL_ID)
    with answering(model, tokenizer, {ADAPTER: adapter_dir}) as (batcher, _):
        start = time.perf_counter()
        answers = greedy_answers(batcher, tokenizer, set(), prompts, [None, ADAPTER], tokens)  # no end: full length
        return time.perf_counter() - start, answers


def one_by_one(registry: BaseModelRegistry, adapter_dir: Path, prompts: list, tokens: int) -> tuple[float, dict]:
    model, tokenizer = registry.load(MODEL_ID)
    peft_model = PeftModel.from_pretrained(model, adapter_dir).eval()
    answers: dict[str | None, list[str]] = {None: [], ADAPTER: []}
    start = time.perf_counter()
    for adapter in answers:
        for prompt in prompts:
            ids = torch.tensor([render_prompt_ids(tokenizer, prompt)])
            with torch.inference_mode(), nullcontext() if adapter else peft_model.disable_adapter():
                output = peft_model.generate(
                    input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=None
                )
            answers[adapter].append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = BaseModelRegistry(ROOT / ".loraport-test" / "models")
    prompts = _prompts(args.examples)
    generated = 2 * len(prompts) * args.tokens
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        model, _ = registry.load(MODEL_ID)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=list(linear_projection_names(model)))
        get_peft_model(model, config).save_pretrained(directory)  # B = 0: answers as the base model's
        seconds: dict[str, list[float]] = {"batched (16 rows)": [], "one by one (peft generate)": []}
        answers = {}
        for _ in range(args.rounds):
            for name, path in zip(seconds, (batched, one_by_one), strict=True):
                elapsed, answers[name] = path(registry, Path(directory), prompts, args.tokens)
                seconds[name].append(elapsed)
    pairs = [
        (a, b)
        for side in (None, ADAPTER)
        for a, b in zip(answers["batched (16 rows)"][side], answers["one by one (peft generate)"][side], strict=True)
    ]
    same = sum(a == b for a, b in pairs)
    print(f"{len(prompts)} prompts × base and adapter, {args.tokens} tokens each, {args.threads} thread(s)")
    best = {name: min(runs) for name, runs in seconds.items()}
    for name, elapsed in best.items():
        print(f"{name:30s} {elapsed:7.1f} s  {generated / elapsed:7.1f} tokens/s")
    print(
        f"batched is {best['one by one (peft generate)'] / best['batched (16 rows)']:.1f}x faster; same answers: {same}"
    )


if __name__ == "__main__":
    main()
