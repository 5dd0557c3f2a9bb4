"""`/v1/organization/api_keys`: an admin key creates, lists, reads and revokes its organisation's keys through the
openai SDK; any other key gets 403, another organisation's key id is a 404, and a revoked key gets 401 at once."""

import json
import re
import uuid

import openai
import pytest
from sqlalchemy import func, select

from app.core.db import transaction
from app.core.keys import digest, find_key
from app.core.settings import Settings
from app.core.tables import ApiKey
from tests.helpers.cli import loraport
from tests.helpers.services import new_org_key, sdk_client

KEYS = "/organization/api_keys"


def key_id_of(settings: Settings, plaintext: str) -> str:
    with transaction(settings.require("database_url")) as session:
        return find_key(session, plaintext).id  # type: ignore[union-attr]


@pytest.fixture
def admin(api_base_url: str, admin_key: str) -> openai.OpenAI:
    return sdk_client(api_base_url, admin_key)


@pytest.fixture
def other_admin(settings: Settings, api_base_url: str) -> openai.OpenAI:
    return sdk_client(api_base_url, new_org_key(settings, f"adm-other-{uuid.uuid4().hex[:10]}", admin=True))


def test_admin_creates_a_key_that_works_and_is_listed_only_redacted(admin: openai.OpenAI, api_base_url: str) -> None:
    created = admin.post(KEYS, body={"name": "ci"}, cast_to=dict)

    value = created["value"]
    assert value.startswith("lp_") and created["id"].startswith("key-")
    assert created["object"] == "organization.api_key" and created["name"] == "ci" and created["admin"] is False
    assert created["redacted_value"] == value[:8] + "…" and created["last_used_at"] is None
    sdk_client(api_base_url, value).files.list()  # the new key works

    listed = admin.get(KEYS, cast_to=dict)
    read = admin.get(f"{KEYS}/{created['id']}", cast_to=dict)
    assert listed["object"] == "list" and listed["first_id"] == created["id"] and listed["has_more"] is False
    assert [key["id"] for key in listed["data"]][0] == created["id"]
    assert {key["id"]: key["admin"] for key in listed["data"]}[created["id"]] is False
    assert read == listed["data"][0] and read["last_used_at"]
    for shown in (json.dumps(listed), json.dumps(read)):  # neither the secret nor its digest is ever shown again
        assert value not in shown and digest(value) not in shown and value[12:] not in shown


def test_revoked_key_gets_401_on_its_very_next_request(admin: openai.OpenAI, api_base_url: str) -> None:
    created = admin.post(KEYS, body={"name": "leaked"}, cast_to=dict)
    leaked = sdk_client(api_base_url, created["value"])
    leaked.models.list()

    deleted = admin.delete(f"{KEYS}/{created['id']}", cast_to=dict)

    assert deleted == {"object": "organization.api_key.deleted", "id": created["id"], "deleted": True}
    with pytest.raises(openai.AuthenticationError):
        leaked.models.list()
    assert created["id"] not in [key["id"] for key in admin.get(KEYS, cast_to=dict)["data"]]
    with pytest.raises(openai.NotFoundError):  # a revoked key is gone: no read, no second revocation
        admin.get(f"{KEYS}/{created['id']}", cast_to=dict)
    with pytest.raises(openai.NotFoundError):
        admin.delete(f"{KEYS}/{created['id']}", cast_to=dict)


def test_a_new_admin_key_can_rotate_out_the_old_one(admin: openai.OpenAI, api_base_url: str) -> None:
    successor = admin.post(KEYS, body={"name": "next", "admin": True}, cast_to=dict)
    assert successor["admin"] is True
    new_admin = sdk_client(api_base_url, successor["value"])
    old_id = next(key["id"] for key in new_admin.get(KEYS, cast_to=dict)["data"] if key["id"] != successor["id"])

    new_admin.delete(f"{KEYS}/{old_id}", cast_to=dict)

    with pytest.raises(openai.AuthenticationError):
        admin.get(KEYS, cast_to=dict)
    assert [key["id"] for key in new_admin.get(KEYS, cast_to=dict)["data"]] == [successor["id"]]


