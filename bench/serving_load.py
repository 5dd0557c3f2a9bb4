"""Multi-adapter serving under load, against serving one adapter and against plain PEFT, in one run.

    .venv/bin/python -m bench.serving_load [--threads 1] [--clients 32] [--requests 192] [--tokens 32]
        [--adapters 1,4,16,64] [--naive-requests 8] [--cold 10] [--plot docs/serving-throughput.png] [--json PATH]

SmolLM2-135M-Instruct with random LoRA adapters (r=16, alpha 32, all 7 projections, `init_lora_weights=False`
so they change the outputs), saved with peft's `save_pretrained` and their checksum manifest as the worker saves
them, and uploaded to a real SeaweedFS S3 server started in a temporary directory. The engine fetches them from
there as in production (`verified_fetch(ObjectStore.download_prefix)`). What is measured:

1. Streaming load. `--clients` client threads share `--requests` short chat prompts (greedy, `max_tokens`
   `--tokens`); each sends one request at a time through `InferenceEngine.stream_tokens` and reads the token
   stream as it comes, turning it into text with the API's `Detokenizer`, as a streaming client of the API
   would. The engine is driven directly: the HTTP layer (admission, SSE) is measured elsewhere. Requests are
   spread round-robin over 1, 4, 16 and 64 (`--adapters`) distinct adapters, all warm (fetched and loaded
   beforehand: this is serving, not loading). Reported per case: generated tokens/s (tokens actually generated,
   an end-of-turn token included, over the wall time of the whole case), p50/p95 request latency (submission to
   last token) and p50/p95 time to first token. The engine has `max_batch_size` = `--clients` and room for all
   the adapters (`max_adapters` = the largest count, no byte budget).
   (a) single-adapter baseline: the 1-adapter case, every request on one adapter. It runs first and again last,
       and the baseline is the mean of the two runs, so a machine that speeds up or slows down during the run
       (another tenant on a shared host) shifts the baseline as much as the cases it brackets.
   (b) naive baseline: plain PEFT serving, one request at a time: `load_adapter` from the adapter's local
       directory, `set_adapter`, `generate`, `delete_adapter`. Slow, so measured on `--naive-requests` only.
   Ratios: tokens/s at N adapters over (a) (target at 16: >= 0.85: mixing adapters should cost little) and over
   (b) (target at 16: >= 5).
2. Cold adapter: on the same engine after the load runs (base model in memory, adapter cache full, so each new
   adapter also evicts the least recently used one), `engine.warm` of `--cold` adapters never seen before: S3
   fetch + sha256 check + load into the engine; p50/p95 in ms (target p50 < 150 ms). Then the load alone: the
   same adapters again once warming the others has pushed them out of memory (their files stay on local disk).
   The fetch alone (download + checksum into a scratch directory, no engine) is shown too.
3. Time to first token of a warm adapter under light load: one client, one request at a time; p50.

Prints a table, writes the figures as JSON (`--json`, by default beside the plot) and plots tokens/s against the
number of distinct adapters with both baselines as horizontal lines (`--plot`).

One intra-op thread by default: with another process busy on a 2-core machine, 2 OpenMP threads make every
forward 10-50x slower (they spin-wait for each other), which drowns what is measured here.
"""

import argparse
import json
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from app.cli.embedded.seaweed import SeaweedS3
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.ml.adapter_manifest import verified_fetch, write_manifest
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.serving.backend import SamplingParams
from app.serving.detokenize import Detokenizer
from app.serving.engine import InferenceEngine

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PREFIX = "bench/adapters"
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
S3_KEYS = {"access_key": "bench-access", "secret_key": "bench-secret"}


@dataclass(frozen=True)
class Request:
    tokens: int  # generated, an end-of-turn token included
    latency: float  # seconds from submission to the last token
    first_token: float  # seconds from submission to the first token


@dataclass(frozen=True)
class LoadResult:
    adapters: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "samples_ms": ms}


# --- adapters ----------------------------------------------------------------------------------------------------


