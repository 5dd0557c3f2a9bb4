"""Migration 0010 (audit #15): 0007 made every key named `admin` or `bootstrap` an admin key, in any organisation;
only the first organisation's (the bootstrap one, which `prepare` creates first) stay admin. Keys short enough to
have been stored whole as their prefix are revoked, and every prefix is cut to 8 characters."""

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from app.core.bootstrap import alembic_config
from app.core.keys import digest
from tests.helpers.services import POSTGRES_ADMIN_URL


def _digest(prefix: str, whole: bool) -> str:
    """The stored digest: of the prefix itself for a key stored whole, else of a longer key starting with it."""
    return digest(prefix if whole else prefix + "-and-the-rest-of-a-long-key")


@pytest.fixture
def database_at_0008() -> Iterator[str]:
    name = f"loraport_m10_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    command.upgrade(alembic_config(url), "0008")
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_only_the_first_organisation_keeps_its_admin_named_keys_as_admin(database_at_0008: str) -> None:
    engine = create_engine(database_at_0008)
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO organizations (id, name, created_at) VALUES "
                "('org-first', 'default', now() - interval '1 day'), ('org-tenant', 'tenant', now())"
            )
        )
        keys = [  # id, organisation, name, prefix (as 0007's code stored it), admin
            ("key-boot", "org-first", "bootstrap", "lp_bootstrap", True),
            ("key-first", "org-first", "admin", "lp_abcdefghi", True),
            ("key-tenant", "org-tenant", "admin", "lp_tenantabc", True),
            ("key-tenant-b", "org-tenant", "bootstrap", "lp_tenantdef", True),
            ("key-short", "org-tenant", "ci", "lp_short", False),  # an 8-character key, stored whole
            ("key-twelve", "org-tenant", "ci", "lp_twelve-ch", False),  # 12 characters, stored whole too
        ]
        whole = {"key-short", "key-twelve"}
        for key_id, org, name, prefix, admin in keys:
            db.execute(
                text(
                    "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, is_admin) "
                    "VALUES (:id, :org, :name, :prefix, :hash, :admin)"
                ),
                {"id": key_id, "org": org, "name": name, "prefix": prefix, "hash": _digest(prefix, key_id in whole)}
                | {"admin": admin},
            )

    command.upgrade(alembic_config(database_at_0008), "0010")

    with engine.connect() as db:
        rows = {row.id: row for row in db.execute(text("SELECT id, prefix, is_admin, revoked_at FROM api_keys"))}
    engine.dispose()
    assert {key_id for key_id, row in rows.items() if row.is_admin} == {"key-boot", "key-first"}
    assert {row.id for row in rows.values() if row.revoked_at is not None} == {"key-short", "key-twelve"}
    assert rows["key-short"].prefix == rows["key-twelve"].prefix == ""
    assert rows["key-first"].prefix == "lp_abcde"
