"""The GPU check: a few LoRA training steps, the QLoRA 4-bit path and mixed-adapter serving checked against peft, each
with its tokens/s, through our own trainer, base-model registry, adapter slots and batcher.

    python -m bench.gpu_check [--device cuda] [--shape smollm2-135m] [--steps 30] [--rows 32] [--new-tokens 128]

The models are Llamas with random weights built here (no hub, no download): `tiny` is the unit tests' model,
`smollm2-135m` SmolLM2-135M's shape, for realistic figures. Serving is compared with peft's greedy `generate`, one
request at a time, for rows of two adapters and of the base model mixed in one batch: token for token on the tiny
model in fp32, and on the chosen shape in the serving dtype (bf16 on CUDA, as the registry loads it) each token the
batcher picked must be peft's argmax or within `--logit-tolerance` of it (bf16 rounding flips near-ties).
Prints one line per part and exits 1 when a check fails; QLoRA is skipped, with the reason, without CUDA or
bitsandbytes. bench/gpu_check.sh installs what this needs on a host that has only torch and accelerate.
"""

import argparse
import importlib.util
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from app.ml.base_models.quantization import FOUR_BIT
from app.ml.base_models.registry import BaseModelRegistry, BaseModelSpec
from app.serving.batching import ContinuousBatcher
from app.serving.lora_slots import AdapterSlots
from tests.helpers.tiny_models import CORPUS, build_tokenizer
from worker.training import StepReport, TrainingConfig, TrainingHooks, train_lora
from worker.training.trainer import held_out_metrics

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, initializer_range=0.2),
    # SmolLM2-135M(-Instruct)'s config.json
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True),
}  # fmt: skip
ADAPTERS = ("first", "second")
WRONG = {"first": "second", "second": None, None: "first"}
WORDS = sorted({word for line in CORPUS for word in line.split()})


@dataclass(frozen=True)
class Outcome:
    part: str
    passed: bool | None  # None: skipped
    detail: str


