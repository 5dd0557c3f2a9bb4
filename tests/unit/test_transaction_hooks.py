"""What runs after a transaction ends: after a commit, every action registered for it, even when one fails;
after a rollback, only the undo actions."""

from sqlalchemy.orm import Session

from app.core.db import after_commit, after_rollback, run_after_commit, run_after_rollback


def _failing() -> None:
    raise ConnectionError("storage is down")


def test_after_a_commit_every_action_runs_even_past_one_that_fails() -> None:
    session, ran = Session(), []
    after_commit(session, lambda: ran.append("message"))
    after_commit(session, _failing)
    after_commit(session, lambda: ran.append("delete"))
    after_rollback(session, lambda: ran.append("undo"))

    run_after_commit(session)  # no exception: the change is stored, the caller gets its answer

    assert ran == ["message", "delete"]
    run_after_commit(session)
    assert ran == ["message", "delete"], "each action runs once"


def test_after_a_rollback_only_the_undo_actions_run() -> None:
    session, ran = Session(), []
    after_commit(session, lambda: ran.append("message"))
    after_rollback(session, _failing)
    after_rollback(session, lambda: ran.append("undo"))

    run_after_rollback(session)

    assert ran == ["undo"]
