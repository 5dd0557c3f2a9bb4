"""Generated input on the dashboard's routes that the OpenAPI schema (and so test_api_fuzzing.py) leaves out: the
login and logout forms, sent urlencoded, as multipart or mislabelled, with fields missing, unknown, huge (past
the 1 MiB a form field may hold), holding NUL and control characters or bytes that are not UTF-8; the login page's
`next`; the session cookie; ids and queries of the pages. Never a 500, a key that is not the real one never logs in,
a login never sends the browser off the site but back to the page it asked for, and pages answer as pages."""

import html
import re
import uuid
from collections.abc import Iterator
from urllib.parse import quote, quote_from_bytes, urlencode

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from app.api.deps import SESSION_COOKIE
from app.core.settings import Settings
from tests.helpers.services import new_org_key

EXAMPLES = 40
SHORT_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "lp_\x00", "/\\evil.example", "//evil.example", "/\t/evil.example",
                     "https://evil.example", "/jobs\r\nSet-Cookie: x=1", "{{ 7*7 }}", "<script>", "\u202e"]),
)  # fmt: skip
ODD_TEXT = st.one_of(SHORT_TEXT, st.integers(1, 1_100_000).map(lambda size: "A" * size))  # 1 MiB: a field's limit
VALUES = st.one_of(ODD_TEXT.map(str.encode), st.binary(max_size=40))  # st.binary: mostly not UTF-8
# The real key, alone, wrapped or one character short: a value that strips to it is that key, any other is wrong.
KEY_WRAPPING = st.tuples(
    st.sampled_from(["", " ", "\x00", "x", "\t", "lp_"]),
    st.sampled_from([0, 1]),
    st.sampled_from(["", "\n", "\x00", "0"]),
)


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return new_org_key(settings, f"dash-fuzz-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def site(api_base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_base_url, timeout=120) as client:  # redirects are not followed: tests see them
        yield client


def _urlencoded(fields: dict[str, bytes], raw: bool) -> bytes:
    """As browsers encode a form, or with the bytes left raw (a client that does not escape)."""
    pairs = [(name.encode(), value if raw else quote_from_bytes(value).encode()) for name, value in fields.items()]
    return b"&".join(name + b"=" + value for name, value in pairs)


def _multipart(fields: dict[str, bytes], boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _form(fields: dict[str, bytes], encoding: str) -> tuple[bytes, dict[str, str]]:
    if encoding == "multipart":
        boundary = f"fuzz-{uuid.uuid4().hex}"
        return _multipart(fields, boundary), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    kind = {"mislabelled": "text/plain", "json": "application/json"}.get(encoding, "application/x-www-form-urlencoded")
    return _urlencoded(fields, raw=encoding == "raw"), {"Content-Type": kind}


def _assert_stays_on_the_site(answer: httpx.Response) -> None:
    location = answer.headers["location"]
    assert location.startswith("/") and location[1:2] not in ("/", "\\"), location


@hypothesis.given(
    route=st.sampled_from(["/login", "/logout"]),
    api_key=st.one_of(st.none(), VALUES, KEY_WRAPPING),
    next_path=st.one_of(st.none(), VALUES),
    extra=st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8), VALUES, max_size=2),
    encoding=st.sampled_from(["urlencoded", "raw", "multipart", "mislabelled", "json"]),
)
@hypothesis.example("/login", ("", 0, ""), b"//evil.example", {}, "urlencoded")  # the key, sent elsewhere
@hypothesis.example("/login", ("", 0, "\x00"), b"/jobs", {}, "multipart")  # the key and a NUL
@hypothesis.example("/login", (" ", 1, "\n"), None, {}, "raw")  # the key but its last character
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None)
def test_dashboard_forms_never_fail_and_only_the_real_key_logs_in(
    site: httpx.Client,
    settings: Settings,
    key: str,
    route: str,
    api_key: bytes | tuple[str, int, str] | None,
    next_path: bytes | None,
    extra: dict[str, bytes],
    encoding: str,
) -> None:
    site.cookies.clear()
    if isinstance(api_key, tuple):
        prefix, cut, suffix = api_key
        api_key = (prefix + key[: len(key) - cut] + suffix).encode()
    named = {"api_key": api_key, "next": next_path}
    fields = {**extra, **{name: value for name, value in named.items() if value is not None}}
    body, headers = _form(fields, encoding)

    too_large = len(body) > settings.max_json_body_bytes  # a few fields of up to 1 MiB: refused unread
    try:
        answer = site.post(route, content=body, headers=headers)
    except httpx.TransportError:
        assert too_large  # the server sent its 413 and closed the connection while the client was still sending
        return

    assert answer.status_code < 500, answer.text[:500]
    logged_in = SESSION_COOKIE in answer.cookies and answer.cookies[SESSION_COOKIE]
    form_sent = encoding in ("urlencoded", "multipart") or (encoding == "raw" and api_key and b"&" not in api_key)
    is_the_key = api_key is not None and form_sent and api_key.decode("latin-1").strip() == key
    if too_large:
        assert answer.status_code == 413 and not logged_in, answer.text[:500]
    elif route == "/login" and is_the_key:
        assert answer.status_code == 303 and logged_in, answer.text[:500]
    else:
        assert not logged_in and answer.status_code in (303, 400, 401), answer.text[:500]
    if answer.status_code == 303:
        _assert_stays_on_the_site(answer)


@hypothesis.given(cookie=SHORT_TEXT, a=SHORT_TEXT, b=SHORT_TEXT)
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None)
def test_an_odd_cookie_goes_to_the_login_which_brings_the_browser_back_to_its_page(
    site: httpx.Client, key: str, cookie: str, a: str, b: str
) -> None:
    site.cookies.clear()
    address = f"/playground?{urlencode({'a': a, 'b': b})}"

    page = site.get(address, headers={"Cookie": f"{SESSION_COOKIE}={quote_from_bytes(cookie.encode())}"})
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next="), page.text[:500]
    form = site.get(page.headers["location"])
    assert form.status_code == 200, form.text[:500]
    (next_path,) = re.findall(r'name="next" value="([^"]*)"', form.text)

    back = site.post("/login", data={"api_key": key, "next": html.unescape(next_path)})

    assert back.status_code == 303 and back.headers["location"] == address


PAGES = ["/jobs/{}", "/files/{}", "/jobs?after={}", "/playground?a={}&b={}", "/login?next={}", "/models?{}={}"]


@pytest.fixture(scope="module")
def browser(api_base_url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_base_url, timeout=120) as client:
        assert client.post("/login", data={"api_key": key}).status_code == 303
        yield client


@hypothesis.given(page=st.sampled_from(PAGES), value=SHORT_TEXT)
@hypothesis.example(page="/files/{}", value="\x00")
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None)
def test_pages_answer_any_id_or_query_with_a_page_or_a_redirect(browser: httpx.Client, page: str, value: str) -> None:
    address = page.format(*[quote(value.replace("/", ""), safe="")] * page.count("{}"))

    answer = browser.get(address)

    assert answer.status_code < 500, answer.text[:500]
    assert answer.is_redirect or answer.headers["content-type"].startswith("text/html"), (address, answer.text[:500])