def save_random_adapters(registry: BaseModelRegistry, device: str, names: list[str], directory: Path) -> Path:
    """One random r=16 adapter per name, each saved as the worker saves one (peft files + manifest) under
    `directory/<name>`; returns `directory`."""
    model, _ = registry.load(MODEL_ID, device=device)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    for index, name in enumerate(names):
        torch.manual_seed(index)
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):  # what `init_lora_weights=False` gives: nn.Linear's own init
                module.lora_A["default"].reset_parameters()
                module.lora_B["default"].reset_parameters()
                # Small B, as in a trained adapter: the replies change but stay coherent, so every case generates
                # about as many tokens (full-size random B makes replies end early, and unevenly, which would
                # measure row turnover instead of adapter cost). The compute is the same whatever the values.
                module.lora_B["default"].weight.data.mul_(0.05)
        target = directory / name
        peft_model.save_pretrained(target)
        write_manifest(target)
    return directory


def upload(store: ObjectStore, local: Path, names: list[str]) -> None:
    for name in names:
        store.upload_directory(f"{PREFIX}/{name}", local / name)


# --- the engine under load ---------------------------------------------------------------------------------------


def stream_one(
    engine: InferenceEngine, adapter: str, prompt: list[int], params: SamplingParams, detokenize: Detokenizer
) -> Request:
    """One request as a streaming client sees it."""
    start = time.perf_counter()
    first = None
    tokens = engine.stream_tokens(MODEL_ID, adapter, prompt, params)
    try:
        for token in tokens:
            if first is None:
                first = time.perf_counter()
            detokenize.feed(token.id)
            if detokenize.finished:
                break
        detokenize.close()
    finally:
        tokens.cancel()
    end = time.perf_counter()
    return Request(detokenize.completion_tokens, end - start, (first or end) - start)


def run_load(
    engine: InferenceEngine, jobs: list[tuple[str, list[int]]], clients: int, max_tokens: int
) -> tuple[list[Request], float]:
    """`clients` threads, each taking the next job when its previous request is done; the requests and the wall
    time of the whole run."""
    tokenizer, end_ids = engine.tokenizer(MODEL_ID), engine.end_of_turn_ids(MODEL_ID)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    pending = list(reversed(jobs))
    lock, go = threading.Lock(), threading.Event()
    done: list[Request] = []
    errors: list[BaseException] = []

    def client() -> None:
        go.wait()
        while True:
            with lock:
                if not pending or errors:
                    return
                adapter, prompt = pending.pop()
            try:
                done.append(stream_one(engine, adapter, prompt, params, Detokenizer(tokenizer, end_ids, [])))
            except BaseException as error:
                errors.append(error)
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(clients, len(jobs)))]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return done, seconds


def load_case(
    engine: InferenceEngine, prompts: list[list[int]], adapters: list[str], clients: int, max_tokens: int
) -> LoadResult:
    jobs = [(adapters[i % len(adapters)], prompt) for i, prompt in enumerate(prompts)]
    done, seconds = run_load(engine, jobs, clients, max_tokens)
    tokens = sum(r.tokens for r in done)
    latencies, firsts = [r.latency * 1000 for r in done], [r.first_token * 1000 for r in done]
    return LoadResult(
        adapters=len(adapters), requests=len(done), tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds,
        latency_p50_ms=percentile(latencies, 50), latency_p95_ms=percentile(latencies, 95),
        ttft_p50_ms=percentile(firsts, 50), ttft_p95_ms=percentile(firsts, 95),
    )  # fmt: skip


def light_ttft(engine: InferenceEngine, adapter: str, prompts: list[list[int]]) -> list[float]:
    """Time to first token, one request at a time (the rest of each generation is cancelled)."""
    params = SamplingParams(max_tokens=8, temperature=0)
    firsts = []
    for prompt in prompts:
        start = time.perf_counter()
        tokens = engine.stream_tokens(MODEL_ID, adapter, prompt, params)
        next(tokens)
        firsts.append(time.perf_counter() - start)
        tokens.cancel()
    return firsts


