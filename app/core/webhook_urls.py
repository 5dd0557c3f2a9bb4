"""Where a webhook may be sent, and the one way it is sent.

Only `https` to public addresses: a URL naming a private, loopback, link-local or otherwise non-global address, or a
host that resolves to one, is refused, so that a tenant cannot make the service call into its own network. The hosts
and networks of `LORAPORT_WEBHOOK_ALLOWED_HOSTS` are exempt, and may use `http`. The check runs on every address the
host resolves to, at create or update and again at each delivery, and the request then goes to the address checked
(the Host header and TLS SNI keep the name): a DNS answer that changes between check and connect (rebinding) cannot
redirect it. No redirects are followed, no proxy is used, and at most `_MAX_RESPONSE_BYTES` of an answer is read.
"""

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import httpx

from app.core.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[Address]]
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_RESPONSE_BYTES = 64 * 1024  # a receiver's answer is not read for its content: a little says it was received


class UnsafeUrl(InvalidRequest):
    code = "invalid_webhook_url"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="url")


class DeliveryFailed(Exception):
    """The receiver could not be reached, or did not answer in time."""


@dataclass(frozen=True)
class Allowance:
    """The hosts (by name) and networks exempt from the public-address rule."""

    hosts: frozenset[str]
    networks: tuple[Network, ...]

    def covers(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


@lru_cache
def allowance(setting: str) -> Allowance:
    """`LORAPORT_WEBHOOK_ALLOWED_HOSTS` read: comma-separated hostnames, addresses and CIDR networks."""
    hosts: set[str] = set()
    networks: list[Network] = []
    for item in (part.strip() for part in setting.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            hosts.add(item.lower().rstrip("."))
    return Allowance(frozenset(hosts), tuple(networks))


@dataclass(frozen=True)
class Destination:
    """A checked URL: its parts, and the addresses it may be sent to."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    addresses: tuple[Address, ...]


def resolve(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def checked(url: str, allowed: Allowance, resolver: Resolver = resolve) -> Destination:
    """`url` as a destination a webhook may be sent to, or `UnsafeUrl` saying why not."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"'{url}' is not a valid URL ({error})") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        raise UnsafeUrl(f"'{url}' is not an https URL: a webhook URL looks like https://example.com/webhooks")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("A webhook URL may not hold a user name or password; authenticate with the signature")
    port = port or _DEFAULT_PORTS[scheme]
    addresses = _addresses(host, port, resolver)
    named = host in allowed.hosts
    for address in addresses:
        if not (named or allowed.covers(address) or _public(address)):
            raise UnsafeUrl(
                f"'{host}' is (or resolves to) {address}, a private, loopback, link-local or reserved address; "
                "webhooks go to public addresses only (an operator may allow hosts in LORAPORT_WEBHOOK_ALLOWED_HOSTS)"
            )
    if scheme != "https" and not (named or all(allowed.covers(address) for address in addresses)):
        raise UnsafeUrl(f"'{url}' uses {scheme}: webhook URLs must use https")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(scheme, host, port, target, tuple(addresses))


def _addresses(host: str, port: int, resolver: Resolver) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError, ValueError):
        addresses = []
    if not addresses:
        raise UnsafeUrl(f"The host '{host}' of the webhook URL does not resolve; check the name")
    return addresses


def _public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def post(
    destination: Destination,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    verify: ssl.SSLContext | bool = True,
) -> int:
    """POSTs `body` to the destination's first checked address and returns the status code; `DeliveryFailed` when
    there is no answer within `timeout_s` (connect to the last byte read). `verify`: the certificates trusted (the
    system's; a test passes its own authority)."""
    address = destination.addresses[0]
    host_header = destination.host if destination.port == _DEFAULT_PORTS[destination.scheme] else None
    url = httpx.URL(
        scheme=destination.scheme, host=str(address), port=destination.port, raw_path=destination.target.encode()
    )
    request_headers = {
        **headers,
        "Host": host_header or f"{_bracketed(destination.host)}:{destination.port}",
        "Content-Type": "application/json",
        "User-Agent": "Loraport-Webhooks/1",
    }
    # The TLS handshake names the host (SNI), and its certificate is checked against that name, not the address.
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout_s, verify=verify) as client:
            request = client.build_request("POST", url, content=body, headers=request_headers, extensions=extensions)
            response = client.send(request, stream=True)
            try:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= _MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                        break
            finally:
                response.close()
    except httpx.HTTPError as error:
        raise DeliveryFailed(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None
    return response.status_code


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
