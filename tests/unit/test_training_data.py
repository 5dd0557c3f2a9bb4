import torch

from app.chat_format import IGNORE_INDEX, TokenizedExample
from worker.training.data import batches_per_epoch, collate, epoch_batches, epoch_order

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