def random_llama(shape: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        **({"vocab_size": len(tokenizer)} | SHAPES[shape]),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def registry_of(shape: str, tokenizer: PreTrainedTokenizerFast, root: Path) -> BaseModelRegistry:
    """A registry holding the random model as a local base model, so that it is loaded as the service loads one."""
    directory = root / shape
    random_llama(shape, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    spec = BaseModelSpec(
        id=shape, source="local", location=str(directory), gguf_filename=None, lora_target_modules=(),
        max_seq_length=2048, created=0,
    )  # fmt: skip
    return BaseModelRegistry(cache_dir=root / "cache", catalogue=lambda: [spec])


def chats(count: int, words: int, seed: int) -> list[list[dict]]:
    """Conversations of random corpus words, a quarter of them the question and the rest the answer."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [
        [{"role": "user", "content": text(words // 4)}, {"role": "assistant", "content": text(words - words // 4)}]
        for _ in range(count)
    ]


def check_training(registry: BaseModelRegistry, shape: str, device: str, args, quantization: str | None) -> Outcome:
    """LoRA (or QLoRA) steps through `train_lora` on 8 chats repeated: the loss on them must be lower afterwards."""
    model, tokenizer = registry.load(shape, device=device, quantization=quantization)
    config = TrainingConfig(
        n_epochs=1, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=0, lora_r=16, lora_alpha=32,
        warmup_ratio=0.0, max_seq_length=args.seq_len,
    )  # fmt: skip
    learned_chats = chats(8, args.seq_len // 2, seed=1)
    conversations = learned_chats * -(-args.steps * args.batch_size // 8)
    before = held_out_metrics(model, tokenizer, learned_chats, config)
    reports: list[StepReport] = []
    stamps: list[float] = []

    def on_step(report: StepReport) -> None:
        reports.append(report)
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    result = train_lora(model, tokenizer, conversations[: args.steps * args.batch_size], None, config,
                        hooks=TrainingHooks(on_step=on_step))  # fmt: skip
    wall = time.perf_counter() - start
    losses = [report.train_loss for report in reports]
    after = held_out_metrics(result.model, tokenizer, learned_chats, config)
    learned = before is not None and after is not None and after[0] < before[0]
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else wall
    tokens_per_step = result.trained_tokens / result.steps
    detail = (
        f"{result.steps} steps of {args.batch_size} chats, {result.trained_tokens} tokens:"
        f" {result.trained_tokens / wall:,.0f} trained tokens/s ({tokens_per_step / steady:,.0f} without the first"
        f" step), step loss {losses[0]:.3f} -> {losses[-1]:.3f}, loss on the chats {_loss(before)} -> {_loss(after)},"
        f" {_peak_memory(device)}"
    )
    return Outcome(f"train {'QLoRA 4-bit' if quantization else 'LoRA'} {_dtype_name(model)}", learned, detail)


def with_adapters(model: PreTrainedModel, directory: Path, scale: float) -> PeftModel:
    """`model` with two LoRA adapters of random, non-zero weights (B scaled by `scale`) on every projection, each
    saved under `directory`/<name>."""

    def config() -> LoraConfig:
        return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)

    torch.manual_seed(1)
    peft_model = get_peft_model(model, config(), adapter_name=ADAPTERS[0])
    torch.manual_seed(2)
    peft_model.add_adapter(ADAPTERS[1], config())
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_B." in name:
                parameter.mul_(scale)
    for name in ADAPTERS:
        peft_model.save_pretrained(str(directory / name), selected_adapters=[name])
    return peft_model.eval()


def adapter_dir(root: Path, name: str) -> Path:
    return next((root / name).rglob("adapter_config.json")).parent


def solo(peft_model: PeftModel, prompt: list[int], adapter: str | None, new_tokens: int, eos: set[int]) -> list[int]:
    """Greedy tokens of one request generated alone by peft, end-of-turn token included."""
    input_ids = torch.tensor([prompt], device=peft_model.device)
    with torch.inference_mode():
        if adapter is not None:
            peft_model.set_adapter(adapter)
        with peft_model.disable_adapter() if adapter is None else nullcontext():
            output = peft_model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                do_sample=False, eos_token_id=sorted(eos), pad_token_id=0,
            )  # fmt: skip
    return output[0, len(prompt) :].tolist()


def batched(
    served: tuple[PreTrainedModel, AdapterSlots], device: str, jobs: list[tuple[list[int], str | None]],
    new_tokens: int, eos: set[int],
) -> tuple[list[list[int]], float]:  # fmt: skip
    """Greedy tokens of every job, submitted together to a `ContinuousBatcher`, and the seconds they took."""
    model, slots = served
    batcher = ContinuousBatcher(model, slots, device, max_batch_size=len(jobs))
    try:
        start = time.perf_counter()
        streams = batcher.run_between_steps(
            lambda: [
                batcher.submit(prompt, adapter, new_tokens, temperature=0, top_p=1, seed=None, eos_token_ids=eos)
                for prompt, adapter in jobs
            ]
        )
        tokens = [[token.id for token in stream] for stream in streams]
        return tokens, time.perf_counter() - start
    finally:
        batcher.close()


def serve(registry: BaseModelRegistry, shape: str, device: str, dtype: torch.dtype | None, root: Path, scale: float):
    """peft's model with the two adapters, and a fresh copy of the base model serving them from `AdapterSlots`."""
    reference, tokenizer = registry.load(shape, device=device, dtype=dtype)
    peft_model = with_adapters(reference, root / f"adapters-{shape}", scale)
    model, _ = registry.load(shape, device=device, dtype=dtype)
    slots = AdapterSlots(model, max_slots=4)
    for name in ADAPTERS:
        slots.load(name, adapter_dir(root / f"adapters-{shape}", name))
    return peft_model, (model, slots), tokenizer


def largest_gaps(
    peft_model: PeftModel, prompts: list[list[int]], tokens: list[list[int]], adapters: list[str | None]
) -> list[float]:
    """For each row, how far below peft's best logit the batcher's pick fell at its worst token (0: always peft's
    greedy choice), peft reading the prompt and the batcher's tokens so far with the row's adapter in `adapters`."""
    gaps = []
    for prompt, generated, adapter in zip(prompts, tokens, adapters, strict=True):
        sequence = torch.tensor([prompt + generated], device=peft_model.device)
        with torch.inference_mode():
            logits = peft_model(input_ids=sequence, adapter_names=[adapter or "__base__"]).logits[0].float()
        picked = logits[len(prompt) - 1 : -1]
        positions = torch.arange(len(generated), device=picked.device)
        chosen = picked[positions, torch.tensor(generated, device=picked.device)]
        gaps.append(float((picked.max(dim=-1).values - chosen).max()))
    return gaps


def check_serving_matches_peft(
    registry: BaseModelRegistry, shape: str, device: str, dtype: torch.dtype | None, root: Path, args
) -> Outcome:
    """Rows of both adapters and of the base model in one batch generate what peft generates for each alone."""
    peft_model, served, tokenizer = serve(registry, shape, device, dtype, root, args.lora_scale)
    eos = {tokenizer.eos_token_id}
    rng = random.Random(3)
    vocab = min(len(tokenizer), peft_model.config.vocab_size)
    adapters = [ADAPTERS[0], ADAPTERS[1], None, ADAPTERS[0], None, ADAPTERS[1]]
    jobs = [([rng.randrange(vocab) for _ in range(4 + 3 * i)], adapter) for i, adapter in enumerate(adapters)]
    expected = [solo(peft_model, prompt, adapter, args.check_tokens, eos) for prompt, adapter in jobs]
    tokens, _ = batched(served, device, jobs, args.check_tokens, eos)
    differing = len({tuple(row) for row in expected}) == len(jobs)  # the adapters change what is generated
    same = sum(mine == theirs for mine, theirs in zip(tokens, expected, strict=True))
    prompts = [prompt for prompt, _ in jobs]
    gap = max(largest_gaps(peft_model, prompts, tokens, adapters))
    # The same tokens scored with another adapter than the row's: what a routing mistake would look like.
    control = min(largest_gaps(peft_model, prompts, tokens, [WRONG[adapter] for adapter in adapters]))
    if next(peft_model.parameters()).dtype == torch.float32:
        passed, required = differing and same == len(jobs), "token for token"
    else:  # bf16 rounding flips near-ties: each pick must be peft's best up to the tolerance
        passed, required = control > args.logit_tolerance >= gap, f"within {args.logit_tolerance} of peft's best logit"
    detail = (
        f"{len(jobs)} rows ({', '.join(str(a) for a in adapters)}), {args.check_tokens} greedy tokens each:"
        f" {same}/{len(jobs)} rows identical to peft's generate; largest gap to peft's best logit {gap:.3f}"
        f" (scored with a wrong adapter: {control:.3f} at least); required {required}"
        + ("" if differing else "; the adapters did not change the replies, so the check proves nothing")
    )
    return Outcome(f"serve vs peft {shape} {_dtype_name(peft_model)}", passed, detail)


def measure_serving(
    registry: BaseModelRegistry, shape: str, device: str, dtype: torch.dtype | None, root: Path, args
) -> Outcome:
    """Generated tokens/s of `--rows` rows over two adapters and the base model, next to peft's for one row."""
    peft_model, served, _ = serve(registry, shape, device, dtype, root, args.lora_scale)
    rng = random.Random(4)
    vocab = peft_model.config.vocab_size
    adapters = [(ADAPTERS[0], ADAPTERS[1], None)[i % 3] for i in range(args.rows)]
    jobs = [([rng.randrange(vocab) for _ in range(args.prompt_tokens)], adapter) for adapter in adapters]
    batched(served, device, jobs[:2], 4, set())  # warm-up: kernels, allocator
    tokens, wall = batched(served, device, jobs, args.new_tokens, set())
    generated = sum(len(row) for row in tokens)
    start = time.perf_counter()
    alone = solo(peft_model, jobs[0][0], jobs[0][1], args.new_tokens, set())
    peft_wall = time.perf_counter() - start
    detail = (
        f"{args.rows} rows ({args.rows - args.rows // 3} over 2 adapters, {args.rows // 3} base), prompts of"
        f" {args.prompt_tokens} tokens, {args.new_tokens} new tokens each: {generated / wall:,.0f} generated"
        f" tokens/s in {wall:.1f} s; peft alone, one row: {len(alone) / peft_wall:,.0f} tokens/s;"
        f" {_peak_memory(device)}"
    )
    return Outcome(
        f"serve throughput {shape} {_dtype_name(peft_model)}", generated == args.rows * args.new_tokens, detail
    )


def _loss(metrics: tuple[float, float] | None) -> str:
    return "none" if metrics is None else f"{metrics[0]:.3f}"


def _dtype_name(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _peak_memory(device: str) -> str:
    if not device.startswith("cuda"):
        return "CPU"
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return f"peak {peak:.1f} GiB"


def qlora_missing(device: str) -> str | None:
    """Why the QLoRA part cannot run here, or None."""
    if not device.startswith("cuda"):
        return "bitsandbytes' 4-bit kernels need CUDA"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (scripts/gpu-wheels.sh fetches it for bench/gpu_check.sh)"
    return None


def run_part(name: str, part: Callable[[], Outcome]) -> Outcome:
    start = time.perf_counter()
    try:
        outcome = part()
    except Exception as error:  # one broken part must not hide the others' figures
        traceback.print_exc()
        outcome = Outcome(name, False, f"{type(error).__name__}: {error}")
    verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[outcome.passed]
    print(f"{verdict}  {outcome.part:40} {outcome.detail} [{time.perf_counter() - start:.1f} s]", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="model of the figures")
    parser.add_argument("--steps", type=int, default=30, help="training steps, LoRA and QLoRA each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seq-len", type=int, default=512, help="longest training chat, in tokens")
    parser.add_argument("--rows", type=int, default=32, help="rows served together for the throughput figure")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--check-tokens", type=int, default=24, help="greedy tokens per row compared with peft")
    parser.add_argument("--logit-tolerance", type=float, default=0.05, help="for the comparison in bf16")
    parser.add_argument(
        "--serving-dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="auto: as the registry loads for serving (bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--lora-scale", type=float, default=0.1, help="of the random adapters' B matrices")
    args = parser.parse_args(argv)

    device = args.device
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside peft and transformers
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else ""), flush=True)  # fmt: skip
    serving_dtype = None if args.serving_dtype == "auto" else getattr(torch, args.serving_dtype)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        registries = {shape: registry_of(shape, tokenizer, root) for shape in {"tiny", args.shape}}
        figures, shape, missing = registries[args.shape], args.shape, qlora_missing(device)
        parts: list[tuple[str, Callable[[], Outcome]]] = [
            ("serve vs peft tiny",
             lambda: check_serving_matches_peft(registries["tiny"], "tiny", device, torch.float32, root, args)),
            ("serve vs peft", lambda: check_serving_matches_peft(figures, shape, device, serving_dtype, root, args)),
            ("serve throughput", lambda: measure_serving(figures, shape, device, serving_dtype, root, args)),
            ("train LoRA", lambda: check_training(figures, shape, device, args, quantization=None)),
            ("train QLoRA 4-bit",
             lambda: check_training(figures, shape, device, args, quantization=FOUR_BIT) if missing is None
             else Outcome("train QLoRA 4-bit", None, missing)),
        ]  # fmt: skip
        outcomes = [run_part(name, part) for name, part in parts]
    failed = [outcome.part for outcome in outcomes if outcome.passed is False]
    print(
        f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} in {time.perf_counter() - started:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
