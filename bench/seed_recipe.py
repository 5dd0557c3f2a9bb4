"""The seed article's LoRA recipe against our worker's defaults, side by side in one run, on CPU.

    .venv/bin/python -m bench.seed_recipe [--threads 2] [--train 180] [--test 40] [--only ours|seed]

Both recipes fine-tune SmolLM2-135M-Instruct, each on a freshly loaded model, on the same training chats of the
synthetic support tickets of `bench/tickets.py` (user "Ticket: …", assistant "category: …\\npriority: …\\nteam: …"):

- seed: the article's recipe as written: `transformers.Trainer` with `TrainingArguments(num_train_epochs=3,
  per_device_train_batch_size=4, learning_rate=2e-4, seed=0, …)` and `peft.LoraConfig(r=8, lora_alpha=16,
  target_modules=["q_proj", "v_proj"])`; each example is the chat rendered with the tokenizer's chat template,
  tokenized with truncation to 512 tokens, loss on every token. The article's snippet passes no labels, so
  `DataCollatorForLanguageModeling(tokenizer, mlm=False)` makes them: it copies the input ids and ignores the
  pad token, which for SmolLM2 is also the end-of-turn token `<|im_end|>`, so that token is never trained.
- ours: the production worker's defaults, no knob touched: hyperparameters resolved from `"auto"` for the
  number of training chats, the base model's default `lora` options, a seeded 10 % held out (as the worker does
  without a validation file) for per-epoch validation and best-epoch selection, and `worker.training.train_lora`.

For each it reports the training wall time (the training call only, not the model load; ours includes its
per-epoch held-out evaluation), the steps, trained tokens per second (real tokens of the training sequences,
no padding, summed over epochs), and accuracy on the held-out test tickets: greedy generation from the prompt
of `app.ml.chat_format.render_prompt_ids`, one ticket at a time, the new tokens decoded without special tokens and
stripped, compared with the target exactly and line by line (the share of the 3 `key: value` lines right).
"""

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.ml.hyperparameters import resolve
from app.ml.training_options import resolve_training_options
from bench.tickets import ticket_split
from worker.job_runner import config_for
from worker.training import train_lora
from worker.training.data import split_held_out

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
SEED = 0
MAX_NEW_TOKENS = 24
Messages = list[dict]
Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class Trained:
    """A fine-tuned model and what its training cost."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    settings: str  # the resolved recipe, in one line
    wall: float  # seconds in the training call
    steps: int
    tokens: int  # real tokens of the training sequences, summed over epochs


FIELDS = ("category", "priority", "team")


@dataclass(frozen=True)
class Score:
    exact: float  # share of test tickets answered exactly
    by_field: tuple[float, ...]  # share of tickets with each answer line (category, priority, team) right, in place
    misses: list[tuple[str, str, str]]  # (ticket, target, answer) of the tickets answered wrongly

    @property
    def fields(self) -> float:
        """Share of all answer lines right."""
        return sum(self.by_field) / len(self.by_field)


def chat(text: str, answer: str) -> Messages:
    return [{"role": "user", "content": f"Ticket: {text}"}, {"role": "assistant", "content": answer}]


def train_seed(registry: BaseModelRegistry, chats: list[Messages]) -> Trained:
    """The article's recipe: HF Trainer, LoRA r=8 on q/v, loss on every token of the templated chat but the pad."""
    model, tokenizer = registry.load(MODEL_ID)
    texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in chats]
    dataset = [dict(tokenizer(text, truncation=True, max_length=512)) for text in texts]  # no `datasets` needed
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=3,
            per_device_train_batch_size=4,
            learning_rate=2e-4,
            report_to=[],
            save_strategy="no",
            logging_steps=10,
            seed=SEED,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    epochs = args.num_train_epochs
    settings = (
        f"{len(chats)} chats, {epochs:g} epochs, batch {args.per_device_train_batch_size}, lr {args.learning_rate:g}"
        f" ({args.lr_scheduler_type.value}, {args.warmup_steps} warmup steps), LoRA r=8 alpha=16 on q_proj/v_proj,"
        " loss on all tokens but <|im_end|> (the pad token)"
    )
    tokens = sum(len(example["input_ids"]) for example in dataset) * int(epochs)
    return Trained(model, tokenizer, settings, wall, trainer.state.global_step, tokens)


