"""Our training and serving on a CUDA GPU, in one run of a few minutes, on a random-weight model (no hub needed).

    python -m bench.gpu_check [--family llama] [--size small] [--device cuda]

1. bf16 LoRA training with our trainer (`train_lora`): a few steps, trained tokens/s, first and last loss.
2. QLoRA (4-bit NF4 base, bf16 compute), when bitsandbytes imports: the same steps, tokens/s.
3. Mixed-adapter serving (`AdapterSlots` + `ContinuousBatcher`): the trained adapter, a random one and the base
   model in one batch, in fp32 (TF32 off), each row checked token for token against peft's `generate` of it alone;
   then generated tokens/s of a larger mixed batch in bf16.

A GPU host may have only torch and accelerate: transformers, peft and tokenizers travel as wheels (this script says
which are missing). Our web stack does not travel: the modules used here are loaded without the package
`__init__`s that import it (the engine, storage, errors rendered for HTTP), and the two names they need from it
are stand-ins. `--device cpu --size tiny` runs the same checks on a CPU in seconds.
"""

import argparse
import importlib.util
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("torch", "transformers", "peft", "safetensors", "tokenizers")
SIZES = {  # hidden, intermediate, layers, heads, kv heads, vocabulary
    "tiny": (32, 64, 2, 4, 2, 400),
    "small": (1024, 2816, 12, 16, 4, 32_000),  # ~0.2B parameters
}


def require(names: tuple[str, ...]) -> None:
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"gpu_check needs {', '.join(missing)}: install them (e.g. from wheels copied along) and run again")


def load_our_modules() -> None:
    """Make `app.serving.*`, `app.ml.*` and `worker.training.*` importable without our web stack, when it is absent."""
    if importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("boto3") is not None:
        return
    for name in ("app", "app.serving", "app.ml", "app.ml.base_models", "worker", "worker.training"):
        package = types.ModuleType(name)
        package.__path__ = [str(ROOT.joinpath(*name.split(".")))]
        sys.modules[name] = package
    answers = types.ModuleType("app.serving.answers")  # worker.training.data needs only its `Stopped`
    answers.Stopped = type("Stopped", (Exception,), {})  # type: ignore[attr-defined]
    manifest = types.ModuleType("app.ml.adapter_manifest")  # the trainer's `save_adapter` only, not used here
    manifest.write_manifest = lambda directory: None  # type: ignore[attr-defined]
    sys.modules |= {"app.serving.answers": answers, "app.ml.adapter_manifest": manifest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llama", help="a family of tests/helpers/tiny_families.py")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=32, help="rows of the throughput batch")
    args = parser.parse_args()
    require(NEEDED)
    load_our_modules()
    sys.path.insert(0, str(ROOT))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --size tiny for a dry run")
    device = torch.device(args.device)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    with tempfile.TemporaryDirectory() as scratch:
        check(args, device, Path(scratch))


def check(args: argparse.Namespace, device, scratch: Path) -> None:
    import torch

    from tests.helpers.tiny_models import build_tokenizer, conversation

    tokenizer = build_tokenizer()
    chats = [
        conversation(f"Ticket {i}: what is the capital of France?", "Paris is the capital of France." * (1 + i % 3))
        for i in range(64)
    ]
    weights = scratch / "base"
    model_for(args, tokenizer).save_pretrained(weights)
    tokenizer.save_pretrained(weights)

    trained_dir = scratch / "trained"
    report("bf16 LoRA training", train(args, weights, tokenizer, chats, device, trained_dir, quantized=False))
    if importlib.util.find_spec("bitsandbytes") is None or device.type != "cuda":
        print("QLoRA: skipped (bitsandbytes is not installed, or no CUDA device)")
    else:
        report(
            "QLoRA 4-bit training", train(args, weights, tokenizer, chats, device, scratch / "qlora", quantized=True)
        )

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    random_dir = scratch / "random"
    random_adapter(weights, device, random_dir)
    prompts = [tokenizer(f"Ticket {i}: what is the capital of France? " * (1 + i % 4))["input_ids"] for i in range(6)]
    serve_equal(weights, {"trained": trained_dir, "random": random_dir}, prompts, device)
    serve_speed(weights, {"trained": trained_dir, "random": random_dir}, prompts, device, args.rows)


def model_for(args: argparse.Namespace, tokenizer):
    """A random-weight model of the family, at the size asked for."""
    from tests.helpers.tiny_families import build_family_model

    hidden, intermediate, layers, heads, kv_heads, vocabulary = SIZES[args.size]
    model = build_family_model(args.family, tokenizer)
    config = model.config
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = hidden, intermediate, layers
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    config.vocab_size = max(vocabulary, config.vocab_size)
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = hidden // heads
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(layers)]
    return type(model)(config)


