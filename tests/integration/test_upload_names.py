"""Generated file names (any Unicode, path parts, NUL and control characters, bidi marks, 10,000 characters, empty,
only dots) sent in a real multipart `POST /v1/files`, raw or quoted as browsers quote them: never a 500, and an
accepted file is listed under a name safe to show, stored under a key made of ids only. A part's headers are
limited (about 4 KiB, by python-multipart), so a name of thousands of characters is a clean 400."""

import unicodedata
import uuid
from collections.abc import Iterator

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from app.api.files.names import MAX_LENGTH
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import file_key, store_for
from app.core.tables import StoredFile
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key

HOSTILE_PARTS = [
    "../", "..\\", "/", "\\", ".", "..", "C:\\Windows\\", "\\\\server\\share\\", "\x00", "\r", "\n", "\r\n", "\t",
    "\x1b[31m", "\x7f", "\x85", "\u202e", "\u200f", "\u200b", "\u2028", "\u2029", "\ufeff", '"', ";", "%2F", "%00",
    " ", "é", "\u0301", "😀", "名前", "\ufffd", "filename=evil", "\u00a0",
]  # fmt: skip
NAMES = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(HOSTILE_PARTS), st.text(max_size=8)), max_size=40).map("".join),
    st.builds(str.__mul__, st.sampled_from(["a", "é", ".", "../", "\u202e", "😀"]), st.integers(100, 10_000)),
    st.sampled_from(["", ".", "..", "...", " ", "./..", "\u202etxt.exe"]),
)
NOT_SHOWN = {"Cc", "Cf", "Zl", "Zp"}  # controls, invisible format marks (bidi overrides), line breaks


def _multipart(name: str, quoted: bool, data: bytes) -> tuple[bytes, str]:
    """A form with `purpose` and `file`, the name written raw or quoted the way browsers do (RFC 7578 §4.2)."""
    boundary = f"loraport-{uuid.uuid4().hex}"
    if quoted:
        name = name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode(),
        name.encode("utf-8"),
        b'"\r\nContent-Type: application/jsonl\r\n\r\n' + data + f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def uploader(api_base_url: str, settings: Settings) -> Iterator[httpx.Client]:
    """One organisation for all the examples (a function-scoped fixture would be shared by them anyway)."""
    key = new_org_key(settings, f"names-{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=api_base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        yield client


@hypothesis.given(name=NAMES, quoted=st.booleans())
@hypothesis.example(name="../../../etc/passwd\x00\r\n.jsonl", quoted=False)
@hypothesis.example(name="C:\\Users\\me\\..\\train.jsonl", quoted=True)
@hypothesis.example(name="a\u2028b\u2029c\x85d\x1b[2Je.jsonl", quoted=True)
@hypothesis.example(name="\u202eldnosj.exe", quoted=False)
@hypothesis.example(name='x"; filename="../evil.sh', quoted=False)
@hypothesis.example(name="é" * 10_000, quoted=True)  # over the parser's header limit: a 400
@hypothesis.example(name="名" * 400, quoted=False)  # within it: shortened
@hypothesis.example(name="...", quoted=False)
@hypothesis.example(name="", quoted=True)
@hypothesis.settings(max_examples=40, deadline=None, database=None)
def test_any_file_name_is_listed_safe_and_never_reaches_the_storage_key(
    name: str, quoted: bool, uploader: httpx.Client, settings: Settings
) -> None:
    body, content_type = _multipart(name, quoted, chat_jsonl())

    answer = uploader.post("/v1/files", content=body, headers={"Content-Type": content_type})

    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        assert answer.json()["error"]["message"], answer.text
        return
    file_id = answer.json()["id"]
    listed = next(item for item in uploader.get("/v1/files").json()["data"] if item["id"] == file_id)
    shown = listed["filename"]
    assert shown and len(shown) <= MAX_LENGTH
    assert "/" not in shown and "\\" not in shown
    assert not [ch for ch in shown if unicodedata.category(ch) in NOT_SHOWN], ascii(shown)
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(StoredFile, file_id)
        org_id, storage_key = row.organization_id, row.storage_key
    stored = list(store_for(settings).list_keys(f"orgs/{org_id}/"))
    assert storage_key == file_key(org_id, file_id) and storage_key in stored
    assert all(key.startswith(f"orgs/{org_id}/files/file-") and key.endswith(".jsonl") for key in stored)
    downloaded = uploader.get(f"/v1/files/{file_id}/content")
    assert downloaded.status_code == 200 and downloaded.content == chat_jsonl()
