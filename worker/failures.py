"""Work (a job or an evaluation) that cannot go on, with the error its API shows."""

from app.core.settings import Settings


class TaskFailed(Exception):
    """Ends the work as failed with `error` ({code, message, param}), without a traceback: the cause is known."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


def internal_error(work: str, error: BaseException) -> dict:
    """The error of work ("Training", "Evaluation") stopped by an unexpected exception: its class only, as its text
    may name internal hosts, ports or paths (the worker's log has it whole)."""
    message = f"{work} failed with an internal error ({type(error).__name__}); the worker's log has the details"
    return {"code": f"{work.lower()}_error", "message": message, "param": None}


def time_limit_error(settings: Settings, work: str) -> dict:
    """The error of work that ran past `job_time_limit_seconds` (Celery's soft time limit stopped it)."""
    hours = settings.job_time_limit_seconds / 3600
    message = (
        f"{work} ran past the deployment's limit of {hours:g} hours and was stopped; use a smaller dataset or fewer "
        "epochs, or ask the operator to raise LORAPORT_JOB_TIME_LIMIT_SECONDS"
    )
    return {"code": "time_limit_exceeded", "message": message, "param": None}
