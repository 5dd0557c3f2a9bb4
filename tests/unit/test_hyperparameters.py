import pytest

from app.ml.hyperparameters import auto_batch_size, auto_epochs, learning_rate, resolve


@pytest.mark.parametrize("examples", [10, 12, 20, 33, 34, 50, 180, 1000, 8333, 8334, 50_000, 1_000_000])
def test_auto_epochs_follow_openai_rule(examples: int) -> None:
    epochs = auto_epochs(examples)

    assert 1 <= epochs <= 25
    if examples * 3 < 100:  # tiny sets: raised so the model sees ~100 examples
        assert epochs >= 3 and examples * epochs > 100 - examples
    elif examples * 3 > 25_000:  # huge sets: lowered to ~25,000 examples seen, at least one epoch
        assert epochs < 3 and (examples * epochs <= 25_000 or epochs == 1)
    else:
        assert epochs == 3


def test_auto_batch_size_grows_with_the_data_within_bounds() -> None:
    sizes = [auto_batch_size(n) for n in (10, 50, 180, 400, 10_000)]

    assert sizes == sorted(sizes)
    assert sizes[0] == 1 and sizes[-1] == 16
    assert auto_batch_size(180) == 8


def test_resolve_keeps_numbers_given_and_fills_auto_ones() -> None:
    assert resolve(180, "auto", "auto", "auto").as_dict() == {
        "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0
    }  # fmt: skip
    assert resolve(180, 5, 2, 0.5).as_dict() == {"n_epochs": 5, "batch_size": 2, "learning_rate_multiplier": 0.5}


def test_learning_rate_scales_with_the_square_root_of_the_batch() -> None:
    assert learning_rate(2e-3, 1.0, 8) == pytest.approx(2e-3)
    assert learning_rate(2e-3, 0.5, 8) == pytest.approx(1e-3)
    assert learning_rate(2e-3, 1.0, 2) == pytest.approx(1e-3)
    assert learning_rate(2e-3, 1.0, 32) == pytest.approx(4e-3)
