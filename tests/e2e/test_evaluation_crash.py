"""An evaluation survives its worker as a job does: a training worker SIGKILLed while it answers stops renewing the
lease, the reaper re-queues the evaluation once the lease runs out, and a second worker runs it to one report."""

import subprocess

from app.core.settings import Settings
from tests.helpers.evaluations import (
    FINISHED,
    busy_file,
    create_evaluation,
    evaluation_row,
    retrieve_evaluation,
    tiny_model_api,
)
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import (  # noqa: F401  (a fixture)
    FAST_LEASE,
    forget_other_jobs,
    start_maintenance_worker,
    start_training_worker,
    stop,
)


def test_a_killed_worker_s_evaluation_is_finished_once_by_another(
    settings: Settings, org_key: str, maintenance: subprocess.Popen
) -> None:
    with tiny_model_api(settings, org_key) as client:
        file_id = client.files.create(file=("busy.jsonl", busy_file(300)), purpose="fine-tune").id
        # A few seconds of answers: long enough to be killed in the middle of them, short enough to run twice.
        evaluation = create_evaluation(client, model=TINY_MODEL_ID, file=file_id, max_examples=300, max_tokens=64)
        first = start_training_worker(settings, **FAST_LEASE)
        try:
            eventually(
                lambda: evaluation_row(settings, evaluation["id"]).status == "running",
                timeout=120,
                interval=0.05,
                what="the first worker's claim",
            )
        finally:
            first.kill()  # SIGKILL: no cleanup, the message stays unacknowledged, the lease stops being renewed
            first.wait()
        killed = evaluation_row(settings, evaluation["id"])
        assert (killed.status, killed.attempt, killed.report) == ("running", 1, None)  # killed in the middle

        second = start_training_worker(settings, **FAST_LEASE)
        try:
            done = eventually(
                lambda: (found := retrieve_evaluation(client, evaluation["id"]))["status"] in FINISHED and found,
                timeout=300,
                what="the evaluation to finish",
            )
        finally:
            stop(second)

    assert done["status"] == "succeeded", done["error"]
    assert done["report"]["held_out_examples"] == 300 and done["error"] is None
    row = evaluation_row(settings, evaluation["id"])
    assert row.attempt == 2  # the killed attempt, then the one that finished: no third run
    assert row.lease_expires_at is not None and row.finished_at is not None
