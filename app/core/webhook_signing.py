"""Standard Webhooks signatures, as the openai SDK's `client.webhooks.unwrap()` checks them: HMAC-SHA256 of
`{webhook-id}.{webhook-timestamp}.{body}` with the base64-decoded `whsec_` secret, sent as `v1,<base64>`; several
space-separated signatures when more than one secret is live (the day after a rotation that kept the old one)."""

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64 random bytes


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def hint(secret: str) -> str:
    """Enough of a secret to tell two apart, not enough to sign with."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secrets_: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery: its id (the same on every retry), the time of this attempt, and a signature
    per live secret."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(secret, message_id, timestamp, body) for secret in secrets_),
    }
