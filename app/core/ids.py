"""Prefixed identifiers like OpenAI's (`file-…`, `ftjob-…`), made in one place."""

import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str) -> str:
    return f"{prefix}-{random_token()}"


def file_id() -> str:
    return new_id("file")


def job_id() -> str:
    return new_id("ftjob")


def event_id() -> str:
    return new_id("ftevent")


def checkpoint_id() -> str:
    return new_id("ftckpt")


def org_id() -> str:
    return new_id("org")


def key_id() -> str:
    return new_id("key")
