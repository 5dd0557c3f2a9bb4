"""The tenant-isolation matrix: organisation B asks for each of organisation A's objects through every route that
names one (in the path, the body or the dashboard) and gets 404, the same answer as for an id that never existed.

The matrix is checked against the app's routes: a route added with an id in its path and no row here fails
`test_every_route_that_names_an_object_is_in_the_matrix`."""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from app.api.dashboard.pages import router as dashboard_router
from app.api.main import create_app
from app.core.db import transaction
from app.core.keys import find_key
from app.core.settings import Settings
from app.core.tables import FineTunedModel, JobCheckpoint, WebhookEndpoint
from app.core.webhook_signing import new_secret
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.services import new_org_key
from tests.helpers.tiny_models import TINY_MODEL_ID


@dataclass(frozen=True)
class Objects:
    """Organisation A's objects, one of each kind a route can name."""

    file: str
    upload: str
    job: str
    model: str
    checkpoint_model: str
    evaluation: str
    api_key: str
    export: str
    webhook_endpoint: str

    def fill(self, path: str) -> str:
        ids = {"file_id": self.file, "upload_id": self.upload, "job_id": self.job, "evaluation_id": self.evaluation}
        ids |= {"model_id": self.model, "key_id": self.api_key, "export_id": self.export}
        ids |= {"webhook_endpoint_id": self.webhook_endpoint}
        return re.sub(r"\{(\w+)\}", lambda match: ids[match.group(1)], path)


Body = Callable[[Objects], dict[str, Any]]


def _no_body(_: Objects) -> dict[str, Any]:
    return {}


def _chat(model: str) -> dict[str, Any]:
    return {"json": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}}


# (method, path template) → the request's other parts, built from A's objects. Paths are the app's own templates.
PATH_ROUTES: dict[tuple[str, str], Body] = {
    ("GET", "/v1/files/{file_id}"): _no_body,
    ("DELETE", "/v1/files/{file_id}"): _no_body,
    ("GET", "/v1/files/{file_id}/content"): _no_body,
    ("GET", "/v1/files/{file_id}/report"): _no_body,
    ("POST", "/v1/uploads/{upload_id}/parts"): lambda _: {"files": {"data": ("part", b'{"a": 1}\n')}},
    ("POST", "/v1/uploads/{upload_id}/complete"): lambda _: {"json": {"part_ids": ["part-x"]}},
    ("POST", "/v1/uploads/{upload_id}/cancel"): _no_body,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): _no_body,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): _no_body,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/evaluation"): _no_body,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): _no_body,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): _no_body,
    ("GET", "/v1/evaluations/{evaluation_id}"): _no_body,
    ("POST", "/v1/evaluations/{evaluation_id}/cancel"): _no_body,
    ("GET", "/v1/models/{model_id}"): _no_body,
    ("DELETE", "/v1/models/{model_id}"): _no_body,
    ("GET", "/v1/models/{model_id}/adapter"): _no_body,
    ("POST", "/v1/models/{model_id}/exports"): _no_body,
    ("GET", "/v1/models/{model_id}/exports/{export_id}"): _no_body,
    ("GET", "/v1/models/{model_id}/exports/{export_id}/content"): _no_body,
    ("GET", "/jobs/{job_id}"): _no_body,  # dashboard pages
    ("GET", "/files/{file_id}"): _no_body,
    ("GET", "/v1/organization/api_keys/{key_id}"): _no_body,  # B's key is an admin key (fixture below)
    ("DELETE", "/v1/organization/api_keys/{key_id}"): _no_body,
    ("GET", "/v1/webhook_endpoints/{webhook_endpoint_id}"): _no_body,  # B's admin key passes their 403 too
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}"): lambda _: {"json": {"name": "taken"}},
    ("DELETE", "/v1/webhook_endpoints/{webhook_endpoint_id}"): _no_body,
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret"): _no_body,
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/test"): lambda _: {
        "json": {"event_type": "fine_tuning.job.succeeded"}
    },
    ("GET", "/v1/webhook_endpoints/{webhook_endpoint_id}/deliveries"): _no_body,
}

