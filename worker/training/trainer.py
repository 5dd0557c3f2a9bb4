"""The LoRA fine-tuning recipe: tokenize → wrap with LoRA → AdamW loop with warmup/decay → held-out loss.

Plain PyTorch, read top to bottom. The loss covers assistant tokens only (labels from
`app.chat_format.tokenize_example`), and each batch is padded only to its own longest example.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from app.chat_format import IGNORE_INDEX, TokenizedExample, tokenize_example
from worker.training.data import batches_per_epoch, collate, epoch_batches

Messages = list[dict]


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


@dataclass(frozen=True)
class StepReport:
    step: int  # 1-based, counted over all epochs
    total_steps: int
    epoch: int  # 1-based
    train_loss: float  # mean token loss of this step's batch
    learning_rate: float  # the rate this step used
    valid_loss: float | None  # set on the last step of each epoch when there are validation examples


@dataclass
class TrainingResult:
    model: PeftModel
    steps: int
    trained_tokens: int  # tokens of the trained sequences (after truncation), summed over epochs
    train_loss: float | None  # mean over the steps of the last epoch that ran
    valid_loss: float | None  # from the last epoch that finished
    stopped: bool


def linear_projection_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of the linear layers inside the model's blocks (attention and MLP), leaving out the LM head."""
    output_layer = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    names = {
        qualified_name.rsplit(".", 1)[-1]
        for qualified_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not output_layer
    }
    return tuple(sorted(names))


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate for 0-based `step`: linear warmup, then linear decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (total_steps - step) / max(1, total_steps - warmup_steps)


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many positions that is."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, int((targets != IGNORE_INDEX).sum())


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _autocast(device: torch.device) -> torch.autocast:
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def mean_token_loss(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_token_id: int
) -> float:
    """Loss per assistant token over all `examples`, without gradients."""
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = _on(device, collate(examples[start : start + batch_size], pad_token_id))
            with _autocast(device):
                loss_sum, tokens = token_loss_sum(model, batch)
            total, count = total + loss_sum.item(), count + tokens
    return total / count


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], max_length: int
) -> list[TokenizedExample]:
    """Tokenized conversations, leaving out those with no assistant token left to learn after truncation."""
    examples = [tokenize_example(tokenizer, messages, max_length) for messages in conversations]
    return [example for example in examples if any(label != IGNORE_INDEX for label in example.labels[1:])]


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_examples: list[Messages],
    validation_examples: list[Messages] | None,
    config: TrainingConfig,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Fine-tune a LoRA adapter on `model` (modified in place) and return it wrapped as a PeftModel."""
    torch.manual_seed(config.seed)
    train_set = _tokenize(tokenizer, train_examples, config.max_seq_length)
    held_out = _tokenize(tokenizer, validation_examples or [], config.max_seq_length)
    if not train_set:
        raise ValueError("no training example has an assistant token within max_seq_length")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules or linear_projection_names(model)),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    device = next(peft_model.parameters()).device
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = batches_per_epoch(len(train_set), config.batch_size)
    total_steps = config.n_epochs * steps_per_epoch
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))

    step = trained_tokens = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    for epoch in range(config.n_epochs):
        epoch_losses: list[float] = []
        for examples in epoch_batches(train_set, config.batch_size, epoch, config.seed):
            if should_stop is not None and should_stop():
                peft_model.eval()
                return TrainingResult(peft_model, step, trained_tokens, train_loss, valid_loss, stopped=True)
            peft_model.train()
            batch = _on(device, collate(examples, pad_token_id))
            with _autocast(device):
                loss_sum, tokens = token_loss_sum(peft_model, batch)
            loss = loss_sum / tokens
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step += 1
            trained_tokens += sum(len(example.input_ids) for example in examples)
            epoch_losses.append(loss.item())
            train_loss = sum(epoch_losses) / len(epoch_losses)
            epoch_done = step % steps_per_epoch == 0
            if epoch_done and held_out:
                valid_loss = mean_token_loss(peft_model, held_out, config.batch_size, pad_token_id)
            if on_step is not None:
                report_valid = valid_loss if epoch_done and held_out else None
                on_step(StepReport(step, total_steps, epoch + 1, loss.item(), learning_rate, report_valid))
    peft_model.eval()
    return TrainingResult(peft_model, step, trained_tokens, train_loss, valid_loss, stopped=False)


def save_adapter(peft_model: PeftModel, directory: Path) -> list[Path]:
    """Write the adapter weights and config (not the base model) and return the files written."""
    peft_model.save_pretrained(directory)
    return sorted(path for path in directory.rglob("*") if path.is_file())
