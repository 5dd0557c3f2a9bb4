"""Distillation, the first phase of a distillation job: a teacher model answers the job's prompts through the
serving engine (continuous batching, the teacher's adapter in a slot), and its answers become a training file of
the organisation's, which the student then fine-tunes on like any other.

The answers are written in the order of the prompts file, one conversation per prompt, so that a resumed job
finds them again instead of asking the teacher twice, and so that a user can inspect the file and reuse it.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app import ids
from app.chat_format import render_prompt_ids
from app.datasets import CHAT
from app.inference.batching import ContinuousBatcher
from app.inference.detokenize import Detokenizer
from app.inference.engine import model_end_of_turn_ids
from app.inference.lora_slots import AdapterSlots
from app.storage import ObjectStore, file_key
from app.tables import FineTuningJob, StoredFile

TEACHER = "teacher"
BATCH_ROWS = 16


def teacher_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path | None,
    prompts: Sequence[list[dict]],
    max_tokens: int,
    temperature: float,
    seed: int,
    on_answer: Callable[[int], None] | None = None,
) -> list[str]:
    """The teacher's answer to each prompt (a conversation ending before the answer): the base `model`, or it with
    the adapter in `adapter_dir`. Sampled at `temperature` (0: greedy) with a seed per prompt, so a rerun gives the
    same answers; `on_answer(done)` after each one, in order."""
    slots = AdapterSlots(model, max_slots=1)
    if adapter_dir is not None:
        slots.load(TEACHER, adapter_dir)
    end_ids = set(model_end_of_turn_ids(model, tokenizer))
    batcher = ContinuousBatcher(model, slots, next(model.parameters()).device, max_batch_size=BATCH_ROWS)
    try:
        adapter = TEACHER if adapter_dir is not None else None
        streams = [
            batcher.submit(
                render_prompt_ids(tokenizer, prompt), adapter, max_tokens, temperature, 1.0, seed + i, end_ids
            )
            for i, prompt in enumerate(prompts)
        ]
        answers = []
        for stream in streams:
            text = Detokenizer(tokenizer, end_ids, [])
            answers.append("".join([*(text.feed(token.id) for token in stream), text.close()]).strip())
            if on_answer is not None:
                on_answer(len(answers))
        return answers
    finally:
        batcher.close()


def distilled_jsonl(prompts: Sequence[list[dict]], answers: Sequence[str]) -> bytes:
    """One chat example per prompt, the teacher's answer as the assistant's turn."""
    lines = [
        json.dumps({"messages": [*prompt, {"role": "assistant", "content": answer}]}, ensure_ascii=False)
        for prompt, answer in zip(prompts, answers, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def store_distilled_file(session: Session, store: ObjectStore, job: FineTuningJob, content: bytes) -> StoredFile:
    """The teacher's answers as a processed `fine-tune` file of the job's organisation."""
    file_id = ids.file_id()
    key = file_key(job.organization_id, file_id)
    writer = store.writer(key)
    writer.write(content)
    writer.close()
    row = StoredFile(
        id=file_id,
        organization_id=job.organization_id,
        filename=f"distilled-{job.id}.jsonl",
        purpose="fine-tune",
        bytes=len(content),
        status="processed",
        storage_key=key,
        sha256=hashlib.sha256(content).hexdigest(),
        example_count=content.count(b"\n"),
        format=CHAT,
    )
    session.add(row)
    return row