# Routes that name A's objects in their body or query rather than their path.
BODY_ROUTES: dict[str, tuple[str, str, Body]] = {
    "job from A's file": (
        "POST",
        "/v1/fine_tuning/jobs",
        lambda o: {"json": {"model": "smollm2-135m-instruct", "training_file": o.file}},
    ),
    "job continuing A's model": (
        "POST",
        "/v1/fine_tuning/jobs",
        lambda o: {"json": {"model": o.model, "training_file": o.file}},
    ),
    "evaluation of A's model": ("POST", "/v1/evaluations", lambda o: {"json": {"model": o.model, "file": o.file}}),
    "chat with A's model": ("POST", "/v1/chat/completions", lambda o: _chat(o.model)),
    "chat with A's checkpoint": ("POST", "/v1/chat/completions", lambda o: _chat(o.checkpoint_model)),
    "completion with A's model": (
        "POST",
        "/v1/completions",
        lambda o: {"json": {"model": o.model, "prompt": "hi", "max_tokens": 1}},
    ),
}


def _app_routes_with_ids(settings: Settings) -> set[tuple[str, str]]:
    schema = create_app(settings).openapi()["paths"]
    api = {(method.upper(), path) for path, operations in schema.items() if "{" in path for method in operations}
    pages = {(method, route.path) for route in dashboard_router.routes if "{" in route.path for method in route.methods}
    return api | pages


def test_every_route_that_names_an_object_is_in_the_matrix(settings: Settings) -> None:
    assert _app_routes_with_ids(settings) == set(PATH_ROUTES)


def _organisation_a(settings: Settings, client: openai.OpenAI) -> Objects:
    """A's objects; the finished job, its model and checkpoint rows are written directly: isolation needs the rows,
    not a training run."""
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    job_id, model_id, prefix = finished_job_with_model(settings, client)
    with transaction(settings.require("database_url")) as session:
        session.add(
            JobCheckpoint(
                id=f"ftckpt-{job_id}", job_id=job_id, step_number=5, metrics={},
                fine_tuned_model_checkpoint=f"{model_id}:ckpt-step-5", storage_prefix=f"{prefix}/step-5",
            )
        )  # fmt: skip
    evaluation = client.post("/evaluations", body={"model": model_id, "file": file_id}, cast_to=dict)
    export = client.post(f"/models/{model_id}/exports", cast_to=dict)
    with transaction(settings.require("database_url")) as session:
        key = find_key(session, client.api_key)
        assert key is not None
        endpoint = WebhookEndpoint(
            id=f"we-{uuid.uuid4().hex[:12]}", organization_id=key.organization_id, name="a's", secret=new_secret(),
            url="https://hooks.example.com/a", event_types=["fine_tuning.job.succeeded"],
        )  # fmt: skip
        session.add(endpoint)
    checkpoint = f"{model_id}:ckpt-step-5"
    return Objects(
        file_id, upload.id, job_id, model_id, checkpoint, evaluation["id"], key.id, export["id"], endpoint.id
    )


@pytest.fixture
def other_org_key(settings: Settings) -> str:
    """B's key is an admin key: a 404 on the key-management routes must come from the organisation, not a 403."""
    return new_org_key(settings, f"other-{uuid.uuid4().hex[:10]}", admin=True)


def test_organisation_b_gets_404_for_each_of_a_s_objects_on_every_route(
    settings: Settings, api_base_url: str, client: openai.OpenAI, org_key: str, other_org_key: str
) -> None:
    objects = _organisation_a(settings, client)
    requests = {
        f"{method} {path}": (method, objects.fill(path), body(objects)) for (method, path), body in PATH_ROUTES.items()
    }
    requests |= {label: (method, path, body(objects)) for label, (method, path, body) in BODY_ROUTES.items()}

    with httpx.Client(base_url=api_base_url, timeout=60) as b:
        assert b.post("/login", data={"api_key": other_org_key}).status_code == 303  # the pages need a login
        answers = {
            label: b.request(method, path, headers={"Authorization": f"Bearer {other_org_key}"}, **body)
            for label, (method, path, body) in requests.items()
        }

    refused = {request: answer.status_code for request, answer in answers.items() if answer.status_code != 404}
    assert refused == {}
    for label, answer in answers.items():
        if requests[label][1].startswith("/v1/"):
            assert answer.json()["error"]["type"] == "invalid_request_error", label
    # nothing of A's was touched by B's attempts; A's key, which B tried to revoke, still works
    assert client.files.retrieve(objects.file).id == objects.file
    assert client.models.retrieve(objects.model).id == objects.model
    assert client.fine_tuning.jobs.retrieve(objects.job).status == "succeeded"
    with transaction(settings.require("database_url")) as session:
        assert session.scalar(select(FineTunedModel.deleted).where(FineTunedModel.id == objects.model)) is False
        endpoint = session.get_one(WebhookEndpoint, objects.webhook_endpoint)
        assert (endpoint.name, endpoint.previous_secret) == ("a's", None)


