"""/v1/organization/api_keys: an organisation's keys, managed with one of its admin keys.

Shaped like OpenAI's admin API keys. Revoked keys are gone from the API: not listed, and 404 to read or revoke.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import AdminDep, SessionDep
from app.api.pagination import ListPage, list_page
from app.core import keys as key_service
from app.core.tables import ApiKey
from app.core.timestamps import unix

router = APIRouter(prefix="/v1/organization/api_keys", tags=["organization"])


class ApiKeyCreate(BaseModel):
    name: str = Field("", max_length=128)
    admin: bool = False


class ApiKeyPublic(BaseModel):
    object: Literal["organization.api_key"] = "organization.api_key"
    id: str
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None
    admin: bool

    @classmethod
    def of(cls, key: ApiKey) -> "ApiKeyPublic":
        return cls(
            id=key.id,
            name=key.name,
            redacted_value=key.prefix + "…",
            created_at=unix(key.created_at) or 0,
            last_used_at=unix(key.last_used_at),
            admin=key.is_admin,
        )


class ApiKeyCreated(ApiKeyPublic):
    value: str  # the plaintext, in this answer only


class ApiKeyDeleted(BaseModel):
    object: Literal["organization.api_key.deleted"] = "organization.api_key.deleted"
    id: str
    deleted: bool = True


@router.get("", response_model=ListPage[ApiKeyPublic])
def list_api_keys(
    admin: AdminDep, session: SessionDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> ListPage[ApiKeyPublic]:
    """The organisation's live keys, newest first."""
    rows, has_more = key_service.list_live_keys(session, admin.org, after, limit)
    return list_page([ApiKeyPublic.of(row) for row in rows], has_more)


@router.post("", response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyCreate, admin: AdminDep, session: SessionDep) -> ApiKeyCreated:
    """A new key of the organisation; its plaintext `value` is shown in this answer only."""
    issued = key_service.issue_key(session, admin.org, name=body.name, admin=body.admin)
    session.refresh(issued.key)  # created_at comes from the database
    return ApiKeyCreated(**ApiKeyPublic.of(issued.key).model_dump(), value=issued.plaintext)


@router.get("/{key_id}", response_model=ApiKeyPublic)
def get_api_key(key_id: str, admin: AdminDep, session: SessionDep) -> ApiKeyPublic:
    return ApiKeyPublic.of(key_service.get_live_key(session, admin.org, key_id))


@router.delete("/{key_id}", response_model=ApiKeyDeleted)
def revoke_api_key(key_id: str, admin: AdminDep, session: SessionDep) -> ApiKeyDeleted:
    """Revokes the key: its next request gets 401. The key making this request cannot revoke itself (409)."""
    return ApiKeyDeleted(id=key_service.revoke_org_key(session, admin, key_id).id)