def test_an_admin_cannot_revoke_the_key_it_is_using(admin: openai.OpenAI, settings: Settings) -> None:
    own_id = key_id_of(settings, admin.api_key)

    with pytest.raises(openai.ConflictError) as refused:
        admin.delete(f"{KEYS}/{own_id}", cast_to=dict)

    assert refused.value.code == "cannot_revoke_own_key" and "another admin key" in refused.value.message
    assert admin.get(f"{KEYS}/{own_id}", cast_to=dict)["id"] == own_id  # still live


def test_a_non_admin_key_gets_403_on_every_route(client: openai.OpenAI, settings: Settings, org_key: str) -> None:
    own_id = key_id_of(settings, org_key)
    attempts = {
        "list": lambda: client.get(KEYS, cast_to=dict),
        "create": lambda: client.post(KEYS, body={"name": "escalate", "admin": True}, cast_to=dict),
        "read": lambda: client.get(f"{KEYS}/{own_id}", cast_to=dict),
        "revoke": lambda: client.delete(f"{KEYS}/{own_id}", cast_to=dict),
    }

    for route, attempt in attempts.items():
        with pytest.raises(openai.PermissionDeniedError) as refused:
            attempt()
        error = refused.value.response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "insufficient_permissions", route
        assert error["param"] is None and "admin key" in error["message"], route

    client.models.list()  # the key was not revoked
    with transaction(settings.require("database_url")) as session:  # and nothing was created
        org_id = find_key(session, org_key).organization_id  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).where(ApiKey.organization_id == org_id)) == 1


def test_another_organisation_s_admin_gets_404_and_cannot_revoke(
    admin: openai.OpenAI, other_admin: openai.OpenAI, api_base_url: str
) -> None:
    created = admin.post(KEYS, body={"name": "a"}, cast_to=dict)

    for attempt in (other_admin.get, other_admin.delete):
        with pytest.raises(openai.NotFoundError) as refused:
            attempt(f"{KEYS}/{created['id']}", cast_to=dict)
        with pytest.raises(openai.NotFoundError) as never_existed:
            attempt(f"{KEYS}/key-doesnotexist", cast_to=dict)
        assert refused.value.code == never_existed.value.code == "not_found"
        assert refused.value.message == never_existed.value.message.replace("key-doesnotexist", created["id"])

    sdk_client(api_base_url, created["value"]).models.list()  # A's key still works
    assert created["id"] not in [key["id"] for key in other_admin.get(KEYS, cast_to=dict)["data"]]


def test_list_pages_newest_first_with_after_and_limit(admin: openai.OpenAI) -> None:
    made = [admin.post(KEYS, body={"name": f"k{n}"}, cast_to=dict)["id"] for n in range(3)]

    first = admin.get(KEYS, options={"params": {"limit": 2}}, cast_to=dict)
    rest = admin.get(KEYS, options={"params": {"limit": 2, "after": first["last_id"]}}, cast_to=dict)

    assert [key["id"] for key in first["data"]] == made[::-1][:2] and first["has_more"] is True
    assert [key["id"] for key in rest["data"]][0] == made[0] and rest["has_more"] is False
    assert len(rest["data"]) == 2  # the admin key itself, made first


def test_cli_creates_an_admin_key_that_can_manage_keys(settings: Settings, api_base_url: str) -> None:
    org = f"cli-{uuid.uuid4().hex[:6]}"
    created = loraport(settings, "keys", "create", "--org", org, "--admin")
    key = re.search(r"lp_[A-Za-z0-9]+", created).group(0)  # type: ignore[union-attr]
    plain = re.search(r"lp_[A-Za-z0-9]+", loraport(settings, "keys", "create", "--org", org)).group(0)  # type: ignore[union-attr]

    assert "admin key" in created
    assert len(sdk_client(api_base_url, key).get(KEYS, cast_to=dict)["data"]) == 2
    with pytest.raises(openai.PermissionDeniedError):
        sdk_client(api_base_url, plain).get(KEYS, cast_to=dict)
    rows = [line for line in loraport(settings, "keys", "list", "--org", org).splitlines() if "lp_" in line]
    assert ["admin" in row for row in rows if key[:8] in row] == [True]
    assert ["admin" in row for row in rows if plain[:8] in row] == [False]
