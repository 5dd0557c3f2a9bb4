"""Where a registry reads the added base models: PostgreSQL (API and workers), or the settings stored beside the
weights in the object store (inference replicas, which have no database)."""

import dataclasses
import json
from typing import Any

from app.core import base_model_records
from app.core.db import transaction
from app.core.storage import ObjectStore
from app.core.tables import BaseModelRecord
from app.ml.base_models.registry import DEFAULT_MAX_SEQ_LENGTH, BaseModelSpec, Catalogue


def spec_of(record: BaseModelRecord) -> BaseModelSpec:
    return BaseModelSpec(
        id=record.id,
        source="s3",
        location=record.weights_prefix,
        gguf_filename=None,
        lora_target_modules=tuple(record.lora_target_modules),
        max_seq_length=record.max_seq_length,
        created=int(record.created_at.timestamp()),
        lora_rank=record.lora_rank,
        learning_rate=record.learning_rate,
        quantization=record.quantization,
        revision=record.revision,
        chat_template=record.chat_template,
        chat_template_source=record.chat_template_source,
    )


def spec_json(spec: BaseModelSpec) -> bytes:
    return json.dumps(dataclasses.asdict(spec)).encode()


def spec_from_json(data: bytes) -> BaseModelSpec:
    fields: dict[str, Any] = json.loads(data)
    fields["lora_target_modules"] = tuple(fields.get("lora_target_modules", ()))
    fields.setdefault("max_seq_length", DEFAULT_MAX_SEQ_LENGTH)
    known = {field.name for field in dataclasses.fields(BaseModelSpec)}
    return BaseModelSpec(**{name: value for name, value in fields.items() if name in known})


def database_catalogue(database_url: str) -> Catalogue:
    def read() -> list[BaseModelSpec]:
        with transaction(database_url) as session:
            return [spec_of(record) for record in base_model_records.all_records(session)]

    return read


def store_catalogue(store: ObjectStore) -> Catalogue:
    """The newest revision of each model whose settings are in the store (a removed model's are deleted with it)."""

    def read() -> list[BaseModelSpec]:
        specs: dict[str, BaseModelSpec] = {}
        for key in store.list_keys(f"{base_model_records.BASE_MODELS_PREFIX}/"):
            if key.endswith("/spec.json"):
                spec = spec_from_json(store.read_bytes(key))
                if spec.id not in specs or spec.created > specs[spec.id].created:
                    specs[spec.id] = spec
        return list(specs.values())

    return read