def train_ours(registry: BaseModelRegistry, chats: list[Messages]) -> Trained:
    """The worker's defaults (`_train_and_publish` without a validation file): "auto" everything."""
    model, tokenizer = registry.load(MODEL_ID)
    hyper = resolve(len(chats), "auto", "auto", "auto")
    options = resolve_training_options(registry.get(MODEL_ID), None)
    config = config_for(hyper, options, seed=SEED)
    train_indices, held_out_indices = split_held_out(len(chats), SEED)
    train = [chats[index] for index in train_indices]
    held_out = [chats[index] for index in held_out_indices]
    start = time.perf_counter()
    result = train_lora(model, tokenizer, train, held_out, config)
    wall = time.perf_counter() - start
    settings = (
        f"{len(train)} chats (+{len(held_out)} held out), {config.n_epochs} epochs, batch {config.batch_size},"
        f" lr {config.learning_rate:g} ({config.lr_scheduler}, warmup {config.warmup_ratio:g}),"
        f" LoRA r={config.lora_r} alpha={config.lora_alpha} dropout {config.lora_dropout:g}"
        f" on {'/'.join(config.target_modules or ('all',))}, loss on assistant tokens;"
        f" best epoch {result.best_epoch} of {result.epochs_run} (valid losses"
        f" {', '.join(f'{loss:.3f}' for loss in result.epoch_losses)})"
    )
    return Trained(result.model, tokenizer, settings, wall, result.steps, result.trained_tokens)


def answer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, ticket: str) -> str:
    """The model's greedy reply to one ticket, new tokens only, without special tokens, stripped."""
    prompt = render_prompt_ids(tokenizer, [{"role": "user", "content": f"Ticket: {ticket}"}])
    input_ids = torch.tensor([prompt])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True).strip()


def lines_right(target: str, reply: str) -> list[bool]:
    """For each line of the target ("key: value"), whether the reply has it on the same line."""
    replied = [line.strip() for line in reply.splitlines()]
    return [index < len(replied) and replied[index] == line for index, line in enumerate(target.splitlines())]


def score(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, test: Pairs) -> Score:
    model.eval()
    exact = 0
    right = [0] * len(FIELDS)
    misses = []
    with torch.no_grad():
        for ticket, target in test:
            reply = answer(model, tokenizer, ticket)
            exact += reply == target
            right = [count + hit for count, hit in zip(right, lines_right(target, reply), strict=True)]
            if reply != target:
                misses.append((ticket, target, reply))
    return Score(exact / len(test), tuple(count / len(test) for count in right), misses)


RECIPES: dict[str, Callable[[BaseModelRegistry, list[Messages]], Trained]] = {"seed": train_seed, "ours": train_ours}


def print_table(runs: dict[str, tuple[Trained, Score]], n_test: int) -> None:
    print(
        f"\n{'recipe':6} {'steps':>6} {'wall s':>8} {'s/step':>7} {'tokens':>8} {'tokens/s':>9}"
        f" {'exact':>7} {'fields':>7} {'cat':>6} {'prio':>6} {'team':>6}   (accuracy on {n_test} test tickets)"
    )
    for name, (trained, result) in runs.items():
        print(
            f"{name:6} {trained.steps:6d} {trained.wall:8.1f} {trained.wall / trained.steps:7.3f} {trained.tokens:8d}"
            f" {trained.tokens / trained.wall:9.1f} {result.exact:7.1%} {result.fields:7.1%}"
            + "".join(f" {share:6.1%}" for share in result.by_field)
        )
    if len(runs) == 2:
        ours, seed = runs["ours"][0], runs["seed"][0]
        speed = (ours.tokens / ours.wall) / (seed.tokens / seed.wall)
        per_step = (ours.wall / ours.steps) / (seed.wall / seed.steps)
        print(f"ours/seed: tokens/s {speed:.2f}x, wall time {ours.wall / seed.wall:.2f}x, s/step {per_step:.2f}x")


def print_misses(name: str, result: Score, limit: int = 3) -> None:
    print(f"{name}: {len(result.misses)} wrong; first {min(limit, len(result.misses))}:")
    for ticket, target, reply in result.misses[:limit]:
        print(f"  {ticket!r}\n    want {target!r}\n    got  {reply!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=180, help="training tickets (at most 180)")
    parser.add_argument("--test", type=int, default=40, help="test tickets (at most 40)")
    parser.add_argument("--only", choices=sorted(RECIPES), help="run one recipe only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = BaseModelRegistry(ROOT / ".loraport-test" / "models")
    train_pairs, test_pairs = ticket_split(SEED)
    chats = [chat(text, target) for text, target in train_pairs[: args.train]]
    test = test_pairs[: args.test]
    print(f"{len(chats)} training chats, {len(test)} test tickets, {args.threads} threads")
    runs: dict[str, tuple[Trained, Score]] = {}
    for name in [args.only] if args.only else list(RECIPES):
        trained = RECIPES[name](registry, chats)
        print(f"{name}: {trained.settings}")
        runs[name] = (trained, score(trained.model, trained.tokenizer, test))
    print_table(runs, len(test))
    for name, (_, result) in runs.items():
        print_misses(name, result)


if __name__ == "__main__":
    main()
