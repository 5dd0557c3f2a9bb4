"""Seeds are bounded (audit #19): torch's generator refuses seeds of 2^64 or more, which was a 500; now the request
is a 400 naming `seed`, before anything runs."""

import httpx
import pytest

from tests.helpers.tiny_models import TINY_MODEL_ID

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": TINY_MODEL_ID, "messages": CHAT, "max_tokens": 1}),
        ("/v1/completions", {"model": TINY_MODEL_ID, "prompt": "hi", "max_tokens": 1}),
    ],
)
@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1])
def test_a_seed_outside_64_bits_is_a_400_naming_it(http: httpx.Client, path: str, body: dict, seed: int) -> None:
    answer = http.post(path, json=body | {"seed": seed})

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "seed"


def test_the_largest_64_bit_seed_generates(http: httpx.Client) -> None:
    body = {"model": TINY_MODEL_ID, "messages": CHAT, "max_tokens": 1, "seed": 2**63 - 1, "n": 2}
    assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_a_job_seed_past_2_31_is_a_400(http: httpx.Client) -> None:
    body = {"model": TINY_MODEL_ID, "training_file": "file-none", "seed": 2**31}
    answer = http.post("/v1/fine_tuning/jobs", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "seed"
