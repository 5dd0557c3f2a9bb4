"""The LoRA fine-tuning recipe: tokenize → wrap with LoRA → AdamW loop with warmup/decay → held-out metrics
each epoch → the best epoch's adapter.

Plain PyTorch, read top to bottom. The loss covers assistant tokens only (labels from
`app.ml.chat_format.tokenize_example`); each batch is padded only to its own longest example, and the
LM head runs only on the positions that have a label. On a CPU with native bf16 the frozen weights run in bf16.
"""

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from app.core.metrics import TRAINING_STEP_SECONDS, TRAINING_TOKENS, TRAINING_TOKENS_PER_SECOND
from app.ml.adapter_manifest import write_manifest
from app.ml.chat_format import IGNORE_INDEX, TokenizedExample, tokenize_example
from app.ml.lora_targets import lora_target_names
from worker.training.data import batches_per_epoch, collate, epoch_batches, stop_check
from worker.training.logits import causal_lm, labelled_logits
from worker.training.preference import PreferencePair, PreferenceSettings, preference_stats, tokenize_pairs
from worker.training.state import TrainingState, restore_rng_state, rng_state

Messages = list[dict]
FP32_SDPA = "loraport_fp32_sdpa"  # registered below


@dataclass
class TrainingConfig:
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: every linear projection of attention and MLP
    max_seq_length: int = 1024
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"  # after warmup: "linear" or "cosine" decay to 0, or "constant"
    max_grad_norm: float = 1.0  # 0: no clipping
    weight_decay: float = 0.0
    train_on_inputs: bool = False  # loss on every token rather than on assistant tokens only
    # Batches of similar lengths pad less, but on short chats of similar lengths (support tickets) they saved
    # ~3 % padding and put same-length, often near-duplicate, examples together, which learned worse
    # (final loss 0.49-0.58 vs 0.33-0.36 over two seeds, bench/trainer_speed.py data); worth it for long,
    # varied examples.
    group_by_length: bool = False
    cpu_bf16: bool = True  # where the CPU has AVX512-BF16/AMX: 1.3x faster steps (bench/trainer_speed.py)
    # "auto": bf16 autocast on a CUDA GPU that supports it and on a CPU as `cpu_bf16` says; "bf16" or "fp32" force
    # one path on any device (bf16 autocast runs on any x86 CPU, emulated and slower), as tests of both paths do.
    precision: Literal["auto", "bf16", "fp32"] = "auto"


@dataclass(frozen=True)
class StepReport:
    step: int  # 1-based, counted over all epochs
    total_steps: int
    epoch: int  # 1-based
    train_loss: float  # mean token loss of this step's batch
    learning_rate: float  # the rate this step used
    valid_loss: float | None  # set on the last step of each epoch when there are validation examples
    # Share of this batch's assistant tokens predicted exactly (argmax); for preference training, of its pairs
    # whose chosen answer got the higher reward. `accuracy_name` says which.
    train_mean_token_accuracy: float = 0.0
    valid_mean_token_accuracy: float | None = None  # set with valid_loss
    accuracy_name: str = "mean_token_accuracy"
    train_metrics: dict[str, float] = field(default_factory=dict)  # the objective's other means (reward margin, ...)
    valid_metrics: dict[str, float] | None = None  # set with valid_loss


@dataclass
class EpochReport:
    epoch: int  # 1-based
    step: int  # steps done so far
    valid_loss: float | None
    valid_mean_token_accuracy: float | None  # for preference training, the reward accuracy (`accuracy_name`)
    is_best: bool  # lowest valid_loss so far (without validation examples: always, the latest epoch is kept)
    model: PeftModel
    state: TrainingState  # to resume from; live tensors, so serialize it before returning
    accuracy_name: str = "mean_token_accuracy"


