"""/v1/models"""

from fastapi import APIRouter, Request

from app.api.deps import OrgDep, SessionDep, StoreDep
from app.api.models import service

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(ref: service.ModelRef) -> dict:
    return {"id": ref.id, "object": "model", "created": ref.created, "owned_by": ref.owned_by}


@router.get("")
def list_models(request: Request, org: OrgDep, session: SessionDep) -> dict:
    refs = service.list_models(session, request.app.state.registry, org)
    return {"object": "list", "data": [_public(ref) for ref in refs]}


# `{model_id:path}`: the SDK sends '/' inside ids as %2F, and fine-tuned ids contain ':'.
@router.get("/{model_id:path}")
def retrieve_model(model_id: str, request: Request, org: OrgDep, session: SessionDep) -> dict:
    return _public(service.resolve(session, request.app.state.registry, org, model_id))


@router.delete("/{model_id:path}")
def delete_model(model_id: str, request: Request, org: OrgDep, session: SessionDep, store: StoreDep) -> dict:
    """Delete a fine-tuned model: it stops being served and its adapter is removed from storage."""
    prefix = service.delete_model(session, request.app.state.registry, org, model_id)
    session.commit()
    request.app.state.engine.evict(prefix)
    store.delete_prefix(prefix)
    return {"id": model_id, "object": "model", "deleted": True}
