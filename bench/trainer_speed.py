"""Trainer speed on CPU: the old path against the new one, side by side in one run.

    .venv/bin/python -m bench.trainer_speed [--threads 2] [--copies 4] [--epochs 1] [--rounds 2]

Trains SmolLM2-135M-Instruct (LoRA r=16 on all projections, batch 4, lr 1e-3) on the support-ticket chats
of `tests/datasets.py` repeated `--copies` times, on a freshly loaded model per run, in interleaved rounds
(the fastest run of each path counts): the old path (full-vocabulary logits at every position, fp32),
then each lever added in turn. Prints trained tokens/s (real tokens, no padding), seconds
per step (overall and without the first step), the padding share, the epoch's mean train loss, and the
final model's loss and token accuracy on the training chats evaluated in fp32. The second and third
rows differ only by bf16, so their per-step losses show how far bf16 moves the loss.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import tokenize_example
from tests.helpers.datasets import TICKETS
from worker.training import StepReport, TrainingConfig, TrainingHooks, logits, train_lora, trainer

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Variant:
    name: str
    group_by_length: bool
    labelled_head: bool
    cpu_bf16: bool


PATHS = [
    Variant("old: full logits, fp32", False, False, False),
    Variant("+ LM head on labelled positions only", False, True, False),
    Variant("+ bf16 autocast, fp32 attention (new default)", False, True, True),
    Variant("+ length-grouped batches (option, off)", True, True, True),
]


def run(registry: BaseModelRegistry, path: Variant, conversations: list, epochs: int) -> dict:
    model, tokenizer = registry.load(MODEL_ID)
    config = TrainingConfig(
        n_epochs=epochs, batch_size=4, learning_rate=1e-3, seed=0, lora_r=16, lora_alpha=32,
        group_by_length=path.group_by_length, cpu_bf16=path.cpu_bf16,
    )  # fmt: skip
    reports: list[StepReport] = []
    stamps: list[float] = []

    def on_step(report: StepReport) -> None:
        reports.append(report)
        stamps.append(time.perf_counter())

    padded = mock.patch.object(trainer, "collate", _counting_collate(trainer.collate))
    head = mock.patch.object(logits, "supports_labelled_head", lambda lm: path.labelled_head)
    with padded as counter, head:
        start = time.perf_counter()
        result = train_lora(model, tokenizer, conversations, None, config, hooks=TrainingHooks(on_step=on_step))
        wall = time.perf_counter() - start
    examples = [tokenize_example(tokenizer, messages, 1024) for messages in conversations]
    final_loss, final_accuracy = trainer.evaluate(result.model, examples, 4, tokenizer.pad_token_id, cpu_bf16=False)
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # leaves out tokenizing and the first step's warm-up
    return {
        "tokens/s": result.trained_tokens / wall,
        "s/step": wall / result.steps,
        "steady s/step": steady,
        "padding": 1 - counter.real / counter.total,
        "train loss": result.train_loss,
        "final loss": final_loss,
        "final accuracy": final_accuracy,
        "losses": [r.train_loss for r in reports],
        "wall": wall,
    }


def _counting_collate(collate):
    def counting(examples, pad_token_id):
        batch = collate(examples, pad_token_id)
        counting.real += int(batch["attention_mask"].sum())
        counting.total += batch["attention_mask"].numel()
        return batch

    counting.real = counting.total = 0
    return counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="runs per path, interleaved; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = BaseModelRegistry(ROOT / ".loraport-test" / "models")
    conversations = [
        [{"role": "user", "content": f"Ticket: {question}"}, {"role": "assistant", "content": answer}]
        for question, answer in TICKETS * args.copies
    ]
    print(
        f"{len(conversations)} examples, batch 4, {args.epochs} epoch(s), {args.threads} threads,"
        f" fastest of {args.rounds} rounds"
    )
    runs: dict[str, list[dict]] = {path.name: [] for path in PATHS}
    for _ in range(args.rounds):  # interleaved, so that a busy moment of the machine hits every path alike
        for path in PATHS:
            runs[path.name].append(run(registry, path, conversations, args.epochs))
    rows = [(path, min(runs[path.name], key=lambda row: row["wall"])) for path in PATHS]
    baseline = rows[0][1]["tokens/s"]
    print(
        f"{'path':48} {'tokens/s':>9} {'speedup':>8} {'s/step':>7} {'steady':>7} {'padding':>8}"
        f" {'loss':>7} {'final':>7} {'acc':>6}"
    )
    for path, row in rows:
        print(
            f"{path.name:48} {row['tokens/s']:9.1f} {row['tokens/s'] / baseline:7.2f}x {row['s/step']:7.3f}"
            f" {row['steady s/step']:7.3f} {row['padding']:8.1%} {row['train loss']:7.4f}"
            f" {row['final loss']:7.4f} {row['final accuracy']:6.1%}"
        )
    fp32, bf16 = rows[1][1]["losses"], rows[2][1]["losses"]
    gap = max(abs(a - b) for a, b in zip(fp32, bf16, strict=True))
    print(f"per-step train loss, fp32 vs bf16 (same batches): max |diff| {gap:.4f}")
    print("  fp32:", " ".join(f"{loss:.3f}" for loss in fp32))
    print("  bf16:", " ".join(f"{loss:.3f}" for loss in bf16))


if __name__ == "__main__":
    main()