@dataclass
class TrainingResult:
    model: PeftModel
    steps: int
    trained_tokens: int  # tokens of the trained sequences (after truncation), summed over epochs
    train_loss: float | None  # mean over the steps of the last epoch that ran
    valid_loss: float | None  # of the returned model (the best epoch, unless stopped early)
    stopped: bool
    valid_mean_token_accuracy: float | None = None  # with valid_loss
    best_epoch: int | None = None  # 1-based epoch whose adapter is returned; None without validation examples
    epochs_run: int = 0  # epochs that finished
    epoch_losses: list[float] = field(default_factory=list)  # valid_loss of each finished epoch
    epoch_train_losses: list[float] = field(default_factory=list)  # mean step loss of each finished epoch
    epoch_accuracies: list[float] = field(default_factory=list)  # valid accuracy (`accuracy_name`) of each
    steps_per_epoch: int = 0
    computed_positions: int = 0  # token positions the forward passes computed, padding included (this attempt's)


@dataclass(frozen=True)
class TrainingHooks:
    """What a caller plugs into a training run: callbacks, and where the run starts (see `train_lora`)."""

    on_step: Callable[[StepReport], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_epoch_end: Callable[[EpochReport], None] | None = None
    resume: TrainingState | None = None
    start_from: Path | None = None


@dataclass(frozen=True)
class BatchStats:
    """Sums over a batch, so that batches add up: the loss, the units it averages over (answer tokens, or pairs),
    how many of them the model got right, and the objective's other sums."""

    loss_sum: torch.Tensor
    count: int
    correct: int
    extras: dict[str, float] = field(default_factory=dict)
    positions: int = 0  # token positions the forward computed, padding included


class Objective(Protocol):
    """What training minimises, over items of one kind (tokenized examples, or preference pairs)."""

    @property
    def accuracy_name(self) -> str: ...

    def stats(self, model: torch.nn.Module, items: Sequence[Any]) -> BatchStats: ...

    def tokens(self, item: Any) -> int: ...


@dataclass(frozen=True)
class Evaluated:
    loss: float
    accuracy: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class TokenStats:
    """Summed next-token loss over labelled positions, how many of them the argmax got right, and how many."""

    loss_sum: torch.Tensor
    correct: int
    count: int


def linear_projection_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the linear layers inside the model's blocks (attention and MLP): `lora_target_names`."""
    return lora_target_names(model)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear") -> float:
    """Multiplier of the peak learning rate for 0-based `step`: linear warmup, then `schedule`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = (total_steps - step) / max(1, total_steps - warmup_steps)  # 1 → 1/n over the decay
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (1 - remaining)))
    return remaining


def best_epoch(valid_losses: list[float]) -> int:
    """1-based epoch with the lowest validation loss; the first one on a tie."""
    return min(range(len(valid_losses)), key=lambda index: valid_losses[index]) + 1


def _stats(logits: torch.Tensor, targets: torch.Tensor) -> TokenStats:
    loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = targets != IGNORE_INDEX
    correct = int((logits.detach().argmax(dim=-1)[labelled] == targets[labelled]).sum())
    return TokenStats(loss_sum, correct, int(labelled.sum()))


def full_logits_token_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenStats:
    """Token statistics from logits over the whole vocabulary at every position (the model's own forward)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return _stats(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())


def token_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenStats:
    """Token statistics with the LM head applied only to positions that predict a label: same loss as
    `full_logits_token_stats`, without the head's work on prompt and padding positions."""
    logits, targets, _ = labelled_logits(model, batch)
    return _stats(logits, targets)


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _uses_bf16(device: torch.device, cpu_bf16: bool, precision: str = "auto") -> bool:
    """bf16 on CUDA when supported; on CPU when asked for and the CPU computes bf16 natively (AVX512-BF16 or
    AMX), as emulated bf16 is slower than fp32; `precision` "bf16" or "fp32" decides instead."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision is {precision!r}; choose 'auto', 'bf16' or 'fp32'")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", bool)() or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
    )
    return device.type == "cpu" and cpu_bf16 and native


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _fp32_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention computed in fp32 inside a bf16 autocast: PyTorch's CPU flash-attention backward is
    ~5x slower in bf16 than in fp32 (110 vs 20 ms per SmolLM2-135M step), while the projections gain from bf16."""
    with torch.autocast("cpu", enabled=False):
        output, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return output.to(query.dtype), weights


AttentionInterface.register(FP32_SDPA, _fp32_sdpa_attention)
# transformers builds no mask at all for an attention it has no mask function for: SDPA's own causal flag then
# aligns a query block with the keys' start, wrong as soon as the keys include a cached prefix.
AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)


@contextmanager
def cpu_bf16_training(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Frozen linear weights held in bf16 and SDPA attention run in fp32 while training; the model gets its
    own weights and attention back afterwards.

    CPU autocast casts frozen weights on every forward (it caches only trainable ones): ~10 % of a
    SmolLM2-135M step, saved here with the same results, as autocast runs those matmuls in bf16 anyway.
    Embeddings and the LM head (often tied to them) stay as they are.
    """
    lm = causal_lm(model)
    if not enabled or not isinstance(lm, PreTrainedModel):
        yield
        return
    embeddings = (lm.get_input_embeddings(), lm.get_output_embeddings())
    shared = {id(layer.weight) for layer in embeddings if layer is not None}
    frozen = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
        and not module.weight.requires_grad
        and module.weight.dtype == torch.float32
        and id(module.weight) not in shared
    ]
    originals = [module.weight.data for module in frozen]
    swap_attention = getattr(lm.config, "_attn_implementation", None) == "sdpa"
    for module in frozen:
        module.weight.data = module.weight.data.to(torch.bfloat16)
    if swap_attention:
        lm.set_attn_implementation(FP32_SDPA)
    try:
        yield
    finally:
        for module, original in zip(frozen, originals, strict=True):
            module.weight.data = original
        if swap_attention:
            lm.set_attn_implementation("sdpa")


@dataclass(frozen=True)
class SupervisedObjective:
    """Next-token loss on the assistant tokens (labels from `tokenize_example`)."""

    pad_token_id: int
    accuracy_name: str = "mean_token_accuracy"

    def stats(self, model: torch.nn.Module, items: Sequence[TokenizedExample]) -> BatchStats:
        batch = collate(items, self.pad_token_id)
        found = token_stats(model, _on(next(model.parameters()).device, batch))
        return BatchStats(found.loss_sum, found.count, found.correct, positions=batch["input_ids"].numel())

    def tokens(self, item: TokenizedExample) -> int:
        return len(item.input_ids)


@contextmanager
def _computing_with(model: torch.nn.Module, adapter: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model` computing with the `adapter` tensors in place of its own trainable ones, for a forward without
    gradients. Autocast's cache of cast weights is off meanwhile: it is keyed by parameter, so the forward with
    gradients after this one in the same autocast region would reuse these tensors' casts, gradient-less."""
    parameters = dict(model.named_parameters())
    own = {name: parameters[name].data for name in adapter}
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    for name, tensor in adapter.items():
        parameters[name].data = tensor
    try:
        yield
    finally:
        for name, tensor in own.items():
            parameters[name].data = tensor
        torch.set_autocast_cache_enabled(cache)


@dataclass(frozen=True)
class PreferenceObjective:
    """DPO and its variants (`worker.training.preference`); the reference is the model with `reference_adapter`
    (the adapter as training started), computed on each batch as the policy is."""

    pad_token_id: int
    settings: PreferenceSettings
    reference_adapter: dict[str, torch.Tensor]
    accuracy_name: str = "reward_accuracy"

    def stats(self, model: torch.nn.Module, items: Sequence[PreferencePair]) -> BatchStats:
        reference = partial(_computing_with, model, self.reference_adapter)
        found = preference_stats(model, items, self.pad_token_id, self.settings, reference)
        extras = {
            "reward_margin": found.margin_sum,
            "chosen_logps": found.chosen_logps_sum,
            "rejected_logps": found.rejected_logps_sum,
        }
        return BatchStats(found.loss_sum, found.pairs, found.correct, extras)

    def tokens(self, item: PreferencePair) -> int:
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)


def evaluate_items(
    model: torch.nn.Module,
    items: Sequence[Any],
    objective: Objective,
    batch_size: int,
    bf16: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Evaluated | None:
    """The objective's mean loss, accuracy and other metrics over all `items`, under bf16 autocast if `bf16`; None
    when `should_stop` said so between batches (a large validation file must not delay a cancel)."""
    device = next(model.parameters()).device
    model.eval()
    total, correct, count = 0.0, 0, 0
    extras: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            if should_stop is not None and should_stop():
                return None
            with _autocast(device, bf16):
                stats = objective.stats(model, items[start : start + batch_size])
            total, correct, count = total + stats.loss_sum.item(), correct + stats.correct, count + stats.count
            extras = {name: extras.get(name, 0.0) + value for name, value in stats.extras.items()}
    return Evaluated(total / count, correct / count, {name: value / count for name, value in extras.items()})


def evaluate(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_token_id: int,
    cpu_bf16: bool = False,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "auto",
) -> tuple[float, float] | None:
    """Loss per labelled token and the share of them predicted exactly, over all `examples`."""
    bf16 = _uses_bf16(next(model.parameters()).device, cpu_bf16, precision)
    found = evaluate_items(model, examples, SupervisedObjective(pad_token_id), batch_size, bf16, should_stop)
    return None if found is None else (found.loss, found.accuracy)


def held_out_metrics(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    config: TrainingConfig,
) -> tuple[float, float] | None:
    """Loss per assistant token and token accuracy of `model` on `conversations`, tokenized as training tokenizes
    them; None when none has an assistant token within `max_seq_length`."""
    examples = _tokenize(tokenizer, conversations, config.max_seq_length, config.train_on_inputs)
    if not examples:
        return None
    pad = pad_token_id(tokenizer)
    return evaluate(model, examples, config.batch_size, pad, config.cpu_bf16, precision=config.precision)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """What batches are padded with: the tokenizer's pad token, or 0 when it has none (padding is masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _tokenize(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    max_length: int,
    train_on_inputs: bool,
    should_stop: Callable[[], bool] | None = None,
) -> list[TokenizedExample]:
    """Tokenized conversations, leaving out those with no token left to learn after truncation. A large file takes
    minutes: `should_stop` is asked every `STOP_CHECK_EXAMPLES`, and `Stopped` raised when it says so."""
    examples = []
    for index, messages in enumerate(conversations):
        stop_check(should_stop, index)
        example = tokenize_example(tokenizer, messages, max_length, train_on_inputs)
        if any(label != IGNORE_INDEX for label in example.labels[1:]):
            examples.append(example)
    return examples


def _adapter_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable (LoRA) tensors only: a few MB, unlike the base model."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def _load_adapter_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)


def _count_step(seconds: float, tokens: int) -> None:
    """One step in the worker's metrics: its time, its tokens and their rate."""
    TRAINING_STEP_SECONDS.observe(seconds)
    TRAINING_TOKENS.inc(tokens)
    if seconds > 0:
        TRAINING_TOKENS_PER_SECOND.set(tokens / seconds)


def _train_step(
    model: PeftModel,
    items: Sequence[Any],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    bf16: bool,
    max_grad_norm: float,
) -> tuple[BatchStats, float]:
    """One optimizer step on `items`: their summed statistics and the learning rate used."""
    model.train()
    with _autocast(next(model.parameters()).device, bf16):
        stats = objective.stats(model, items)
    loss = stats.loss_sum / stats.count
    loss.backward()
    if max_grad_norm > 0:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=max_grad_norm)
    learning_rate = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stats, learning_rate


def _lora_model(model: PreTrainedModel, config: TrainingConfig, start_from: Path | None) -> PeftModel:
    """`model` wrapped with a fresh LoRA adapter, or with the adapter in `start_from` made trainable again."""
    if getattr(model, "is_loaded_in_4bit", False):
        # QLoRA: norms and the LM head in fp32 for stable training, inputs that carry gradients
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if start_from is not None:
        return PeftModel.from_pretrained(model, start_from, is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules or linear_projection_names(model)),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_examples: list[Messages],
    validation_examples: list[Messages] | None,
    config: TrainingConfig,
    *,
    hooks: TrainingHooks = TrainingHooks(),
) -> TrainingResult:
    """Fine-tune a LoRA adapter on `model` (modified in place) and return it wrapped as a PeftModel.

    With validation examples, the adapter of the epoch with the lowest validation loss is the one returned.
    `hooks.resume` continues a run from the state an earlier run's `on_epoch_end` reported, giving the same result
    as a run that never stopped; `hooks.start_from` trains further an adapter saved by `save_adapter` (its LoRA
    settings win over the config's). `hooks.should_stop` saying so while the examples are tokenized raises `Stopped`;
    once training runs, the result says `stopped`.
    """
    torch.manual_seed(config.seed)
    stop = hooks.should_stop
    train_set = _tokenize(tokenizer, train_examples, config.max_seq_length, config.train_on_inputs, stop)
    held_out = _tokenize(tokenizer, validation_examples or [], config.max_seq_length, config.train_on_inputs, stop)
    if not train_set:
        raise ValueError("no training example has an assistant token within max_seq_length")
    peft_model = _lora_model(model, config, hooks.start_from)
    objective = SupervisedObjective(pad_token_id(tokenizer))
    return _train(peft_model, train_set, held_out, objective, config, hooks)


