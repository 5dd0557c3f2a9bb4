"""Batching for training: a seeded held-out split, a seeded order per epoch (optionally grouped by length),
and padding only up to the longest row of a batch."""

from collections.abc import Callable, Iterator, Sequence, Sized

import torch

from app.ml.chat_format import IGNORE_INDEX, TokenizedExample
from app.serving.answers import Stopped

# Examples sorted by length together: 50 batches' worth keeps batches nearly pad-free while the order stays
# random at a larger scale (the "megabatch" of HF's LengthGroupedSampler).
LENGTH_WINDOW_BATCHES = 50
# Tokenizing a large file takes minutes: a cancel is heard every this many examples (a few ms each).
STOP_CHECK_EXAMPLES = 64


def stop_check(should_stop: Callable[[], bool] | None, index: int) -> None:
    """Raises `Stopped` when `should_stop` says so, asked at every `STOP_CHECK_EXAMPLES`-th example."""
    if should_stop is not None and index % STOP_CHECK_EXAMPLES == 0 and should_stop():
        raise Stopped


def split_held_out(
    n_examples: int,
    seed: int,
    fraction: float = 0.1,
    min_held_out: int = 2,
    min_train: int = 8,
    max_held_out: int = 200,
) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) for a job without a validation file, fixed by `seed` and `n_examples`.

    Holds out max(`min_held_out`, round(`fraction` · n)) examples picked by a seeded permutation, at most
    `max_held_out` (enough to measure a model by; a set of 100k examples does not need 10k), but never leaves fewer
    than `min_train` to train on: a small set holds out fewer, and one of `min_train` examples or fewer holds out
    none (the job then trains on everything and reports no validation metrics).
    """
    wanted = min(max_held_out, max(min_held_out, round(fraction * n_examples)))
    n_held_out = max(0, min(wanted, n_examples - min_train))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_examples, generator=generator).tolist()
    return sorted(order[n_held_out:]), sorted(order[:n_held_out])


def epoch_order(n_examples: int, epoch: int, seed: int) -> list[int]:
    """A permutation that depends only on (seed, epoch), so a rerun or a resume sees the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def length_grouped_order(lengths: Sequence[int], batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled, sorted by length within windows of
    `LENGTH_WINDOW_BATCHES` batches so that rows of a batch have similar lengths, then the batches shuffled.

    Fixed by (seed, epoch) like `epoch_order`; only the last batch of a window may be short.
    """
    order = epoch_order(len(lengths), epoch, seed)
    window = LENGTH_WINDOW_BATCHES * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda index: lengths[index], reverse=True)
        batches += [chunk[offset : offset + batch_size] for offset in range(0, len(chunk), batch_size)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)
    return [batches[position] for position in torch.randperm(len(batches), generator=generator).tolist()]


def epoch_batches(
    examples: Sequence[Sized], batch_size: int, epoch: int, seed: int, group_by_length: bool = False
) -> Iterator[list]:
    """One epoch's batches of `examples` (anything with a length: tokens, or a pair's longer answer)."""
    if group_by_length:
        lengths = [len(example) for example in examples]
        for indices in length_grouped_order(lengths, batch_size, epoch, seed):
            yield [examples[index] for index in indices]
        return
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
