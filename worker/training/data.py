"""Batching for training: a seeded shuffle per epoch and padding only up to the longest row of a batch."""

from collections.abc import Iterator, Sequence

import torch

from app.chat_format import IGNORE_INDEX, TokenizedExample


def epoch_order(n_examples: int, epoch: int, seed: int) -> list[int]:
    """A permutation that depends only on (seed, epoch), so a rerun or a resume sees the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def epoch_batches(
    examples: Sequence[TokenizedExample], batch_size: int, epoch: int, seed: int
) -> Iterator[list[TokenizedExample]]:
    order = epoch_order(len(examples), epoch, seed)
    for start in range(0, len(order), batch_size):
        yield [examples[index] for index in order[start : start + batch_size]]


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and `labels`, right-padded to the longest example of this batch."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
