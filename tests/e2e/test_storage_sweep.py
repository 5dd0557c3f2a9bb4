"""What work dying half-way leaves in storage, and the maintenance sweep that clears it: an API process SIGKILLed
in the middle of a file upload leaves no file row, and its S3 multipart upload is aborted by the sweep; expired
unfinished `/v1/uploads` lose their parts' objects; ended jobs lose what they could not delete themselves."""

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from sqlalchemy import select

from app.cli.embedded.process import free_ports
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import adapter_prefix, store_for, training_states_prefix
from app.core.tables import FineTuningJob, Organization, StoredFile, Upload, UploadPart
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import ROOT, new_org_key, settings_env
from worker.storage_sweep import abort_stale_multipart_uploads, expire_uploads, leftovers_of_ended_jobs

LINE = (
    json.dumps({"messages": [{"role": "user", "content": "x" * 900}, {"role": "assistant", "content": "y"}]}) + "\n"
).encode()


def _in_progress(settings: Settings) -> list[str]:
    store = store_for(settings)
    return [upload["Key"] for upload in store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])]


@pytest.fixture
def api_process(settings: Settings) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_ports(1)[0]
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.api.main:create_app",
        "--factory",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(argv, cwd=ROOT, env=settings_env(settings))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
    try:
        yield process, url
    finally:
        process.kill()
        process.wait()


def test_an_api_killed_mid_upload_leaves_no_file_and_the_sweep_aborts_its_parts(
    settings: Settings, api_process: tuple[subprocess.Popen, str]
) -> None:
    process, url = api_process
    org_name = f"killed-{uuid.uuid4().hex[:8]}"
    key = new_org_key(settings, org_name)
    before = set(_in_progress(settings))

    def body() -> Iterator[bytes]:
        """Lines enough for three S3 parts, sent until the API is gone."""
        for _ in range(3 * 8 * 1024 * 1024 // len(LINE)):
            yield LINE * 64
            if set(_in_progress(settings)) - before and process.poll() is None:
                process.kill()  # mid-upload: a part is in S3, the file is not complete

    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{url}/v1/files",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"},
            content=_multipart(body()),
            timeout=60,
        )

    with transaction(settings.require("database_url")) as session:
        org_id = session.scalar(select(Organization.id).where(Organization.name == org_name))
        assert session.scalars(select(StoredFile).where(StoredFile.organization_id == org_id)).all() == []
    left = set(_in_progress(settings)) - before
    assert len(left) == 1 and f"orgs/{org_id}/files/" in next(iter(left))

    assert abort_stale_multipart_uploads(store_for(settings), older_than=timedelta(0)) == list(left)
    assert set(_in_progress(settings)) & left == set()


def _multipart(lines: Iterator[bytes]) -> Iterator[bytes]:
    yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    yield from lines
    yield b"\r\n--b--\r\n"


def test_expired_uploads_lose_their_parts(client: openai.OpenAI, settings: Settings) -> None:
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    client.uploads.parts.create(upload.id, data=b'{"a": 1}\n')
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(Upload, upload.id)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    part_key = next(iter(store_for(settings).list_keys(f"orgs/{row.organization_id}/uploads/{upload.id}/")))

    with transaction(settings.require("database_url")) as session:
        assert upload.id in expire_uploads(session, store_for(settings))

    assert not store_for(settings).exists(part_key)
    with pytest.raises(openai.BadRequestError, match="expired"):
        client.uploads.parts.create(upload.id, data=b'{"a": 1}\n')


def test_parts_of_ended_uploads_that_the_api_could_not_delete_are_swept(
    client: openai.OpenAI, settings: Settings
) -> None:
    """Audit #18: `expire_uploads` looked only at pending uploads, so a completed or cancelled upload's part whose
    deletion failed after the commit (storage down then) stayed forever."""
    data = chat_jsonl()
    store, left = store_for(settings), []
    for ending in ("complete", "cancel"):
        upload = client.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
        part = client.uploads.parts.create(upload.id, data=data)
        if ending == "complete":
            client.uploads.complete(upload.id, part_ids=[part.id])
        else:
            client.uploads.cancel(upload.id)
        with transaction(settings.require("database_url")) as session:
            key = session.get_one(UploadPart, part.id).storage_key
        store.put_bytes(key, data)  # as if the deletion after the commit had failed
        left.append(key)
    pending = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    client.uploads.parts.create(pending.id, data=b'{"a": 1}\n')

    with transaction(settings.require("database_url")) as session:
        expire_uploads(session, store)

    assert not any(store.exists(key) for key in left)
    with transaction(settings.require("database_url")) as session:
        kept = session.scalars(select(UploadPart.storage_key).where(UploadPart.upload_id == pending.id)).all()
    assert len(kept) == 1 and store.exists(kept[0])  # a pending upload keeps its parts


def test_the_sweep_deletes_what_ended_jobs_left_and_keeps_what_live_ones_need(
    client: openai.OpenAI, settings: Settings
) -> None:
    """What a job could not delete while storage was down: training states of any ended job, the adapter of a
    failed or cancelled one. A running job's states and a succeeded job's adapter (its model's) stay."""
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    jobs = {
        status: client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id)
        for status in ("failed", "cancelled", "succeeded", "running")
    }
    store = store_for(settings)
    with transaction(settings.require("database_url")) as session:
        for status, job in jobs.items():
            session.get_one(FineTuningJob, job.id).status = status
    organization = jobs["failed"].organization_id
    for job in jobs.values():
        for prefix in (training_states_prefix(organization, job.id), adapter_prefix(organization, job.id)):
            store.put_bytes(f"{prefix}/state.bin", b"left")

    with transaction(settings.require("database_url")) as session:
        deleted = leftovers_of_ended_jobs(session, store)

    def kept(prefix_of: Callable[[str, str], str], status: str) -> bool:
        return bool(list(store.list_keys(prefix_of(organization, jobs[status].id) + "/")))

    assert not any(kept(training_states_prefix, status) for status in ("failed", "cancelled", "succeeded"))
    assert not kept(adapter_prefix, "failed") and not kept(adapter_prefix, "cancelled")
    assert kept(training_states_prefix, "running") and kept(adapter_prefix, "succeeded")
    assert kept(adapter_prefix, "running")  # an attempt may be uploading it now
    assert len([prefix for prefix in deleted if organization in prefix]) == 5