def timed_each(action: Callable[[str], object], names: list[str]) -> list[float]:
    seconds = []
    for name in names:
        start = time.perf_counter()
        action(name)
        seconds.append(time.perf_counter() - start)
    return seconds


# --- plain PEFT, one request at a time ---------------------------------------------------------------------------


def naive(
    registry: BaseModelRegistry, device: str, local: Path, jobs: list[tuple[str, list[int]]], max_tokens: int
) -> tuple[int, float]:
    """load_adapter → generate → delete_adapter per request; tokens generated and seconds (warm-up excluded)."""
    model, _ = registry.load(MODEL_ID, device=device)
    resident = jobs[0][0]
    peft_model = PeftModel.from_pretrained(model, local / resident, adapter_name="resident").eval()

    def serve(adapter: str, prompt: list[int]) -> int:
        peft_model.load_adapter(local / adapter, adapter_name="request")
        peft_model.set_adapter("request")
        input_ids = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            output = peft_model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                max_new_tokens=max_tokens,
            )  # fmt: skip
        peft_model.set_adapter("resident")
        peft_model.delete_adapter("request")
        return output.shape[1] - len(prompt)

    serve(*jobs[0])  # warm-up
    start = time.perf_counter()
    generated = sum(serve(adapter, prompt) for adapter, prompt in jobs)
    return generated, time.perf_counter() - start


# --- report --------------------------------------------------------------------------------------------------------


def plot(path: Path, loads: list[LoadResult], single: float, naive_rate: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r.adapters for r in loads]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(counts, [r.tokens_per_s for r in loads], marker="o", label="engine, requests spread over N adapters")
    single_label = f"(a) engine, one adapter, mean of first and last run ({single:.0f} tok/s)"
    ax.axhline(single, color="tab:green", linestyle="--", label=single_label)
    naive_label = f"(b) naive PEFT, one at a time ({naive_rate:.0f} tok/s)"
    ax.axhline(naive_rate, color="tab:red", linestyle=":", label=naive_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.minorticks_off()
    ax.set_ylim(bottom=0, top=max(single, naive_rate, *(r.tokens_per_s for r in loads)) * 1.15)
    ax.set_xlabel("distinct adapters in the load")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="2 on an idle 2-core machine only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=32)
    # Six requests per client: with two, much of the run is the ramp-down, a batch emptying at a pace set by the
    # replies' lengths rather than by the adapters (16 adapters / one adapter measured 0.82 with 64 requests).
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--adapters", default="1,4,16,64", help="distinct adapter counts, comma-separated")
    parser.add_argument("--naive-requests", type=int, default=8)
    parser.add_argument("--cold", type=int, default=10, help="adapters never seen before, for the cold latency")
    parser.add_argument("--ttft-requests", type=int, default=10, help="requests of the light-load TTFT")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "serving-throughput.png")
    parser.add_argument("--json", type=Path, default=None, help="default: the plot's path with .json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = sorted({1, *(int(c) for c in args.adapters.split(","))})
    json_path = args.json or args.plot.with_suffix(".json")

    registry = BaseModelRegistry(ROOT / ".loraport-test" / "models")
    pool = [f"pool-{i:02d}" for i in range(counts[-1])]
    cold = [f"cold-{i:02d}" for i in range(args.cold)]

    with tempfile.TemporaryDirectory(prefix="loraport-bench-") as scratch:
        scratch_dir = Path(scratch)
        server = SeaweedS3(scratch_dir / "s3", **S3_KEYS)
        endpoint = server.start()
        try:
            settings = Settings(
                s3_endpoint_url=endpoint, s3_bucket="bench", s3_access_key=S3_KEYS["access_key"],
                s3_secret_key=S3_KEYS["secret_key"],
            )  # fmt: skip
            store = ObjectStore(settings)
            store.ensure_bucket()
            print(f"S3 (SeaweedFS) at {endpoint}; saving and uploading {len(pool) + len(cold)} adapters ...")
            local = save_random_adapters(registry, args.device, pool + cold, scratch_dir / "adapters")
            upload(store, local, pool + cold)
            adapter_mb = sum(p.stat().st_size for p in (local / pool[0]).glob("*.safetensors")) / 1024**2
            fetch = verified_fetch(store.download_prefix)
            report = measure(args, counts, registry, fetch, local, pool, cold, scratch_dir)
        finally:
            server.stop()

    report["config"] = {
        "model": MODEL_ID, "adapter": "r=16, alpha 32, 7 projections", "adapter_file_mb": adapter_mb,
        "device": args.device, "threads": args.threads, "clients": args.clients, "requests": args.requests,
        "max_tokens": args.tokens, "naive_requests": args.naive_requests, "cold_adapters": args.cold,
        "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
    }  # fmt: skip
    print_report(report)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))
    loads = [LoadResult(**r) for r in report["load"]]
    title = (
        f"{MODEL_ID}, r=16 adapters, {args.device}, {args.threads} thread(s)\n"
        f"{args.clients} streaming clients, {args.requests} requests x <= {args.tokens} tokens"
    )
    plot(args.plot, loads, report["single_adapter_tokens_per_s"], report["naive"]["tokens_per_s"], title)
    print(f"wrote {json_path} and {args.plot}")


