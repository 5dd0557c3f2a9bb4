"""Adapters made warm before anyone asks: every process that serves inference listens for the models workers
announce (`app.core.announcements`) and fetches their files (and loads them, if the base model is in memory)."""

import json
import threading

import redis
import structlog
from sqlalchemy import select

from app.core.announcements import ADAPTERS_CHANNEL, AdapterAnnouncement
from app.core.db import session_factory
from app.core.redis import redis_client
from app.core.settings import Settings
from app.core.tables import FineTunedModel
from app.serving.backend import InferenceBackend

log = structlog.get_logger()


class AdapterWarmer:
    """A thread that warms every announced adapter until `stop`."""

    def __init__(self, redis_url: str, engine: InferenceBackend) -> None:
        self._redis_url, self._engine = redis_url, engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="adapter-warmer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with redis_client(self._redis_url) as client, client.pubsub() as pubsub:
                    pubsub.subscribe(ADAPTERS_CHANNEL)
                    while not self._stop.is_set():
                        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self._warm(json.loads(message["data"]))
            except redis.RedisError:  # the broker restarted: subscribe again shortly
                log.warning("adapters.warmer_disconnected", exc_info=True)
                self._stop.wait(2.0)

    def _warm(self, announcement: AdapterAnnouncement) -> None:
        try:
            self._engine.warm(announcement["base_model"], announcement["adapter"])
            log.info("adapters.warmed", adapter=announcement["adapter"])
        except Exception:  # a bad adapter fails its first request with a clear error; nothing to do here
            log.warning("adapters.warm_failed", adapter=announcement.get("adapter"), exc_info=True)


def pin_models_in_background(settings: Settings, backend: InferenceBackend) -> None:
    """Load the fine-tuned models named by `LORAPORT_PINNED_MODELS` and keep them loaded (in a thread: loading the
    base model takes seconds, which startup need not wait for). Unknown or deleted ids are logged and skipped."""
    names = [name.strip() for name in settings.pinned_models.split(",") if name.strip()]
    pin = getattr(backend, "pin", None)
    if not names or pin is None:
        return

    def pin_all() -> None:
        with session_factory(settings.require("database_url"))() as session:
            rows = session.scalars(
                select(FineTunedModel).where(FineTunedModel.id.in_(names), FineTunedModel.deleted.is_(False))
            ).all()
        for missing in sorted(set(names) - {row.id for row in rows}):
            log.warning("adapters.pin_unknown_model", model=missing)
        for row in rows:
            try:
                pin(row.base_model, row.adapter_prefix)
                log.info("adapters.pinned", model=row.id)
            except Exception:
                log.warning("adapters.pin_failed", model=row.id, exc_info=True)

    threading.Thread(target=pin_all, name="adapter-pinning", daemon=True).start()
