"""What the training workers train on, as each reports when it starts (and withdraws when it stops): the API reads
it to refuse, at creation, jobs that no worker could run."""

import json
from dataclasses import asdict, dataclass

import redis

from app.core.redis import redis_client

KEY = "loraport:worker-devices"  # a hash: worker name → JSON list of its GPUs (empty: it trains on the CPU)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


def report(redis_url: str, worker: str, gpus: list[Gpu]) -> None:
    with redis_client(redis_url) as client:
        client.hset(KEY, worker, json.dumps([asdict(gpu) for gpu in gpus]))


def withdraw(redis_url: str, worker: str) -> None:
    with redis_client(redis_url) as client:
        client.hdel(KEY, worker)


def reported(redis_url: str) -> dict[str, list[Gpu]]:
    """Each reporting worker's GPUs; empty when no worker has reported (or Redis cannot say)."""
    try:
        with redis_client(redis_url) as client:
            entries = client.hgetall(KEY)
    except redis.RedisError:
        return {}
    return {name.decode(): [Gpu(**gpu) for gpu in json.loads(value)] for name, value in entries.items()}
