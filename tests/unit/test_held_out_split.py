import pytest

from worker.training.data import split_held_out


def test_same_seed_and_size_give_the_same_split():
    assert split_held_out(100, seed=3) == split_held_out(100, seed=3)
    assert split_held_out(100, seed=3) != split_held_out(100, seed=4)


@pytest.mark.parametrize(
    ("n_examples", "held_out"),
    [(5, 0), (8, 0), (9, 1), (10, 2), (12, 2), (100, 10), (1000, 100), (2000, 200), (100_000, 200)],
)
def test_holds_out_a_tenth_at_least_two_at_most_200_but_keeps_eight_to_train_on(n_examples, held_out):
    train, valid = split_held_out(n_examples, seed=0)

    assert (len(train), len(valid)) == (n_examples - held_out, held_out)


@pytest.mark.parametrize("n_examples", [5, 10, 12, 100, 1000])
def test_split_is_disjoint_and_covers_every_example(n_examples):
    train, valid = split_held_out(n_examples, seed=11)

    assert not set(train) & set(valid)
    assert sorted(train + valid) == list(range(n_examples))


def test_held_out_examples_are_spread_over_the_file_not_taken_from_its_end():
    _, valid = split_held_out(1000, seed=0)

    assert min(valid) < 500 < max(valid)
