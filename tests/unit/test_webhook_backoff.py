"""A failing delivery is retried with exponential backoff, at most an hour apart, for more than a day."""

from app.core.settings import Settings
from worker.webhook_delivery import backoff_seconds


def test_the_wait_doubles_from_the_first_retry_and_stops_growing_at_an_hour() -> None:
    settings = Settings()
    waits = [backoff_seconds(settings, attempts) for attempts in range(1, 12)]
    assert waits[:5] == [30, 60, 120, 240, 480]
    assert max(waits) == 3600 and waits[-1] == 3600


def test_by_default_a_receiver_down_for_a_whole_day_is_still_retried() -> None:
    settings = Settings()
    assert settings.webhook_retry_hours >= 24
    elapsed, attempts = 0.0, 1
    while elapsed + backoff_seconds(settings, attempts) < 24 * 3600:
        elapsed += backoff_seconds(settings, attempts)
        attempts += 1
    assert 24 <= attempts <= 40  # hourly once the backoff is capped: retried all day, without hammering
