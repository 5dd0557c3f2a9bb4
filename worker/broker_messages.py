"""Which jobs, evaluations and exports have a message in the Redis broker: waiting in the training queue, or delivered
to a worker and not yet acknowledged.

Reads kombu's Redis layout: one list per queue (plus one per priority step), and the `unacked` hash that
holds each delivered message until its task ends (late acknowledgement). A message is a JSON object whose
`headers.id` is the Celery task id.
"""

import json
from collections.abc import Iterable

from app.core.queue import (
    CUDA_TRAINING_QUEUE,
    TRAINING_QUEUE,
    evaluation_id_of_task,
    export_id_of_task,
    job_id_of_task,
)
from app.core.redis import redis_client

_UNACKED = "unacked"
_PRIORITY_SEPARATOR, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)  # kombu's defaults for Redis


def _task_id(message: dict) -> str | None:
    headers = message.get("headers")
    return headers.get("id") if isinstance(headers, dict) else None


def _work_ids(messages: Iterable[dict]) -> set[str]:
    task_ids = (_task_id(message) for message in messages)
    return {
        work_id
        for task_id in task_ids
        if task_id
        and (work_id := job_id_of_task(task_id) or evaluation_id_of_task(task_id) or export_id_of_task(task_id))
    }


def _parsed(entries: Iterable[bytes]) -> list:
    """JSON entries; one that is not (written by something else) is left out."""
    parsed = []
    for entry in entries:
        try:
            parsed.append(json.loads(entry))
        except ValueError:
            continue
    return parsed


def _lists(queue: str) -> list[str]:
    """The Redis lists a queue's waiting messages are in (one per priority step)."""
    return [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]


_QUEUES = [*_lists(TRAINING_QUEUE), *_lists(CUDA_TRAINING_QUEUE)]


def work_with_messages(redis_url: str) -> set[str]:
    """The ids of the jobs, evaluations and exports with a message in the broker (their prefixes tell them apart)."""
    with redis_client(redis_url) as client:
        waiting = _parsed(message for queue in _QUEUES for message in client.lrange(queue, 0, -1))
        # an unacknowledged entry is [message, exchange, routing key]
        delivered = [entry[0] for entry in _parsed(client.hvals(_UNACKED)) if isinstance(entry, list) and entry]
    return _work_ids(m for m in [*waiting, *delivered] if isinstance(m, dict))


def waiting_doorbells(redis_url: str, queue: str) -> list[str]:
    """The job ids of `queue`'s training messages not yet delivered, once per message: each will wake a worker
    that claims the next job in fair order (`app.core.fair_queue`) that it can run, whichever job it names."""
    with redis_client(redis_url) as client:
        waiting = _parsed(message for name in _lists(queue) for message in client.lrange(name, 0, -1))
    task_ids = (_task_id(message) for message in waiting if isinstance(message, dict))
    return [job_id for task_id in task_ids if task_id and (job_id := job_id_of_task(task_id))]
