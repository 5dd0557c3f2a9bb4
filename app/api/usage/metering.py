"""Counting a completion request's tokens in the organisation's usage, once its generation has ended."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from sqlalchemy.exc import SQLAlchemyError

from app.api.generation.choices import ChoiceRequest
from app.core import usage
from app.core.db import transaction

log = structlog.get_logger()
# One thread writes the counts: the event loop never waits for the database, and a streamed answer cut short by
# its client (whose generator is closed, not awaited) is still counted.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")


class CompletionMeter:
    """Counts one request (its prompts' tokens and the tokens of the choices that finished) when `count` is first
    called, in a transaction of its own: the answer is not held back by it."""

    def __init__(self, database_url: str, organization_id: str, model: str, works: Sequence[ChoiceRequest]) -> None:
        self._database_url = database_url
        self._organization_id = organization_id
        self._model = model
        self._works = works
        self._counted = False

    def count(self) -> None:
        if self._counted:
            return
        self._counted = True
        input_tokens = sum(work.prompt_tokens for work in self._works)
        output_tokens = sum(work.completion_tokens for work in self._works)
        _writer.submit(self._write, input_tokens, output_tokens)

    def _write(self, input_tokens: int, output_tokens: int) -> None:
        try:
            with transaction(self._database_url) as session:
                usage.add(
                    session, self._organization_id, usage.COMPLETIONS, self._model,
                    requests=1, input_tokens=input_tokens, output_tokens=output_tokens,
                )  # fmt: skip
        except SQLAlchemyError:
            log.warning("usage.completion.not_counted", organization_id=self._organization_id, model=self._model)
