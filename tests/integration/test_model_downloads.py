"""Weights out: a fine-tuned model's adapter downloads as a tar that peft loads, and its merged export as a plain
transformers checkpoint; both answer as the service does. Another organisation's model is a 404 throughout."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import checkpoint_prefix, export_key, export_prefix, store_for
from app.core.tables import JobCheckpoint, ModelExport
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.adapters import ANSWER, extract, greedy_reply, model_with_adapter, service_reply, train_adapter
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.tiny_models import TINY_MODEL_ID
from worker.export_sweep import leftovers_of_exports
from worker.model_export import run_export
from worker.storage_sweep import missing_objects

PEFT_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "loraport-manifest.json"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    return train_adapter(settings, tmp_path_factory.mktemp("adapter"))


@pytest.fixture
def model_id(settings: Settings, client: openai.OpenAI, adapter: Path) -> str:
    return model_with_adapter(settings, client, adapter)[0]


def _export(http: httpx.Client, model_id: str) -> dict:
    created = http.post(f"/v1/models/{model_id}/exports")
    assert created.status_code == 200, created.text
    return created.json()


def test_the_adapter_tar_loads_with_peft_and_answers_as_the_service_does(
    http: httpx.Client, client: openai.OpenAI, model_id: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    served = service_reply(client, model_id)

    response = http.get(f"/v1/models/{model_id}/adapter")

    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    assert 'filename="ft-tiny-llama-owner-ftjob-' in response.headers["content-disposition"]
    assert int(response.headers["content-length"]) == len(response.content)
    assert extract(response.content, tmp_path) == PEFT_FILES
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, tmp_path).eval()
    assert greedy_reply(tuned, AutoTokenizer.from_pretrained(tiny_model_dir)) == served
    assert served.startswith(ANSWER[:5])  # the adapter is what answers: the base model says something else
    assert service_reply(client, TINY_MODEL_ID) != served


def test_a_base_model_has_no_adapter_to_download_or_merge(http: httpx.Client) -> None:
    adapter = http.get(f"/v1/models/{TINY_MODEL_ID}/adapter")
    export = http.post(f"/v1/models/{TINY_MODEL_ID}/exports")

    assert adapter.status_code == export.status_code == 400
    assert adapter.json()["error"]["code"] == export.json()["error"]["code"] == "model_has_no_adapter"


def test_a_damaged_adapter_is_never_delivered_whole(
    http: httpx.Client, settings: Settings, client: openai.OpenAI, adapter: Path
) -> None:
    model_id, prefix = model_with_adapter(settings, client, adapter)
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    store_for(settings).put_bytes(f"{prefix}/adapter_model.safetensors", weights[:-8] + b"damaged!")

    with pytest.raises(httpx.RemoteProtocolError), http.stream("GET", f"/v1/models/{model_id}/adapter") as response:
        response.read()  # the server stops at the damaged file: fewer bytes than announced


def test_the_merged_export_loads_with_transformers_and_answers_as_the_service_does(
    http: httpx.Client, client: openai.OpenAI, model_id: str, settings: Settings, tmp_path: Path
) -> None:
    served = service_reply(client, model_id)
    created = _export(http, model_id)
    assert (created["object"], created["model"], created["status"], created["bytes"]) == (
        "model.export", model_id, "queued", None,
    )  # fmt: skip
    not_ready = http.get(f"/v1/models/{model_id}/exports/{created['id']}/content")
    assert not_ready.status_code == 409 and not_ready.json()["error"]["code"] == "export_not_ready"

    run_export(settings, registry_from_settings(settings), created["id"])

    done = http.get(f"/v1/models/{model_id}/exports/{created['id']}").json()
    assert done["status"] == "succeeded" and done["error"] is None and done["finished_at"] is not None
    content = http.get(f"/v1/models/{model_id}/exports/{created['id']}/content")
    assert content.status_code == 200 and len(content.content) == done["bytes"]
    assert "-merged.tar" in content.headers["content-disposition"]
    names = extract(content.content, tmp_path)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    assert "loraport-manifest.json" in names and "adapter_config.json" not in names  # plain transformers
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert greedy_reply(merged, AutoTokenizer.from_pretrained(tmp_path)) == served
    assert _export(http, model_id) == done  # asking again returns the same export


def test_a_failed_export_records_its_error_and_asking_again_retries_it(
    http: httpx.Client, settings: Settings, client: openai.OpenAI, adapter: Path
) -> None:
    model_id, prefix = model_with_adapter(settings, client, adapter)
    created = _export(http, model_id)
    store_for(settings).put_bytes(f"{prefix}/stray.bin", b"not the adapter's")  # the manifest does not list it

    run_export(settings, registry_from_settings(settings), created["id"])

    failed = http.get(f"/v1/models/{model_id}/exports/{created['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "adapter_corrupted"
    assert http.get(f"/v1/models/{model_id}/exports/{created['id']}/content").status_code == 409
    retried = _export(http, model_id)
    assert (retried["id"], retried["status"], retried["error"]) == (created["id"], "queued", None)
    store_for(settings).delete(f"{prefix}/stray.bin")


def test_deleting_the_model_removes_its_exports(
    http: httpx.Client, settings: Settings, client: openai.OpenAI, model_id: str
) -> None:
    created = _export(http, model_id)
    run_export(settings, registry_from_settings(settings), created["id"])
    organization_id = client.models.retrieve(model_id).owned_by
    stored = export_prefix(organization_id, created["id"]) + "/"
    assert list(store_for(settings).list_keys(stored))

    client.models.delete(model_id)

    assert list(store_for(settings).list_keys(stored)) == []
    assert http.get(f"/v1/models/{model_id}/exports/{created['id']}").status_code == 404


def test_a_checkpoint_downloads_and_exports_as_a_model_does_and_goes_with_it(
    http: httpx.Client, settings: Settings, client: openai.OpenAI, model_id: str, adapter: Path, tmp_path: Path
) -> None:
    organization_id, job_id = client.models.retrieve(model_id).owned_by, model_id.rsplit(":", 1)[1]
    checkpoint, prefix = f"{model_id}:ckpt-step-3", checkpoint_prefix(organization_id, job_id, 3)
    with transaction(settings.require("database_url")) as session:  # as the worker leaves it at an epoch's end
        session.add(
            JobCheckpoint(
                id=f"ftckpt-{job_id}", job_id=job_id, step_number=3, metrics={},
                fine_tuned_model_checkpoint=checkpoint, storage_prefix=prefix,
            )
        )  # fmt: skip
    store_for(settings).upload_directory(prefix, adapter)

    downloaded = http.get(f"/v1/models/{checkpoint}/adapter")
    export = _export(http, checkpoint)
    run_export(settings, registry_from_settings(settings), export["id"])

    assert extract(downloaded.content, tmp_path) == PEFT_FILES
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert http.get(f"/v1/models/{checkpoint}/exports/{export['id']}").json()["status"] == "succeeded"
    client.models.delete(model_id)
    assert http.get(f"/v1/models/{checkpoint}/adapter").status_code == 404
    assert list(store_for(settings).list_keys(export_prefix(organization_id, export["id"]) + "/")) == []


def test_another_organisation_gets_404_for_the_adapter_and_the_exports(
    http: httpx.Client, api_base_url: str, other_org_key: str, model_id: str
) -> None:
    export_id = _export(http, model_id)["id"]
    unknown = http.get("/v1/models/ft:tiny-llama:nobody::ftjob-none/adapter")
    with httpx.Client(base_url=api_base_url, headers={"Authorization": f"Bearer {other_org_key}"}) as other:
        answers = [
            other.get(f"/v1/models/{model_id}/adapter"),
            other.post(f"/v1/models/{model_id}/exports"),
            other.get(f"/v1/models/{model_id}/exports/{export_id}"),
            other.get(f"/v1/models/{model_id}/exports/{export_id}/content"),
        ]

    assert [answer.status_code for answer in answers] == [404] * 4 and unknown.status_code == 404
    assert {answer.json()["error"]["code"] for answer in [*answers, unknown]} == {"model_not_found"}


def test_an_export_lost_with_its_worker_is_made_again_and_the_sweep_clears_what_no_row_names(
    http: httpx.Client, settings: Settings, client: openai.OpenAI, model_id: str
) -> None:
    created = _export(http, model_id)
    organization_id = client.models.retrieve(model_id).owned_by
    lost_tar = export_key(organization_id, created["id"], 1)
    with transaction(settings.require("database_url")) as session:  # as a worker killed after its upload leaves it
        row = session.get_one(ModelExport, created["id"])
        row.status, row.attempt = "running", 1
        row.started_at = datetime.now(UTC) - timedelta(seconds=settings.job_time_limit_seconds + 3600)
    store_for(settings).put_bytes(lost_tar, b"an export nobody finished")
    orphan = f"{export_prefix(organization_id, 'modelexport-deleted')}/attempt-1.tar"  # its model's deletion failed
    store_for(settings).put_bytes(orphan, b"an export whose row is gone")

    assert _export(http, model_id)["status"] == "queued"  # asked again: the lost one is queued again
    run_export(settings, registry_from_settings(settings), created["id"])
    with transaction(settings.require("database_url")) as session:
        swept = leftovers_of_exports(session, store_for(settings))

    assert {lost_tar, orphan} <= set(swept)  # and the tar of the attempt that made the export stays:
    done = http.get(f"/v1/models/{model_id}/exports/{created['id']}").json()
    content = http.get(f"/v1/models/{model_id}/exports/{created['id']}/content")
    assert done["status"] == "succeeded" and len(content.content) == done["bytes"]


def test_the_consistency_check_reports_a_succeeded_export_whose_tar_is_gone(
    http: httpx.Client, settings: Settings, client: openai.OpenAI
) -> None:
    _, model_id, _ = finished_job_with_model(settings, client)
    export_id = _export(http, model_id)["id"]
    tar = export_key(client.models.retrieve(model_id).owned_by, export_id, 1)
    store_for(settings).put_bytes(tar, b"a merged model")
    with transaction(settings.require("database_url")) as session:  # as the worker that made it leaves it
        row = session.get_one(ModelExport, export_id)
        row.status, row.attempt, row.storage_key, row.bytes = "succeeded", 1, tar, len(b"a merged model")

    def reported() -> list[str]:
        with transaction(settings.require("database_url")) as session:
            return [line for line in missing_objects(session, store_for(settings)) if export_id in line]

    assert reported() == []
    store_for(settings).delete(tar)
    try:
        assert reported() == [f"export {export_id}: {tar}"]
    finally:
        store_for(settings).put_bytes(tar, b"a merged model")  # the run's own check at its end must pass
