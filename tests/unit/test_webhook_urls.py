"""Where a webhook may go: https to public addresses, checked on every address a name resolves to, with the
operator's allowed hosts and networks exempt; and the request goes to the address that was checked."""

import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from app.core.webhook_urls import Address, DeliveryFailed, UnsafeUrl, allowance, checked, post

NOBODY = allowance("")


def resolving(*answers: str):  # noqa: ANN201
    def resolve(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address(answer) for answer in answers]

    return resolve


PUBLIC = resolving("93.184.215.14")


def test_an_https_url_on_a_public_address_is_accepted() -> None:
    destination = checked("https://hooks.example.com/in?x=1", NOBODY, PUBLIC)
    assert (destination.host, destination.port, destination.target) == ("hooks.example.com", 443, "/in?x=1")
    assert [str(address) for address in destination.addresses] == ["93.184.215.14"]


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/in", "ftp://hooks.example.com/", "hooks.example.com/in", "https:///no-host"],
)
def test_anything_but_https_is_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl) as refused:
        checked(url, NOBODY, PUBLIC)
    assert refused.value.param == "url" and refused.value.status_code == 400


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1",
     "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"],
)  # fmt: skip
def test_private_loopback_link_local_and_reserved_addresses_are_refused_literal_or_resolved(address: str) -> None:
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeUrl, match="public addresses only"):
        checked(f"https://{literal}/in", NOBODY)
    with pytest.raises(UnsafeUrl, match="public addresses only"):
        checked("https://innocent.example.com/in", NOBODY, resolving(address))


def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    with pytest.raises(UnsafeUrl, match="10.0.0.7"):
        checked("https://mixed.example.com/", NOBODY, resolving("93.184.215.14", "10.0.0.7"))


def test_a_name_that_does_not_resolve_is_refused_saying_so() -> None:
    def fails(host: str, port: int) -> list[Address]:
        raise OSError("Name or service not known")

    with pytest.raises(UnsafeUrl, match="does not resolve"):
        checked("https://nowhere.example.com/", NOBODY, fails)


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(UnsafeUrl, match="user name or password"):
        checked("https://user:pw@hooks.example.com/", NOBODY, PUBLIC)


def test_allowed_networks_and_hosts_may_be_private_and_use_http() -> None:
    allowed = allowance("10.0.0.0/8, Receiver.Internal ,127.0.0.1")
    assert checked("http://10.2.3.4:8080/in", allowed).port == 8080
    assert checked("http://receiver.internal/in", allowed, resolving("192.168.0.9")).host == "receiver.internal"
    assert checked("http://127.0.0.1:9000/", allowed).addresses == (ipaddress.ip_address("127.0.0.1"),)
    with pytest.raises(UnsafeUrl, match="public addresses only"):
        checked("http://192.168.0.9/", allowed)  # not in the list
    with pytest.raises(UnsafeUrl, match="must use https"):
        checked("http://hooks.example.com/", allowed, PUBLIC)  # public, but not listed: https only


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []
    answer = 204

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append((self.path, self.headers["Host"], body))
        self.send_response(self.answer)
        self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_request_goes_to_the_checked_address_with_the_name_in_the_host_header(receiver: int) -> None:
    # `.invalid` never resolves: were the name looked up again to connect, the request could not be sent at all.
    destination = checked(f"http://hooks.invalid:{receiver}/in?x=1", allowance("127.0.0.1/32"), resolving("127.0.0.1"))
    assert post(destination, b'{"a":1}', {"webhook-id": "evt-1"}, timeout_s=5) == 204
    assert _Recorder.seen == [("/in?x=1", f"hooks.invalid:{receiver}", b'{"a":1}')]


def test_a_redirect_is_not_followed(receiver: int) -> None:
    _Recorder.answer = 302
    try:
        destination = checked(f"http://127.0.0.1:{receiver}/in", allowance("127.0.0.1"))
        assert post(destination, b"{}", {}, timeout_s=5) == 302
    finally:
        _Recorder.answer = 204
    assert len(_Recorder.seen) == 1


def test_a_receiver_that_does_not_listen_is_a_failed_delivery() -> None:
    destination = checked("http://127.0.0.1:1/in", allowance("127.0.0.1"))
    with pytest.raises(DeliveryFailed):
        post(destination, b"{}", {}, timeout_s=2)


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext, list[str]]]:
    """An https receiver on 127.0.0.1 with a certificate for `hooks.test` only; the names clients asked for (SNI)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test",
         "-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    names: list[str] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda _socket, name, _context: names.append(name)
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield server.server_address[1], ssl.create_default_context(cafile=cert), names
    server.shutdown()
    server.server_close()


def test_https_to_the_checked_address_names_the_host_in_sni_and_checks_its_certificate_against_it(
    tls_receiver: tuple[int, ssl.SSLContext, list[str]],
) -> None:
    port, trusted, names = tls_receiver
    allowed = allowance("127.0.0.1/32")
    destination = checked(f"https://hooks.test:{port}/in", allowed, resolving("127.0.0.1"))

    assert post(destination, b"{}", {}, timeout_s=5, verify=trusted) == 204
    assert names == ["hooks.test"] and _Recorder.seen == [("/in", f"hooks.test:{port}", b"{}")]
    # The same address under a name the certificate does not hold: refused, so the check is of the name, not the IP.
    other = checked(f"https://other.test:{port}/in", allowed, resolving("127.0.0.1"))
    with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        post(other, b"{}", {}, timeout_s=5, verify=trusted)
