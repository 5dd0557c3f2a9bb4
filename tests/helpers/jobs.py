"""Waiting on fine-tuning jobs through the SDK, as a client would."""

import time

import openai
from openai.types.fine_tuning import FineTuningJob


def wait_for_job(client: openai.OpenAI, job_id: str, timeout_s: float = 600) -> FineTuningJob:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
