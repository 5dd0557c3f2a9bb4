"""Objects in S3-compatible storage, under one prefix per organisation."""

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.config import Settings

_PART_SIZE = 8 * 1024 * 1024


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        checksum = settings.s3_checksum_mode
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
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def upload_stream(self, key: str, stream: IO[bytes]) -> None:
        """Multipart upload from a file object, never holding the whole object in memory."""
        self.client.upload_fileobj(
            stream, self.bucket, key, Config=boto3.s3.transfer.TransferConfig(multipart_chunksize=_PART_SIZE)
        )

    def upload_directory(self, prefix: str, directory: Path) -> None:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")

    def download_prefix(self, prefix: str, dest: Path) -> None:
        keys = list(self.list_keys(prefix))
        if not keys:
            raise FileNotFoundError(f"no objects under s3://{self.bucket}/{prefix}")
        for key in keys:
            target = dest / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, key, str(target))

    def open(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        yield from body.iter_chunks(chunk_size=1024 * 1024)

    def head(self, key: str) -> None:
        """Raises if the object is not there."""
        self.client.head_object(Bucket=self.bucket, Key=key)

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def list_keys(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        for key in list(self.list_keys(prefix)):
            self.delete(key)


@lru_cache
def store_for(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)


def file_key(organization_id: str, file_id: str) -> str:
    return f"orgs/{organization_id}/files/{file_id}.jsonl"


def adapter_prefix(organization_id: str, job_id: str) -> str:
    return f"orgs/{organization_id}/adapters/{job_id}"


def checkpoint_prefix(organization_id: str, job_id: str, step: int) -> str:
    return f"orgs/{organization_id}/checkpoints/{job_id}/step-{step}"
