import torch

from app.ml.chat_format import IGNORE_INDEX, TokenizedExample
from worker.training.data import batches_per_epoch, collate, epoch_batches, epoch_order, length_grouped_order

PAD = 0


def example(length: int, first_label: int) -> TokenizedExample:
    ids = list(range(1, length + 1))
    return TokenizedExample(input_ids=ids, labels=[IGNORE_INDEX] * first_label + ids[first_label:])


def test_collate_pads_only_to_the_longest_example_of_the_batch():
    batch = collate([example(3, 1), example(5, 2)], pad_token_id=PAD)

    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD, PAD], [1, 2, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX] * 2 + [3, 4, 5],
    ]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    assert sorted(epoch_order(10, epoch=0, seed=1)) == list(range(10))
    assert epoch_order(10, epoch=0, seed=1) == epoch_order(10, epoch=0, seed=1)
    assert epoch_order(10, epoch=0, seed=1) != epoch_order(10, epoch=1, seed=1)
    assert epoch_order(10, epoch=0, seed=1) != epoch_order(10, epoch=0, seed=2)


def test_each_epoch_sees_every_example_once_in_batches_of_the_requested_size():
    examples = [example(n, 0) for n in range(1, 8)]
    batches = list(epoch_batches(examples, batch_size=3, epoch=0, seed=0))

    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert len(batches) == batches_per_epoch(len(examples), batch_size=3)
    assert sorted(len(e.input_ids) for batch in batches for e in batch) == list(range(1, 8))


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_length_grouped_batches_waste_far_less_padding_than_random_ones():
    lengths = [(index * 37) % 200 + 5 for index in range(400)]
    random_order = epoch_order(len(lengths), epoch=0, seed=0)
    random_batches = [random_order[start : start + 8] for start in range(0, len(lengths), 8)]
    grouped = length_grouped_order(lengths, batch_size=8, epoch=0, seed=0)

    assert sorted(i for batch in grouped for i in batch) == list(range(400))
    assert [len(batch) for batch in grouped] == [8] * 50
    assert padding(grouped, lengths) < 0.1 * padding(random_batches, lengths)


def test_length_grouped_order_is_fixed_by_seed_and_epoch_and_not_sorted_overall():
    lengths = [(index * 37) % 200 + 5 for index in range(1000)]
    first = length_grouped_order(lengths, batch_size=4, epoch=0, seed=1)

    assert first == length_grouped_order(lengths, batch_size=4, epoch=0, seed=1)
    assert first != length_grouped_order(lengths, batch_size=4, epoch=1, seed=1)
    longest = [max(lengths[i] for i in batch) for batch in first]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_length_grouped_epoch_sees_every_example_once():
    examples = [example(n, 0) for n in range(1, 8)]
    batches = list(epoch_batches(examples, batch_size=3, epoch=0, seed=0, group_by_length=True))

    assert sorted(len(batch) for batch in batches) == [1, 3, 3]
    assert sorted(len(e.input_ids) for batch in batches for e in batch) == list(range(1, 8))
