"""Work (a job or an evaluation) that cannot go on, with the error its API shows."""


class TaskFailed(Exception):
    """Ends the work as failed with `error` ({code, message, param}), without a traceback: the cause is known."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}
