"""An upload's validator in a child process: the same answers as in-process, bounded slots, a dead child a 503."""

import os
import signal

import pytest

from app.api.files.validation_process import ValidationProcess, ValidationSlots
from app.core.errors import Overloaded, ServiceUnavailable
from app.core.settings import Settings
from app.ml.datasets.validation import DatasetValidator

_GOOD = b"".join(b'{"prompt": "q%d", "completion": "a"}\n' % i for i in range(12))


def test_the_child_validates_as_the_validator_does() -> None:
    data = _GOOD + b'{"prompt": 1}\nnot json\n'
    here = DatasetValidator()
    child = ValidationProcess(Settings())
    try:
        for start in range(0, len(data), 7):  # chunks cut lines anywhere
            here.feed_chunk(data[start : start + 7])
            child.feed_chunk(data[start : start + 7])
            assert child.error_count == here.error_count
        assert child.finish() == here.finish()
    finally:
        child.close()
    assert here.error_count == 2


def test_a_child_that_died_is_a_503_not_a_hang() -> None:
    child = ValidationProcess(Settings())
    try:
        child.feed_chunk(_GOOD)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(ServiceUnavailable):
            child.feed_chunk(_GOOD)
            child.finish()
    finally:
        child.close()


def test_slots_bound_each_organisation_and_the_total() -> None:
    slots = ValidationSlots(total=3, per_organization=2)
    with slots.take("a"), slots.take("a"):
        with pytest.raises(Overloaded, match="already has 2 uploads"):
            slots.take("a").__enter__()
        with slots.take("b"), pytest.raises(Overloaded, match="busy"):
            slots.take("c").__enter__()
    with slots.take("a"), slots.take("a"), slots.take("c"):  # all given back
        pass
