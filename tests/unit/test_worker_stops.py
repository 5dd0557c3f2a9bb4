"""Work that stops when told: a teacher answering prompts, examples being tokenized, and work past its time limit."""

import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from app.core.lifecycle import JOBS
from app.core.settings import Settings
from app.serving.answers import Stopped
from tests.helpers.tiny_models import conversation
from worker.celery.apps import make_training_celery
from worker.distillation import teacher_answers
from worker.failures import time_limit_error
from worker.progress import CancelCheck
from worker.training import trainer
from worker.training.data import STOP_CHECK_EXAMPLES
from worker.training.trainer import TrainingConfig, TrainingHooks, train_lora

PROMPTS = [[{"role": "user", "content": f"Ticket {i}: it broke"}] for i in range(6)]


def test_the_teacher_stops_answering_at_the_first_answer_after_should_stop_says_so(make_model, tokenizer):
    answered: list[int] = []

    with pytest.raises(Stopped):
        teacher_answers(
            make_model().eval(), tokenizer, None, PROMPTS, 8, 0.0, 0, answered.append, lambda: len(answered) == 2
        )

    assert answered == [1, 2]  # two of six answers, then stopped


def test_tokenizing_stops_within_the_examples_once_should_stop_says_so(make_model, tokenizer, monkeypatch):
    examples = [conversation(f"Question {i}?", f"Answer {i}.") for i in range(500)]
    tokenized = []
    original = trainer.tokenize_example
    monkeypatch.setattr(trainer, "tokenize_example", lambda *a, **k: tokenized.append(1) or original(*a, **k))
    config = TrainingConfig(n_epochs=1, batch_size=2, learning_rate=1e-3, seed=0, max_seq_length=64)

    with pytest.raises(Stopped):
        train_lora(
            make_model(), tokenizer, examples, None, config, hooks=TrainingHooks(should_stop=lambda: bool(tokenized))
        )

    assert 0 < len(tokenized) <= STOP_CHECK_EXAMPLES  # heard at the first check after it was said


def test_work_past_its_deadline_raises_celery_s_soft_time_limit() -> None:
    check = CancelCheck("postgresql://never-asked", JOBS, "ftjob-x", 1, deadline=time.monotonic() - 1)

    with pytest.raises(SoftTimeLimitExceeded):
        check.should_stop()


def test_the_training_app_carries_the_time_limits_and_the_failure_names_the_limit() -> None:
    settings = Settings(job_time_limit_seconds=7200, redis_url="redis://127.0.0.1:1/0")

    conf = make_training_celery(settings).conf

    assert conf.task_soft_time_limit == 7200 and conf.task_time_limit > 7200
    error = time_limit_error(settings, "Training")
    assert error["code"] == "time_limit_exceeded"
    assert error["message"].startswith("Training ran past the deployment's limit of 2 hours")