def test_organisation_b_s_lists_hold_nothing_of_a_s(
    settings: Settings, client: openai.OpenAI, other_client: openai.OpenAI
) -> None:
    objects = _organisation_a(settings, client)

    assert objects.file not in [f.id for f in other_client.files.list()]
    assert other_client.fine_tuning.jobs.list().data == []
    assert objects.model not in [m.id for m in other_client.models.list()]
    assert other_client.get("/evaluations", cast_to=dict)["data"] == []
    assert other_client.webhooks.list().data == []


def _never_existed(model_id: str) -> str:
    return model_id.replace("ftjob-", "ftjob-nothere")


def test_b_cannot_name_a_s_models_as_teacher_baseline_or_starting_checkpoint(
    settings: Settings, api_base_url: str, client: openai.OpenAI, other_client: openai.OpenAI, other_org_key: str
) -> None:
    """Each answers as for a model that never existed (the same status, code and message, but for the id), so B
    learns nothing of A's; B's own file is used, so only the model named can be refused."""
    objects = _organisation_a(settings, client)
    chats = other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    prompt_lines = b"".join(b'{"prompt": "Ticket %d"}\n' % n for n in range(12))
    prompts = other_client.files.create(file=("p.jsonl", prompt_lines), purpose="fine-tune").id

    def teacher(model: str) -> tuple[str, dict[str, Any]]:
        method = {"type": "distillation", "distillation": {"teacher_model": model}}
        return "/v1/fine_tuning/jobs", {"model": TINY_MODEL_ID, "training_file": prompts, "method": method}

    def baseline(model: str) -> tuple[str, dict[str, Any]]:
        return "/v1/evaluations", {"model": TINY_MODEL_ID, "baseline": model, "file": chats}

    def from_checkpoint(model: str) -> tuple[str, dict[str, Any]]:
        return "/v1/fine_tuning/jobs", {"model": model, "training_file": chats}

    cases = {"teacher": (teacher, objects.model), "baseline": (baseline, objects.model)}
    cases |= {"starting checkpoint": (from_checkpoint, objects.checkpoint_model)}
    with httpx.Client(base_url=api_base_url, headers={"Authorization": f"Bearer {other_org_key}"}) as b:
        for label, (request, a_s_model) in cases.items():
            path, body = request(a_s_model)
            answer = b.post(path, json=body)
            path, body = request(_never_existed(a_s_model))
            unknown = b.post(path, json=body)

            assert answer.status_code in (400, 404) and answer.status_code == unknown.status_code, label
            error, unknown_error = answer.json()["error"], unknown.json()["error"]
            assert (error["code"], error["param"]) == (unknown_error["code"], unknown_error["param"]), label
            assert error["message"] == unknown_error["message"].replace(_never_existed(a_s_model), a_s_model), label
    assert other_client.fine_tuning.jobs.list().data == []
    assert other_client.get("/evaluations", cast_to=dict)["data"] == []
    assert other_client.webhooks.list().data == []


def test_a_cookie_authenticated_write_from_a_same_site_origin_is_refused(
    api_base_url: str, other_org_key: str, client: openai.OpenAI, settings: Settings
) -> None:
    """A page on another port of this host (same site, so SameSite=Lax sends the cookie) posting to the API."""
    objects = _organisation_a(settings, client)
    with httpx.Client(base_url=api_base_url) as browser:
        assert browser.post("/login", data={"api_key": other_org_key}).status_code == 303
        same_site = {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}
        upload = browser.post(
            "/v1/files", headers=same_site, files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"}
        )
        cancel = browser.post(f"/v1/fine_tuning/jobs/{objects.job}/cancel", headers=same_site)
        listed = browser.get("/v1/files").json()["data"]

    assert upload.status_code == 403 and cancel.status_code == 403
    assert listed == []
    assert client.fine_tuning.jobs.retrieve(objects.job).status == "succeeded"
