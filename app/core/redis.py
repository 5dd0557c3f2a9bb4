"""Redis clients for production code: the broker's URL as Celery spells it, the embedded server's unix socket
(`redis+socket://`) included."""

import redis as redis_py


def redis_client(url: str, **options: object) -> redis_py.Redis:
    """A redis-py client for a Celery broker URL."""
    return redis_py.Redis.from_url(redis_py_url(url), **options)


def redis_py_url(url: str) -> str:
    """The redis-py spelling (`unix:///…`) of a Celery/kombu socket URL (`redis+socket:///…`)."""
    prefix = "redis+socket://"
    return "unix://" + url.removeprefix(prefix) if url.startswith(prefix) else url
