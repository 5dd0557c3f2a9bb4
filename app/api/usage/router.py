"""/v1/organization/usage/…: an organisation's usage per UTC day, for its admin keys.

`completions` is OpenAI's (`client.admin.organization.usage.completions`); `fine_tuning` (trained tokens by base
model) and `storage` (bytes of the organisation's files) are extensions of the same shape.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.api.deps import AdminDep, SessionDep
from app.api.usage.schemas import UsagePage
from app.api.usage.service import UsageQuery, usage_page
from app.core import usage

router = APIRouter(prefix="/v1/organization/usage", tags=["organization"])


def _listed(request: Request, name: str) -> list[str]:
    """A list parameter as curl (`group_by=model`) or the openai SDK (`group_by[]=model`) sends it."""
    return [*request.query_params.getlist(name), *request.query_params.getlist(f"{name}[]")]


def usage_query(
    request: Request,
    start_time: Annotated[int, Query(description="Unix seconds; the UTC day that holds it is the first bucket")],
    end_time: Annotated[int | None, Query(description="Unix seconds, exclusive; default now")] = None,
    bucket_width: str = "1d",
    limit: Annotated[int, Query(description="Buckets per page, at most 31")] = 7,
    page: str | None = None,
) -> UsageQuery:
    return UsageQuery(
        start_time, end_time, bucket_width, _listed(request, "group_by"), limit, _listed(request, "models"), page
    )


QueryDep = Annotated[UsageQuery, Depends(usage_query)]


@router.get("/completions", response_model=UsagePage)
def completions_usage(admin: AdminDep, session: SessionDep, query: QueryDep) -> UsagePage:
    """Chat and text completions: input and output tokens and requests, by model with `group_by=model`."""
    return usage_page(session, admin.org.id, usage.COMPLETIONS, query)


@router.get("/fine_tuning", response_model=UsagePage)
def fine_tuning_usage(admin: AdminDep, session: SessionDep, query: QueryDep) -> UsagePage:
    """Tokens trained by the jobs that succeeded each day (refits and DPO included), by base model with
    `group_by=model`."""
    return usage_page(session, admin.org.id, usage.FINE_TUNING, query)


@router.get("/storage", response_model=UsagePage)
def storage_usage(admin: AdminDep, session: SessionDep, query: QueryDep) -> UsagePage:
    """The bytes of the organisation's files at the end of each day."""
    return usage_page(session, admin.org.id, usage.STORAGE, query)
