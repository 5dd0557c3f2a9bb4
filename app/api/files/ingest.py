"""One pass over an upload as it streams in: count bytes against the limit, hash, validate, write to S3."""

import hashlib
from dataclasses import dataclass

from app.api.files.validation_process import ValidationProcess
from app.core.errors import PayloadTooLarge
from app.core.storage import ObjectWriter
from app.ml.datasets.results import ValidationResult


@dataclass(frozen=True)
class Ingested:
    bytes: int
    sha256: str
    validation: ValidationResult


class FileIngest:
    """Feeds every chunk to the size check, the hash, the validator and the object writer.

    Once the validator has found an error the file will be refused, so the bytes stop going to S3
    (validation goes on to report every bad line).
    """

    def __init__(self, writer: ObjectWriter, max_bytes: int, validator: ValidationProcess) -> None:
        self.writer, self.max_bytes, self.validator = writer, max_bytes, validator
        self.size = 0
        self.digest = hashlib.sha256()
        self._writing = True

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"The file is larger than the limit of {self.max_bytes} bytes.", param="file")
        self.digest.update(chunk)
        self.validator.feed_chunk(chunk)
        if self._writing and self.validator.error_count:
            self._writing = False
            self.writer.abort()
        if self._writing:
            self.writer.write(chunk)

    def finish(self) -> Ingested:
        """Validates the end of the file and, if it is good, completes the object in S3."""
        result = self.validator.finish()
        if result.ok:
            self.writer.close()
        elif self._writing:
            self._writing = False
            self.writer.abort()
        return Ingested(self.size, self.digest.hexdigest(), result)

    def abort(self) -> None:
        if self._writing:
            self._writing = False
            self.writer.abort()