def train_preference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: list[tuple[Messages, str, str]],
    validation_pairs: list[tuple[Messages, str, str]] | None,
    config: TrainingConfig,
    settings: PreferenceSettings,
    *,
    hooks: TrainingHooks = TrainingHooks(),
) -> TrainingResult:
    """Preference-train a LoRA adapter on (prompt, chosen, rejected) pairs, as `train_lora` trains on examples.

    The reference is the model before the first step (the base model, or the adapter in `hooks.start_from`): its
    log-probabilities are computed on each batch by the policy's own forward, with the starting adapter's weights.
    """
    torch.manual_seed(config.seed)
    train_set = tokenize_pairs(tokenizer, train_pairs, config.max_seq_length, hooks.should_stop)
    held_out = tokenize_pairs(tokenizer, validation_pairs or [], config.max_seq_length, hooks.should_stop)
    if not train_set:
        raise ValueError("no preference pair has an answer token within max_seq_length")
    peft_model = _lora_model(model, config, hooks.start_from)
    objective = PreferenceObjective(pad_token_id(tokenizer), settings, _adapter_weights(peft_model))
    return _train(peft_model, train_set, held_out, objective, config, hooks)


def _train(
    peft_model: PeftModel,
    train_set: Sequence[Any],
    held_out: Sequence[Any],
    objective: Objective,
    config: TrainingConfig,
    hooks: TrainingHooks,
) -> TrainingResult:
    """The training loop shared by every objective: AdamW with warmup and decay, held-out metrics at each epoch's
    end, the best epoch kept, and the state to resume from."""
    device = next(peft_model.parameters()).device
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    # fused: one kernel for all LoRA tensors instead of several per tensor (7 % of a SmolLM2 CPU step)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    steps_per_epoch = batches_per_epoch(len(train_set), config.batch_size)
    total_steps = config.n_epochs * steps_per_epoch
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, config.lr_scheduler)
    )
    bf16 = _uses_bf16(device, config.cpu_bf16, config.precision)

    run = TrainingState(
        epochs_done=0, step=0, trained_tokens=0, train_loss=None, adapter={}, optimizer={}, scheduler={}, rng={},
        valid_losses=[], valid_accuracies=[], best_epoch=None, best_adapter=None,
    )  # fmt: skip
    if (resume := hooks.resume) is not None:
        run = replace(
            resume,
            valid_losses=list(resume.valid_losses),
            valid_accuracies=list(resume.valid_accuracies),
            train_losses=list(resume.train_losses),
        )
        if resume.step != resume.epochs_done * steps_per_epoch:
            raise ValueError(f"cannot resume: step {resume.step} is not the end of epoch {resume.epochs_done}")
        _load_adapter_weights(peft_model, resume.adapter)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        restore_rng_state(resume.rng)
    computed_positions = 0
    # A copy of the best epoch's adapter, to return if later epochs do worse.
    best_weights = run.best_adapter or (_adapter_weights(peft_model) if run.best_epoch else None)

    def result(stopped: bool) -> TrainingResult:
        """The run so far; a run that finished gets the best epoch's adapter back when a later one was worse."""
        peft_model.eval()
        latest = (run.valid_losses[-1], run.valid_accuracies[-1]) if run.valid_losses else (None, None)
        outcome = TrainingResult(
            model=peft_model, steps=run.step, trained_tokens=run.trained_tokens, train_loss=run.train_loss,
            valid_loss=latest[0], valid_mean_token_accuracy=latest[1], stopped=stopped,
            best_epoch=run.best_epoch, epochs_run=run.epochs_done, epoch_losses=list(run.valid_losses),
            epoch_train_losses=list(run.train_losses), epoch_accuracies=list(run.valid_accuracies),
            steps_per_epoch=steps_per_epoch, computed_positions=computed_positions,
        )  # fmt: skip
        if not stopped and run.best_epoch is not None and run.best_adapter is not None:
            _load_adapter_weights(peft_model, run.best_adapter)
            index = run.best_epoch - 1
            outcome.valid_loss = run.valid_losses[index]
            outcome.valid_mean_token_accuracy = run.valid_accuracies[index]
        return outcome

    for epoch in range(run.epochs_done, config.n_epochs):
        step_losses: list[float] = []
        with cpu_bf16_training(peft_model, enabled=device.type == "cpu" and bf16):
            for items in epoch_batches(train_set, config.batch_size, epoch, config.seed, config.group_by_length):
                if hooks.should_stop is not None and hooks.should_stop():
                    return result(stopped=True)
                started = time.perf_counter()
                stats, learning_rate = _train_step(
                    peft_model, items, objective, optimizer, scheduler, bf16, config.max_grad_norm
                )
                loss, accuracy = stats.loss_sum.item() / stats.count, stats.correct / stats.count  # waits for the GPU
                metrics = {name: value / stats.count for name, value in stats.extras.items()}
                run.step += 1
                tokens = sum(objective.tokens(item) for item in items)
                _count_step(time.perf_counter() - started, tokens)
                run.trained_tokens += tokens
                computed_positions += stats.positions or tokens
                step_losses.append(loss)
                report = StepReport(
                    run.step, total_steps, epoch + 1, loss, learning_rate, None, accuracy,
                    accuracy_name=objective.accuracy_name, train_metrics=metrics,
                )  # fmt: skip
                if run.step % steps_per_epoch == 0 and held_out:
                    evaluated = evaluate_items(
                        peft_model, held_out, objective, config.batch_size, bf16, hooks.should_stop
                    )
                    if evaluated is None:
                        return result(stopped=True)
                    run.valid_losses.append(evaluated.loss)
                    run.valid_accuracies.append(evaluated.accuracy)
                    report = replace(
                        report,
                        valid_loss=evaluated.loss,
                        valid_mean_token_accuracy=evaluated.accuracy,
                        valid_metrics=evaluated.metrics,
                    )
                if hooks.on_step is not None:
                    hooks.on_step(report)
        run.epochs_done, run.train_loss = epoch + 1, sum(step_losses) / len(step_losses)
        run.train_losses.append(run.train_loss)
        is_best = True
        if run.valid_losses:
            is_best = best_epoch(run.valid_losses) == epoch + 1
            if is_best:
                run.best_epoch, best_weights = epoch + 1, _adapter_weights(peft_model)
            run.best_adapter = None if is_best else best_weights
        if hooks.on_epoch_end is not None:
            run.adapter = {name: p.detach() for name, p in peft_model.named_parameters() if p.requires_grad}
            run.optimizer, run.scheduler, run.rng = optimizer.state_dict(), scheduler.state_dict(), rng_state()
            hooks.on_epoch_end(
                EpochReport(
                    epoch=epoch + 1,
                    step=run.step,
                    valid_loss=run.valid_losses[-1] if run.valid_losses else None,
                    valid_mean_token_accuracy=run.valid_accuracies[-1] if run.valid_losses else None,
                    is_best=is_best,
                    model=peft_model,
                    state=run,
                    accuracy_name=objective.accuracy_name,
                )
            )
    return result(stopped=False)


def save_adapter(peft_model: PeftModel, directory: Path) -> list[Path]:
    """Write the adapter weights and config (not the base model) with their checksum manifest, and return the
    files written."""
    peft_model.save_pretrained(str(directory))
    write_manifest(directory)
    return sorted(path for path in directory.rglob("*") if path.is_file())
