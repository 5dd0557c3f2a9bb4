"""Objects in S3-compatible storage, under one prefix per organisation."""

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.core.settings import Settings

if TYPE_CHECKING:  # the boto3 stubs are a development dependency
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

_PART_SIZE = 8 * 1024 * 1024


class ObjectStore:
    def __init__(self, settings: Settings, probe: bool = False) -> None:
        """`probe`: one attempt with 2 s timeouts (a readiness check), instead of botocore's 60 s, three times."""
        checksum = settings.s3_checksum_mode
        patience = 2 if probe else 60  # seconds to connect and to read; 60 is botocore's default
        self.bucket = settings.s3_bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.require("s3_endpoint_url"),
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(
                request_checksum_calculation=checksum,
                response_checksum_validation=checksum,
                # `max_attempts` counts retries, so 1 would be two tries; `total_max_attempts` counts all of them.
                retries={"total_max_attempts": 1} if probe else {"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                connect_timeout=patience,
                read_timeout=patience,
            ),
        )

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def writer(self, key: str) -> "ObjectWriter":
        return ObjectWriter(self, key)

    def upload_directory(self, prefix: str, directory: Path) -> None:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")

    def download_prefix(self, prefix: str, dest: Path) -> None:
        """Downloads the objects under the folder `prefix` (`…/step-1` leaves out `…/step-10/`)."""
        prefix = _folder(prefix)
        keys = list(self.list_keys(prefix))
        if not keys:
            raise FileNotFoundError(f"no objects under s3://{self.bucket}/{prefix}")
        for key in keys:
            target = _contained(dest, key[len(prefix) :], key)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, key, str(target))

    def open(self, key: str) -> Iterator[bytes]:
        """The object in 1 MiB chunks. The request is made here, not on the first chunk, so an unreachable store
        fails a download before its response starts (a clear 503) rather than cutting it off."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return body.iter_chunks(chunk_size=1024 * 1024)

    def head(self, key: str) -> None:
        """Raises if the object is not there."""
        self.client.head_object(Bucket=self.bucket, Key=key)

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def list_keys(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def subfolders(self, prefix: str) -> Iterator[str]:
        """The names of the folders directly under the folder `prefix`."""
        folder = _folder(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/")
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"].removeprefix(folder).rstrip("/")

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Deletes the objects under the folder `prefix`."""
        for key in list(self.list_keys(_folder(prefix))):
            self.delete(key)


def _folder(prefix: str) -> str:
    return prefix.rstrip("/") + "/"


class ObjectWriter:
    """Writes one object from chunks as they arrive.

    Small objects take one PUT; larger ones a multipart upload whose parts go out on a background
    thread, one at a time, while the caller goes on reading and checking the next part (memory: two
    parts at most). `abort` removes whatever was written, so a failed or refused upload leaves no object
    and no dangling multipart upload behind.
    """

    def __init__(self, store: ObjectStore, key: str, part_size: int = _PART_SIZE) -> None:
        self.store, self.key, self.part_size = store, key, part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight: Future[None] | None = None

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self.part_size:
            self._send_part(bytes(self._buffer))
            self._buffer.clear()

    def close(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:
            client.put_object(Bucket=bucket, Key=self.key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._send_part(bytes(self._buffer))
        self._settle()
        client.complete_multipart_upload(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the part in flight may have failed too; we are removing it all
            self._settle()
        if self._upload_id is not None:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id)
        self.store.delete(self.key)

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            created = self.store.client.create_multipart_upload(Bucket=self.store.bucket, Key=self.key)
            self._upload_id = created["UploadId"]
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        if self._in_flight is not None:
            self._in_flight.result()
        assert self._sender is not None
        self._parts.append({"PartNumber": len(self._parts) + 1})
        self._in_flight = self._sender.submit(self._upload_part, self._upload_id, len(self._parts), data)

    def _upload_part(self, upload_id: str, number: int, data: bytes) -> None:
        response = self.store.client.upload_part(
            Bucket=self.store.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=data
        )
        self._parts[number - 1]["ETag"] = response["ETag"]

    def _settle(self) -> None:
        """Waits for the part in flight and stops the sender thread."""
        try:
            if self._in_flight is not None:
                self._in_flight.result()
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=True)
                self._sender = None


class UnsafeObjectKey(ValueError):
    """An object whose name would be written outside the directory it is downloaded into."""


def _contained(dest: Path, relative: str, key: str) -> Path:
    """`dest / relative`, refused unless it stays inside `dest`: whoever can write the bucket must not be able to
    write files elsewhere as the API or worker user (a key holding `..`, or an absolute path)."""
    parts = relative.split("/")
    target = (dest / relative).resolve()
    if relative.startswith("/") or ".." in parts or not target.is_relative_to(dest.resolve()):
        raise UnsafeObjectKey(f"refusing s3://…/{key}: its name would be written outside {dest}")
    return target


@lru_cache
def store_for(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)


def file_key(organization_id: str, file_id: str) -> str:
    return f"orgs/{organization_id}/files/{file_id}.jsonl"


def results_key(organization_id: str, file_id: str) -> str:
    return f"orgs/{organization_id}/files/{file_id}.csv"


def adapter_prefix(organization_id: str, job_id: str) -> str:
    return f"orgs/{organization_id}/adapters/{job_id}"


def checkpoints_prefix(organization_id: str, job_id: str) -> str:
    """A job's epoch checkpoints: kept while its model is, deleted with it (or by the sweep if the job failed)."""
    return f"orgs/{organization_id}/checkpoints/{job_id}"


def checkpoint_prefix(organization_id: str, job_id: str, step: int) -> str:
    return f"{checkpoints_prefix(organization_id, job_id)}/step-{step}"


def training_states_prefix(organization_id: str, job_id: str) -> str:
    """Where a running job keeps what it needs to resume (optimizer and RNG state); removed when it ends."""
    return f"orgs/{organization_id}/training-state/{job_id}"


def training_state_key(organization_id: str, job_id: str, step: int) -> str:
    return f"{training_states_prefix(organization_id, job_id)}/step-{step}.pt"


def export_prefix(organization_id: str, export_id: str) -> str:
    """A merged-model export's objects: one tar per attempt, each written whole before the row names it."""
    return f"orgs/{organization_id}/exports/{export_id}"


def export_key(organization_id: str, export_id: str, attempt: int) -> str:
    return f"{export_prefix(organization_id, export_id)}/attempt-{attempt}.tar"
