"""TRL's SFTTrainer with peft against our service's defaults, side by side in one run, on CPU (issue 21).

    .venv/bin/python -m bench.vs_trl [--datasets dispatch,orders] [--seeds 1,2,3] [--only ours|trl] [--quick]
        [--threads 2] [--out bench/results/vs_trl.json] [--plot docs/vs_trl.png]

Needs the bench extra (`make bench-deps`). Both sides fine-tune SmolLM2-135M-Instruct in fp32 on the same training
chats of the four datasets of `bench/vs_trl_data.py` (routing to three `key: value` lines, compact-JSON extraction,
one-label classification, one-sentence replies), 140 training and 40 test examples each, three seeds; the seed
draws the split and seeds the training. Each run is its own process, so it loads a fresh model and its peak memory
is its own:

- trl: `trl.SFTTrainer` with `peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")` and
  `SFTConfig(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=2e-3, lr_scheduler_type="linear",
  seed=seed, bf16=False, gradient_checkpointing=False, save_strategy="no", report_to="none")`, on a conversational
  prompt-completion dataset, so the loss is on the completion only (TRL's default for that format); it trains on
  every training example. Its wall time is `trainer.train()` alone.
- ours: the job's own path, no knob touched: hyperparameters resolved from "auto", the base model's `lora`
  defaults, a seeded held-out share and `worker.fine_tune.fine_tune` (selection run, refit where it pays, held-out
  report), whose published model is scored. Its training time is the selection run and the refit; its job time is
  the whole `fine_tune` call, the held-out report included.

Per run: the held-out TEST score (exact match, JSON compared parsed, or chrF for the replies; neither side trained
on the test examples), wall times, trained tokens per second (real tokens of the training sequences, no padding,
summed over epochs and runs, over the training time), peak resident memory of the process up to the end of
training (ours: of the job), and the padding share (pad positions over all positions the training forwards
computed). Test answers are greedy generations from `app.ml.chat_format.render_prompt_ids`, batched with left
padding, cut at the end-of-turn token, decoded without special tokens and stripped; scoring is timed by nothing.

Targets (issue 21), each dataset's means over the seeds: score ≥ TRL's − 2 points on every dataset; our whole job's
wall time ≤ 1.0× TRL's training time; our training tokens/s ≥ 2.5× TRL's.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from bench.vs_trl_data import DATASETS, Pair, chat

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
SIDES = ("ours", "trl")
SCORE_BATCH = 8
SCORE_MARGIN = -2.0  # points: ours may trail TRL by at most this much on every dataset
WALL_RATIO_MAX = 1.0  # our whole job's wall time over TRL's training time
SPEED_RATIO_MIN = 2.5  # our training tokens/s over TRL's


@dataclass(frozen=True)
class Run:
    side: str
    dataset: str
    seed: int
    score: float  # 0-100 on the test set
    training_s: float  # TRL: trainer.train(); ours: selection run + refit
    job_s: float  # TRL: = training_s; ours: the whole fine_tune call, held-out report included
    trained_tokens: int
    tokens_per_s: float  # trained_tokens / training_s
    peak_rss_mib: float
    padding_share: float | None
    settings: str  # the recipe as it ran, in one line


@dataclass(frozen=True)
class Trained:
    model: torch.nn.Module | None  # None: the published adapter lies in `adapter_dir`
    training_s: float
    job_s: float
    trained_tokens: int
    padding_share: float | None
    settings: str
    adapter_dir: Path | None = None


def train_trl(registry: BaseModelRegistry, train: list[Pair], seed: int, epochs: int) -> tuple[Trained, Any]:
    """The recipe a user copies from the issue: SFTTrainer + LoraConfig on all linear layers, completion-only loss."""
    from datasets import Dataset, disable_progress_bars  # type: ignore[import-untyped]
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    model, tokenizer = registry.load(MODEL_ID)
    rows = [
        {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}
        for prompt, answer in train
    ]
    with tempfile.TemporaryDirectory() as output_dir:
        args = SFTConfig(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=8,
            learning_rate=2e-3,
            lr_scheduler_type="linear",
            seed=seed,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_steps=10,
        )
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
        )
        counts = {"real": 0, "computed": 0}

        def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if module.training:
                counts["real"] += int(kwargs["attention_mask"].sum())
                counts["computed"] += kwargs["input_ids"].numel()

        assert trainer.model is not None and trainer.train_dataset is not None
        hook = trainer.model.register_forward_pre_hook(count, with_kwargs=True)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        hook.remove()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    tokens = sum(lengths) * epochs
    if counts["real"] != tokens:
        raise AssertionError(f"TRL trained {counts['real']} real tokens, expected {tokens}")
    settings = (
        f"{len(train)} chats, {epochs} epochs, batch 8, lr 2e-3 (linear, {args.warmup_steps} warmup steps),"
        f" LoRA r=16 alpha=32 dropout {lora.lora_dropout:g} on all-linear, completion-only loss,"
        f" {trainer.state.global_step} steps"
    )
    padding = 1 - counts["real"] / counts["computed"]
    return Trained(trainer.model, wall, wall, tokens, padding, settings), tokenizer


def train_ours(
    registry: BaseModelRegistry, train: list[Pair], seed: int, epochs: int | None, adapter_dir: Path
) -> tuple[Trained, Any]:
    """The job's defaults: "auto" hyperparameters, the model's `lora` options, `worker.fine_tune` end to end."""
    from app.ml.hyperparameters import resolve
    from app.ml.scoring.settings import EvaluationSettings
    from app.ml.training_options import resolve_training_options
    from worker.fine_tune import fine_tune, hold_out
    from worker.job_runner import config_for

    model, tokenizer = registry.load(MODEL_ID)
    chats = [chat(prompt, answer) for prompt, answer in train]
    hyper = resolve(len(chats), epochs or "auto", "auto", "auto")
    config = config_for(hyper, resolve_training_options(registry.get(MODEL_ID), None), seed=seed)
    split = hold_out(chats, None, seed)
    start = time.perf_counter()
    outcome = fine_tune(model, tokenizer, split, config, EvaluationSettings(), adapter_dir)
    job = time.perf_counter() - start
    selection, published = outcome.selection, outcome.publication
    settings = (
        f"{len(split.training)} chats (+{len(split.held_out)} held out), {config.n_epochs} epochs, batch"
        f" {config.batch_size}, lr {config.learning_rate:.3g} ({config.lr_scheduler}, warmup {config.warmup_ratio:g}),"
        f" LoRA r={config.lora_r} alpha={config.lora_alpha} dropout {config.lora_dropout:g}"
        f" on {'/'.join(config.target_modules or ('all',))}; best epoch {selection.best_epoch} of"
        f" {selection.epochs_run}; published {published.kind} ({published.epochs} epochs on"
        f" {published.training_examples}); report {outcome.report_seconds:.1f} s"
    )
    trained = Trained(
        None, outcome.training_seconds, job, outcome.trained_tokens, outcome.padding_share, settings, adapter_dir
    )
    return trained, tokenizer


def published_model(registry: BaseModelRegistry, trained: Trained) -> torch.nn.Module:
    """The model a side publishes: TRL's trained model; ours, the saved adapter on a fresh base, as it is served."""
    if trained.model is not None:
        return trained.model
    from peft import PeftModel

    base, _ = registry.load(MODEL_ID)
    return PeftModel.from_pretrained(base, str(trained.adapter_dir))


