"""Every request needs a live key; keys are kept hashed and revoked at once. (Isolation: test_tenant_isolation.py.)"""

import httpx
import openai
import pytest
from sqlalchemy import select

from app.core.db import transaction
from app.core.keys import find_key, revoke_key
from app.core.settings import Settings
from app.core.tables import ApiKey
from tests.helpers.services import sdk_client


@pytest.mark.parametrize("header", [None, "Bearer lp_not-a-real-key", "Basic abc"])
def test_missing_or_bad_key_is_401_in_openai_error_shape(api_base_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{api_base_url}/v1/files", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error" and error["message"]


def test_revoked_key_stops_working(api_base_url: str, settings: Settings, org_key: str) -> None:
    client = sdk_client(api_base_url, org_key)
    client.files.list()
    with transaction(settings.require("database_url")) as session:
        key = find_key(session, org_key)
        assert key is not None
        assert key.last_used_at is not None
        revoke_key(session, key.id)
    with pytest.raises(openai.AuthenticationError):
        client.files.list()


def test_keys_are_stored_hashed(settings: Settings, org_key: str) -> None:
    with transaction(settings.require("database_url")) as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert org_key not in stored and all(len(value) == 64 for value in stored)
