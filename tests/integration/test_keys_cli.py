"""`loraport keys create|list|revoke` against the real database, and the keys working on the API."""

import re
import uuid

import httpx

from app.core.bootstrap import prepare
from app.core.db import transaction
from app.core.keys import find_key, shown_prefix
from app.core.settings import Settings
from tests.helpers.cli import loraport


def test_create_list_and_revoke_a_key(settings: Settings, api_base_url: str) -> None:
    org = f"acme-{uuid.uuid4().hex[:6]}"
    created = loraport(settings, "keys", "create", "--org", org, "--name", "ci")
    key = re.search(r"lp_[A-Za-z0-9]+", created).group(0)  # type: ignore[union-attr]
    key_id = re.search(r"key-[A-Za-z0-9]+", created).group(0)  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{api_base_url}/v1/files", headers=headers).status_code == 200

    listed = loraport(settings, "keys", "list", "--org", org)
    assert key_id in listed and key[:8] in listed
    assert key not in listed  # the secret is never shown again

    loraport(settings, "keys", "revoke", key_id)
    assert httpx.get(f"{api_base_url}/v1/files", headers=headers).status_code == 401


def test_bootstrap_key_becomes_the_first_admin_key(settings: Settings, api_base_url: str) -> None:
    chosen = f"lp_{uuid.uuid4().hex}"
    boot = settings.model_copy(update={"bootstrap_key": chosen, "bootstrap_org": f"boot-{uuid.uuid4().hex[:6]}"})
    assert prepare(boot) is None  # a chosen key is not printed
    assert prepare(boot) is None  # and a second start changes nothing
    headers = {"Authorization": f"Bearer {chosen}"}
    assert httpx.get(f"{api_base_url}/v1/files", headers=headers).status_code == 200
    assert httpx.get(f"{api_base_url}/v1/organization/api_keys", headers=headers).status_code == 200  # an admin
    assert loraport(settings, "keys", "list", "--org", boot.bootstrap_org).count("lp_") == 1


def test_a_bootstrap_key_is_shown_by_a_short_prefix_only(settings: Settings) -> None:
    """The stored prefix was the first 12 characters: a 12-character bootstrap key was stored in clear."""
    chosen = "lp_" + uuid.uuid4().hex[:29]  # 32 characters, the shortest accepted
    boot = settings.model_copy(update={"bootstrap_key": chosen, "bootstrap_org": f"boot-{uuid.uuid4().hex[:6]}"})
    prepare(boot)
    with transaction(settings.require("database_url")) as session:
        key = find_key(session, chosen)
        assert key is not None and key.is_admin
        assert key.prefix == chosen[:8]
    assert shown_prefix("lp_123456789") == "lp_"  # never more than a quarter of a key
