"""Our signatures are the ones the openai SDK checks (`client.webhooks.verify_signature`), for each live secret."""

import time

import openai
import pytest

from app.core.webhook_signing import hint, new_secret, signed_headers

BODY = b'{"id":"evt-1","object":"event","created_at":1,"type":"fine_tuning.job.succeeded","data":{"id":"ftjob-1"}}'


@pytest.fixture
def sdk() -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:1")


def test_the_sdk_accepts_our_signature_and_refuses_a_tampered_body_or_another_secret(sdk: openai.OpenAI) -> None:
    secret = new_secret()
    headers = signed_headers([secret], "evt-1", int(time.time()), BODY)
    event = sdk.webhooks.unwrap(BODY, headers, secret=secret)
    assert (event.type, event.data.id) == ("fine_tuning.job.succeeded", "ftjob-1")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(BODY.replace(b"ftjob-1", b"ftjob-2"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(BODY, headers, secret=new_secret())


def test_with_two_live_secrets_either_verifies(sdk: openai.OpenAI) -> None:
    new, old = new_secret(), new_secret()
    headers = signed_headers([new, old], "evt-1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split()) == 2
    sdk.webhooks.verify_signature(BODY, headers, secret=new)
    sdk.webhooks.verify_signature(BODY, headers, secret=old)


def test_secrets_are_whsec_random_and_their_hint_shows_only_the_end() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert hint(first) == f"whsec_...{first[-4:]}" and first[6:-4] not in hint(first)
