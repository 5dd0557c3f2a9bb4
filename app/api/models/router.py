"""/v1/models"""

from functools import partial

from fastapi import APIRouter

from app.api.deps import BackendDep, OrgDep, RegistryDep, SessionDep, StoreDep
from app.api.models import service
from app.api.models.schemas import ModelDeleted, ModelList, ModelPublic
from app.core.db import after_commit

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def list_models(org: OrgDep, session: SessionDep, registry: RegistryDep) -> ModelList:
    return ModelList(data=[ModelPublic.of(ref) for ref in service.list_models(session, registry, org)])


# `{model_id:path}`: the SDK sends '/' inside ids as %2F, and fine-tuned ids contain ':'.
@router.get("/{model_id:path}", response_model=ModelPublic)
def retrieve_model(model_id: str, org: OrgDep, session: SessionDep, registry: RegistryDep) -> ModelPublic:
    return ModelPublic.of(service.resolve(session, registry, org, model_id))


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(
    model_id: str, org: OrgDep, session: SessionDep, store: StoreDep, registry: RegistryDep, backend: BackendDep
) -> ModelDeleted:
    """Delete a fine-tuned model: it and its job's checkpoints stop being served, and their adapters are removed
    from storage."""
    deleted = service.delete_model(session, registry, org, model_id)
    # Once the row says deleted, no new request resolves the model or its checkpoints: then they leave memory, then
    # storage.
    for prefix in (deleted.adapter_prefix, *deleted.checkpoint_prefixes):
        after_commit(session, partial(backend.evict, prefix))
    after_commit(session, partial(store.delete_prefix, deleted.adapter_prefix))
    after_commit(session, partial(store.delete_prefix, deleted.checkpoints_folder))
    return ModelDeleted(id=model_id)