def answers(model: Any, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy replies, batched with left padding; new tokens up to the end of turn, without special tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    stops = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    replies = []
    model.eval()
    for start in range(0, len(prompts), SCORE_BATCH):
        rendered = [
            render_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts[start : start + SCORE_BATCH]
        ]
        width = max(len(ids) for ids in rendered)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rendered])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rendered])
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        for row in output[:, width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stops), len(row))
            replies.append(str(tokenizer.decode(row[:cut], skip_special_tokens=True)).strip())
    return replies


def run_one(side: str, dataset: str, seed: int, n_train: int, n_test: int, epochs: int | None) -> Run:
    """One side on one dataset and seed, in this process: train, note the peak memory, then score the test set."""
    data = DATASETS[dataset]
    split = data.make(seed, n_train, n_test)
    registry = BaseModelRegistry(ROOT / ".loraport-test" / "models")
    with tempfile.TemporaryDirectory() as adapter_dir:
        if side == "trl":
            trained, tokenizer = train_trl(registry, split.train, seed, epochs or 3)
        else:
            trained, tokenizer = train_ours(registry, split.train, seed, epochs, Path(adapter_dir))
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        model = published_model(registry, trained)
        longest = max(len(tokenizer(target, add_special_tokens=False)["input_ids"]) for _, target in split.test)
        replies = answers(model, tokenizer, [prompt for prompt, _ in split.test], longest + 8)
    score = statistics.fmean(data.score(reply, target) for reply, (_, target) in zip(replies, split.test, strict=True))
    return Run(
        side,
        dataset,
        seed,
        score,
        trained.training_s,
        trained.job_s,
        trained.trained_tokens,
        trained.trained_tokens / trained.training_s,
        peak_mib,
        trained.padding_share,
        trained.settings,
    )


