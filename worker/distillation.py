"""Distillation, the first phase of a distillation job: a teacher model answers the job's prompts through the
serving engine (continuous batching, the teacher's adapter in a slot), and its answers become a training file of
the organisation's, which the student then fine-tunes on like any other.

The answers are written in the order of the prompts file, one conversation per prompt, so that a resumed job
finds them again instead of asking the teacher twice, and so that a user can inspect the file and reuse it.
"""

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.core import job_state
from app.core.db import transaction
from app.core.lifecycle import JOBS
from app.core.settings import Settings
from app.core.storage import ObjectStore, file_key, store_for
from app.core.tables import FineTuningJob, Organization, StoredFile
from app.ml.adapter_manifest import verified_fetch
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.ml.datasets import CHAT
from app.ml.devices import compute_device
from app.ml.models import UnknownModel, resolve
from app.serving.answers import Stopped, answer_text, answering
from worker.datasets import load_examples, load_prompts
from worker.failures import TaskFailed
from worker.results import store_job_file

TEACHER = "teacher"


def teacher_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path | None,
    prompts: Sequence[list[dict]],
    max_tokens: int,
    temperature: float,
    seed: int,
    on_answer: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """The teacher's answer to each prompt (a conversation ending before the answer): the base `model`, or it with
    the adapter in `adapter_dir`. Sampled at `temperature` (0: greedy) with a seed per prompt, so a rerun gives the
    same answers; `on_answer(done)` after each one, in order. `should_stop` is asked before each answer is read (a
    cancelled job must not keep its worker answering thousands of prompts): when it says so, the requests left are
    cancelled and `Stopped` is raised."""
    adapters = {TEACHER: adapter_dir} if adapter_dir is not None else {}
    with answering(model, tokenizer, adapters) as (batcher, end_ids):
        adapter = TEACHER if adapter_dir is not None else None
        streams = [
            batcher.submit(
                render_prompt_ids(tokenizer, prompt), adapter, max_tokens, temperature, 1.0, seed + i, end_ids
            )
            for i, prompt in enumerate(prompts)
        ]
        answers: list[str] = []
        for stream in streams:
            if should_stop is not None and should_stop():
                for request in streams[len(answers) :]:
                    request.cancel()
                raise Stopped
            answers.append(answer_text(stream, tokenizer, end_ids).strip())
            if on_answer is not None:
                on_answer(len(answers))
        return answers