def measure(
    args: argparse.Namespace,
    counts: list[int],
    registry: BaseModelRegistry,
    fetch: Callable[[str, Path], None],
    local: Path,
    pool: list[str],
    cold: list[str],
    scratch: Path,
) -> dict[str, Any]:
    engine = InferenceEngine(
        registry, fetch, scratch / "adapter-cache", max_adapters=len(pool), device=args.device,
        max_batch_size=args.clients, max_adapter_bytes=None,
    )  # fmt: skip
    tokenizer = engine.tokenizer(MODEL_ID)  # loads the base model
    prompts = [
        render_prompt_ids(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        for i in range(args.requests)
    ]
    names = [f"{PREFIX}/{name}" for name in pool]
    for name in names:
        engine.warm(MODEL_ID, name)
    print(f"{len(names)} adapters warm; warming up ...")
    warm_up = min(args.clients, len(names), 8) or 1
    run_load(engine, [(names[i % len(names)], prompts[i % len(prompts)]) for i in range(warm_up)], warm_up, 4)

    ttft = light_ttft(engine, names[0], [prompts[i % len(prompts)] for i in range(args.ttft_requests)])
    loads = []
    for count in counts:
        result = load_case(engine, prompts, names[:count], args.clients, args.tokens)
        print(f"  {count} adapters: {result.tokens_per_s:.1f} tokens/s")
        loads.append(result)
    single_again = load_case(engine, prompts, names[:1], args.clients, args.tokens)
    print(f"  1 adapter again: {single_again.tokens_per_s:.1f} tokens/s")

    # Cold: never-seen adapters on the full cache; then the load alone once the pool has pushed them out.
    cold_names = [f"{PREFIX}/{name}" for name in cold]
    cold_seconds = timed_each(lambda name: engine.warm(MODEL_ID, name), cold_names)
    for name in names:
        engine.warm(MODEL_ID, name)
    still_loaded = set(engine.loaded_adapters(MODEL_ID)) & set(cold_names)
    if still_loaded:
        raise RuntimeError(f"{len(still_loaded)} cold adapters were not evicted; the load-alone timing would be wrong")
    load_seconds = timed_each(lambda name: engine.warm(MODEL_ID, name), cold_names)
    fetch_dir = scratch / "fetch-only"
    fetch_seconds = timed_each(lambda name: fetch(name, fetch_dir / name), cold_names)

    naive_jobs = [(pool[i % min(16, len(pool))], prompts[i % len(prompts)]) for i in range(args.naive_requests)]
    print(f"naive PEFT baseline on {len(naive_jobs)} requests ...")
    naive_tokens, naive_time = naive(registry, args.device, local, naive_jobs, args.tokens)

    first_single = next(r.tokens_per_s for r in loads if r.adapters == 1)
    single = (first_single + single_again.tokens_per_s) / 2
    naive_rate = naive_tokens / naive_time
    return {
        "load": [asdict(r) for r in loads],
        "single_adapter_again": asdict(single_again),
        "single_adapter_tokens_per_s": single,
        "naive": {
            "requests": len(naive_jobs),
            "tokens": naive_tokens,
            "seconds": naive_time,
            "tokens_per_s": naive_rate,
        },  # fmt: skip
        "ratios": {
            str(r.adapters): {"vs_single": r.tokens_per_s / single, "vs_naive": r.tokens_per_s / naive_rate}
            for r in loads
        },
        "cold_warm": ms_summary(cold_seconds),
        "load_only": ms_summary(load_seconds),
        "fetch_only": ms_summary(fetch_seconds),
        "light_ttft": ms_summary(ttft),
    }


def print_report(report: dict[str, Any]) -> None:
    config = report["config"]
    print()
    print(
        f"{config['model']}, adapters {config['adapter']} ({config['adapter_file_mb']:.1f} MB each), "
        f"{config['device']}, {config['threads']} thread(s)"
    )
    print(
        f"streaming load: {config['clients']} clients, {config['requests']} requests, max_tokens {config['max_tokens']}"
    )
    header = (
        f"{'case':<34} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'lat p50':>8} {'lat p95':>8} "
        f"{'ttft p50':>9} {'ttft p95':>9} {'/single':>8} {'/naive':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in report["load"]:
        ratios = report["ratios"][str(r["adapters"])]
        name = f"engine, {r['adapters']} adapter{'s' if r['adapters'] > 1 else ''}" + (
            " (a), first" if r["adapters"] == 1 else ""
        )
        print(
            f"{name:<34} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['latency_p50_ms']:>6.0f}ms {r['latency_p95_ms']:>6.0f}ms {r['ttft_p50_ms']:>7.0f}ms "
            f"{r['ttft_p95_ms']:>7.0f}ms {ratios['vs_single']:>8.2f} {ratios['vs_naive']:>7.1f}"
        )
    again = report["single_adapter_again"]
    name = "engine, 1 adapter again (a)"
    print(f"{name:<34} {again['tokens']:>7} {again['seconds']:>8.2f} {again['tokens_per_s']:>9.1f}")
    print(f"{'(a) baseline: the mean of both':<34} {'':>7} {'':>8} {report['single_adapter_tokens_per_s']:>9.1f}")
    n = report["naive"]
    name = "(b) naive PEFT, one at a time"
    print(f"{name:<34} {n['tokens']:>7} {n['seconds']:>8.2f} {n['tokens_per_s']:>9.1f}   ({n['requests']} requests)")
    if "16" in report["ratios"]:
        r16 = report["ratios"]["16"]
        print(
            f"16 adapters / one adapter = {r16['vs_single']:.2f} (target >= 0.85)   "
            f"16 adapters / naive = {r16['vs_naive']:.1f} (target >= 5)"
        )
    print()
    print(f"cold adapter ({config['cold_adapters']} never seen, base model loaded):")
    for key, label, extra in [
        ("cold_warm", "engine.warm: S3 fetch + checksum + load", "   (target p50 < 150 ms)"),
        ("load_only", "engine.warm: load alone (files on disk)", ""),
        ("fetch_only", "fetch + checksum alone (no engine)", ""),
    ]:
        s = report[key]
        print(f"  {label:<42} p50 {s['p50_ms']:>7.1f} ms   p95 {s['p95_ms']:>7.1f} ms{extra}")
    s = report["light_ttft"]
    print(f"time to first token, warm adapter, 1 client: p50 {s['p50_ms']:.1f} ms   p95 {s['p95_ms']:.1f} ms")


if __name__ == "__main__":
    main()