def run_in_child(side: str, dataset: str, seed: int, args: argparse.Namespace) -> Run:
    """`run_one` in a fresh process with `args.threads` threads: its own model load and its own peak memory."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "run.json"
        command = [
            sys.executable,
            "-m",
            "bench.vs_trl",
            "--child",
            f"{side}:{dataset}:{seed}",
            "--child-out",
            str(out),
            "--train",
            str(args.train),
            "--test",
            str(args.test),
            "--threads",
            str(args.threads),
        ]
        if args.epochs:
            command += ["--epochs", str(args.epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        return Run(**json.loads(out.read_text()))


def spread(values: list[float]) -> float:
    """Sample standard deviation; 0 for one value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summary(runs: list[Run]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """dataset → side → measure → {mean, spread, min, max} over the seeds."""
    measures = ("score", "training_s", "job_s", "tokens_per_s", "peak_rss_mib", "padding_share")
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for run in runs:
        table.setdefault(run.dataset, {}).setdefault(run.side, {})
    for dataset, sides in table.items():
        for side in sides:
            mine = [run for run in runs if run.dataset == dataset and run.side == side]
            for measure in measures:
                values = [float(v) for run in mine if (v := getattr(run, measure)) is not None]
                if values:
                    sides[side][measure] = {
                        "mean": statistics.fmean(values),
                        "spread": spread(values),
                        "min": min(values),
                        "max": max(values),
                    }
    return table


def targets(table: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[dict[str, Any]]:
    """The issue's three targets, each checked on every dataset both sides ran."""
    both = {name: sides for name, sides in table.items() if set(SIDES) <= set(sides)}
    if not both:
        return []

    def mean(name: str, side: str, measure: str) -> float:
        return both[name][side][measure]["mean"]

    gaps = {name: mean(name, "ours", "score") - mean(name, "trl", "score") for name in both}
    walls = {name: mean(name, "ours", "job_s") / mean(name, "trl", "training_s") for name in both}
    speeds = {name: mean(name, "ours", "tokens_per_s") / mean(name, "trl", "tokens_per_s") for name in both}
    return [
        {
            "target": f"held-out score >= TRL's {SCORE_MARGIN:+g} points on every dataset",
            "by_dataset": gaps,
            "worst": min(gaps.values()),
            "passed": all(gap >= SCORE_MARGIN for gap in gaps.values()),
            "unit": "points",
        },
        {
            "target": f"our whole-job wall time <= {WALL_RATIO_MAX:.1f}x TRL's training time",
            "by_dataset": walls,
            "worst": max(walls.values()),
            "passed": all(r <= WALL_RATIO_MAX for r in walls.values()),
            "unit": "x",
        },
        {
            "target": f"our training tokens/s >= {SPEED_RATIO_MIN:g}x TRL's",
            "by_dataset": speeds,
            "worst": min(speeds.values()),
            "passed": all(r >= SPEED_RATIO_MIN for r in speeds.values()),
            "unit": "x",
        },
    ]


def print_report(runs: list[Run], table: dict, verdicts: list[dict[str, Any]]) -> None:
    columns = (
        ("score", "score", "{:.1f}"),
        ("train s", "training_s", "{:.0f}"),
        ("job s", "job_s", "{:.0f}"),
        ("tokens/s", "tokens_per_s", "{:.0f}"),
        ("peak MiB", "peak_rss_mib", "{:.0f}"),
        ("padding", "padding_share", "{:.1%}"),
    )
    for name, sides in table.items():
        data = DATASETS[name]
        seeds = sorted({run.seed for run in runs if run.dataset == name})
        print(f"\n{name} ({data.shape}; {data.metric}; seeds {', '.join(map(str, seeds))}): mean ± spread")
        print(f"{'side':5}" + "".join(f" {title:>17}" for title, _, _ in columns))
        for side, measures in sides.items():
            cells = []
            for _, key, fmt in columns:
                if key in measures:
                    cells.append(f"{fmt.format(measures[key]['mean'])} ± {fmt.format(measures[key]['spread'])}")
                else:
                    cells.append("-")
            print(f"{side:5}" + "".join(f" {cell:>17}" for cell in cells))
    for verdict in verdicts:
        unit = verdict["unit"]
        each = ", ".join(
            f"{name} {value:+.1f}" if unit == "points" else f"{name} {value:.2f}x"
            for name, value in verdict["by_dataset"].items()
        )
        worst = f"{verdict['worst']:+.1f} points" if unit == "points" else f"{verdict['worst']:.2f}x"
        print(f"{'PASS' if verdict['passed'] else 'FAIL'}  {verdict['target']}: worst {worst} ({each})")


def plot(table: dict, verdicts: list[dict[str, Any]], path: Path) -> None:
    """Score per dataset with error bars; wall times; and our speed-ups over TRL against the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    sides = [side for side in SIDES if any(side in table[name] for name in names)]
    colors = {"ours": "#2b7bba", "trl": "#e3872d"}
    figure, (scores, walls, speedups) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        x = [n + (i - (len(sides) - 1) / 2) * width for n in range(len(names))]
        means = [table[name].get(side, {}).get("score", {}).get("mean", 0.0) for name in names]
        errors = [table[name].get(side, {}).get("score", {}).get("spread", 0.0) for name in names]
        scores.bar(x, means, width, yerr=errors, capsize=3, label=side, color=colors[side])
    scores.set_xticks(range(len(names)), [f"{n}\n({DATASETS[n].metric})" for n in names])
    scores.set(ylabel="held-out test score (0-100)", ylim=(0, 105), title="Score, mean ± sd over seeds")
    scores.legend()
    bars = [
        ("trl", "training_s", "TRL training"),
        ("ours", "training_s", "ours training"),
        ("ours", "job_s", "ours whole job"),
    ]
    bars = [bar for bar in bars if bar[0] in sides]
    width = 0.8 / len(bars)
    for i, (side, key, label) in enumerate(bars):
        x = [n + (i - (len(bars) - 1) / 2) * width for n in range(len(names))]
        means = [table[name].get(side, {}).get(key, {}).get("mean", 0.0) for name in names]
        errors = [table[name].get(side, {}).get(key, {}).get("spread", 0.0) for name in names]
        color = colors[side] if key == "training_s" else "#9ecae1"
        walls.bar(x, means, width, yerr=errors, capsize=3, label=label, color=color)
    walls.set_xticks(range(len(names)), names)
    walls.set(ylabel="seconds", title="Wall time")
    walls.legend()
    if verdicts:
        wall, speed = verdicts[1]["by_dataset"], verdicts[2]["by_dataset"]
        places = range(len(names))
        speedups.bar(
            [n - 0.2 for n in places], [speed[n] for n in names], 0.4, label="tokens/s, ours ÷ TRL", color="#2b7bba"
        )
        speedups.bar(
            [n + 0.2 for n in places],
            [1 / wall[n] for n in names],
            0.4,
            label="TRL training ÷ our job",
            color="#9ecae1",
        )
        speedups.axhline(SPEED_RATIO_MIN, color="#2b7bba", linestyle="--", linewidth=1)
        speedups.axhline(1 / WALL_RATIO_MAX, color="#6baed6", linestyle=":", linewidth=1)
        speedups.set_xticks(list(places), names)
        speedups.legend()
    else:
        speedups.text(0.5, 0.5, "needs both sides", ha="center", transform=speedups.transAxes)
    speedups.set(ylabel="× (higher is better; lines: targets)", title="Ours over TRL")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def child(args: argparse.Namespace) -> None:
    side, dataset, seed = args.child.split(":")
    torch.set_num_threads(args.threads)
    run = run_one(side, dataset, int(seed), args.train, args.test, args.epochs)
    Path(args.child_out).write_text(json.dumps(asdict(run)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--only", choices=SIDES, help="run one side only")
    parser.add_argument("--quick", action="store_true", help="smoke test: one dataset, one seed, 40 + 16 examples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, help="training examples per dataset (default 140; --quick: 40)")
    parser.add_argument("--test", type=int, help="test examples per dataset (default 40; --quick: 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_trl.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "vs_trl.png")
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)  # both sides, for smoke tests only
    parser.add_argument("--child", help=argparse.SUPPRESS)  # side:dataset:seed, run in this process
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    names = args.datasets.split(",")
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.quick:
        names, seeds = names[:1], seeds[:1]
    args.train = args.train or (40 if args.quick else 140)
    args.test = args.test or (16 if args.quick else 40)
    # Converted once here, so that no run's time or peak memory holds the GGUF conversion.
    BaseModelRegistry(ROOT / ".loraport-test" / "models").materialize(MODEL_ID)
    sides = [args.only] if args.only else list(SIDES)
    print(
        f"{', '.join(names)}; seeds {seeds}; {args.train} training + {args.test} test examples; {args.threads} threads"
    )
    runs = []
    for name in names:
        for seed in seeds:
            for side in sides:
                run = run_in_child(side, name, seed, args)
                print(
                    f"{name} seed {seed} {side}: score {run.score:.1f}, training {run.training_s:.1f} s, job"
                    f" {run.job_s:.1f} s, {run.tokens_per_s:.0f} tokens/s, {run.peak_rss_mib:.0f} MiB; {run.settings}",
                    flush=True,
                )
                runs.append(run)
    table = summary(runs)
    verdicts = targets(table)
    print_report(runs, table, verdicts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": MODEL_ID,
        "threads": args.threads,
        "train": args.train,
        "test": args.test,
        "seeds": seeds,
        "datasets": names,
        "torch": torch.__version__,
    }
    record = {"settings": settings, "runs": [asdict(run) for run in runs], "summary": table, "targets": verdicts}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(table, verdicts, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