def distilled_jsonl(prompts: Sequence[list[dict]], answers: Sequence[str]) -> bytes:
    """One chat example per prompt, the teacher's answer as the assistant's turn."""
    lines = [
        json.dumps({"messages": [*prompt, {"role": "assistant", "content": answer}]}, ensure_ascii=False)
        for prompt, answer in zip(prompts, answers, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def store_distilled_file(session: Session, store: ObjectStore, job: FineTuningJob, content: bytes) -> StoredFile:
    """The teacher's answers as a processed `fine-tune` file of the job's organisation."""
    filename = f"distilled-{job.id}.jsonl"
    return store_job_file(
        session, store, job, filename, content, "fine-tune", file_key, example_count=content.count(b"\n"), format=CHAT
    )


def distilled_examples(
    settings: Settings,
    registry: BaseModelRegistry,
    job: FineTuningJob,
    training_key: str,
    validation_key: str | None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[list[dict]], list[list[dict]] | None]:
    """The phase itself: the training conversations (the teacher's answers to the training prompts, asked once: a
    resumed job reads them back from their file), and the validation prompts answered when there is a validation
    file (None otherwise: the job holds out a share of the training conversations). Raises `Stopped` when
    `should_stop` says so while the teacher answers."""
    url, store = settings.require("database_url"), store_for(settings)
    training_prompts = load_prompts(store, training_key)
    validation_prompts = load_prompts(store, validation_key) if validation_key else []
    distilled = _distilled_file_conversations(url, store, job)
    asked = (training_prompts if distilled is None else []) + validation_prompts
    answers = _ask_teacher(settings, registry, job, asked, should_stop) if asked else []
    if distilled is None:
        distilled = _conversations(training_prompts, answers[: len(training_prompts)])
        _record_distilled_file(url, store, job, distilled)
    held_out = _conversations(validation_prompts, answers[len(asked) - len(validation_prompts) :])
    return distilled, held_out if validation_key else None


def _conversations(prompts: list[list[dict]], answers: list[str]) -> list[list[dict]]:
    return [
        [*prompt, {"role": "assistant", "content": answer}] for prompt, answer in zip(prompts, answers, strict=True)
    ]


def _distilled_file_conversations(url: str, store: ObjectStore, job: FineTuningJob) -> list[list[dict]] | None:
    """The teacher's answers an earlier attempt of this job wrote, if it got that far."""
    file_id = job.method["distillation"].get("generated_file")
    if file_id is None:
        return None
    with transaction(url) as session:
        key = session.scalar(
            select(StoredFile.storage_key).where(
                StoredFile.id == file_id, StoredFile.organization_id == job.organization_id
            )
        )
    return load_examples(store, key) if key else None


def _ask_teacher(
    settings: Settings,
    registry: BaseModelRegistry,
    job: FineTuningJob,
    prompts: list,
    should_stop: Callable[[], bool] | None,
) -> list[str]:
    url, options = settings.require("database_url"), job.method["distillation"]
    with transaction(url) as session:
        org = session.get_one(Organization, job.organization_id)
        try:
            teacher = resolve(session, registry, org, options["teacher_model"])
        except UnknownModel:
            message = f"The teacher model '{options['teacher_model']}' was deleted before the job ran"
            raise TaskFailed("model_not_found", message, "method.distillation.teacher_model") from None
        message = f"Generating the teacher's answers ({options['teacher_model']}) to {len(prompts)} prompts"
        if JOBS.holds(session, job.id, job.attempt):
            job_state.add_event(session, job.id, message, data={"prompts": len(prompts)})
    model, tokenizer = registry.load(teacher.base_model, device=compute_device(settings))
    progress = _TeacherProgress(url, job.id, job.attempt, len(prompts))
    with tempfile.TemporaryDirectory() as directory:
        adapter_dir = None
        if teacher.adapter_prefix:
            adapter_dir = Path(directory)
            verified_fetch(store_for(settings).download_prefix)(teacher.adapter_prefix, adapter_dir)
        return teacher_answers(
            model,
            tokenizer,
            adapter_dir,
            prompts,
            options["max_tokens"],
            options["temperature"],
            job.seed,
            progress,
            should_stop,
        )


class _TeacherProgress:
    """An event each time another tenth of the prompts has its answer (while `attempt` still runs the job)."""

    def __init__(self, url: str, job_id: str, attempt: int, total: int) -> None:
        self.url, self.job_id, self.attempt, self.total, self._reported = url, job_id, attempt, total, 0

    def __call__(self, done: int) -> None:
        if done * 10 // self.total > self._reported * 10 // self.total or done == self.total:
            self._reported = done
            with transaction(self.url) as session:
                if not JOBS.holds(session, self.job_id, self.attempt):
                    return
                message = f"The teacher answered {done} of {self.total} prompts"
                job_state.add_event(session, self.job_id, message, data={"answered": done, "prompts": self.total})


def _record_distilled_file(url: str, store: ObjectStore, job: FineTuningJob, conversations: list) -> None:
    prompts = [conversation[:-1] for conversation in conversations]
    content = distilled_jsonl(prompts, [conversation[-1]["content"] for conversation in conversations])
    with transaction(url) as session:
        if not JOBS.holds(session, job.id, job.attempt):
            raise Stopped  # another attempt runs the job now, and writes its own file
        row = store_distilled_file(session, store, job, content)
        stored = session.get_one(FineTuningJob, job.id)
        stored.method = job.method = {
            **stored.method,
            "distillation": {**stored.method["distillation"], "generated_file": row.id},
        }
        message = f"The teacher's answers are in {row.id} ({len(conversations)} examples)"
        job_state.add_event(session, job.id, message, data={"file": row.id})