def load(weights: Path, device, dtype=None, quantized: bool = False):
    from transformers import AutoModelForCausalLM

    if quantized:
        from app.ml.base_models.quantization import qlora_config

        return AutoModelForCausalLM.from_pretrained(weights, quantization_config=qlora_config(), device_map=str(device))
    return AutoModelForCausalLM.from_pretrained(weights, dtype=dtype).to(device)


def train(args, weights: Path, tokenizer, chats, device, out: Path, quantized: bool) -> dict:
    import torch

    from worker.training.trainer import StepReport, TrainingConfig, TrainingHooks, train_lora

    model = load(weights, device, torch.float32, quantized)
    steps: list[StepReport] = []
    config = TrainingConfig(n_epochs=1, batch_size=max(1, len(chats) // args.steps), learning_rate=2e-3, seed=0)
    synchronize(device)
    start = time.perf_counter()
    result = train_lora(model, tokenizer, chats, None, config, hooks=TrainingHooks(on_step=steps.append))
    synchronize(device)
    seconds = time.perf_counter() - start
    result.model.save_pretrained(out)
    return {
        "steps": result.steps,
        "tokens/s": round(result.trained_tokens / seconds),
        "loss": f"{steps[0].train_loss:.3f} → {steps[-1].train_loss:.3f}",
        "peak GB": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None,
    }


def random_adapter(weights: Path, device, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from app.ml.lora_targets import lora_target_names

    model = load(weights, device, torch.float32)
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(lora_target_names(model)), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)


def served(weights: Path, adapters: dict[str, Path], device, dtype):
    from app.serving.batching import ContinuousBatcher
    from app.serving.lora_slots import AdapterSlots

    model = load(weights, device, dtype).eval()
    slots = AdapterSlots(model, max_slots=len(adapters))
    for name, directory in adapters.items():
        slots.load(name, directory)
    return ContinuousBatcher(model, slots, device, max_batch_size=256, max_prefill_tokens=8192)


def greedy(batcher, prompt: list[int], adapter: str | None, n: int):
    return batcher.submit(prompt, adapter, n, temperature=0, top_p=1, seed=None, eos_token_ids=set())


def serve_equal(weights: Path, adapters: dict[str, Path], prompts, device, n: int = 32) -> None:
    """Every row of a mixed fp32 batch generates what peft's `generate` gives it alone."""
    import torch
    from peft import PeftModel

    from app.serving.batching import ContinuousBatcher

    names = [*adapters, None]
    jobs = [(prompt, names[i % len(names)]) for i, prompt in enumerate(prompts)]
    reference = PeftModel.from_pretrained(load(weights, device, torch.float32), adapters["trained"], "trained")
    reference.load_adapter(adapters["random"], "random")
    reference.generation_config.eos_token_id = None  # as the batcher is asked: no end-of-turn token, n tokens each
    expected = []
    with torch.inference_mode():
        for prompt, adapter in jobs:
            ids = torch.tensor([prompt], device=device)
            options = {"max_new_tokens": n, "do_sample": False, "pad_token_id": 0}
            if adapter is None:
                with reference.disable_adapter():
                    output = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
            else:
                reference.set_adapter(adapter)
                output = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
            expected.append(output[0, len(prompt) :].tolist())
    batcher: ContinuousBatcher = served(weights, adapters, device, torch.float32)
    try:
        streams = batcher.run_between_steps(lambda: [greedy(batcher, prompt, adapter, n) for prompt, adapter in jobs])
        got = [[token.id for token in stream] for stream in streams]
    finally:
        batcher.close()
    differing = [i for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)) if mine != theirs]
    print(f"mixed-adapter serving, fp32: {len(jobs) - len(differing)}/{len(jobs)} rows equal to peft's generate")
    for i in differing:
        first = next(k for k, (a, b) in enumerate(zip(got[i], expected[i], strict=False)) if a != b)
        adapter = jobs[i][1] or "base"
        print(f"  row {i} ({adapter}) from token {first}: {got[i][first:][:8]}, peft {expected[i][first:][:8]}")
    if differing:
        sys.exit(1)


def serve_speed(weights: Path, adapters: dict[str, Path], prompts, device, rows: int, n: int = 128) -> None:
    """Generated tokens/s of `rows` rows over both adapters and the base model, in bf16."""
    import torch

    names = [*adapters, None]
    batcher = served(weights, adapters, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        list(greedy(batcher, prompts[0], "trained", 4))  # warm up: kernels, slots staged
        start = time.perf_counter()
        streams = batcher.run_between_steps(
            lambda: [greedy(batcher, prompts[i % len(prompts)], names[i % len(names)], n) for i in range(rows)]
        )
        tokens = sum(len(list(stream)) for stream in streams)
        seconds = time.perf_counter() - start
    finally:
        batcher.close()
    report(f"mixed-adapter serving, {rows} rows", {"tokens": tokens, "tokens/s": round(tokens / seconds)})


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(name: str, figures: dict) -> None:
    print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items() if value is not None))


if __name__ == "__main__":
    main()
