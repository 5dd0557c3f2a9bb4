"""Generation on a `loraport serve-inference` replica (a real process) behind an API that keeps only tokenizers,
through the openai SDK, against the real services."""

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from app.api.main import create_app
from app.cli.embedded.process import free_ports
from app.core.errors import LoraportError
from app.core.settings import Settings
from app.serving.engine import adapter_directory_name
from app.serving.remote import RemoteBackend, rendezvous_order
from tests.helpers.services import ROOT, sdk_client, serving, settings_env
from tests.helpers.waiting import eventually
from tests.helpers.workers import stop

TOKEN = "replica-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = [{"role": "user", "content": "Name three colours."}]


def api_with_replicas(settings: Settings, replicas: list[str], token: str | None) -> FastAPI:
    update = {"inference_replicas": ",".join(replicas), "inference_replica_token": token}
    app = create_app(settings.model_copy(update=update))

    def no_weights_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("the API process loaded model weights although replicas generate")

    app.state.registry.load = no_weights_here
    return app


def start_replica(settings: Settings, port: int, log_path: Path) -> subprocess.Popen:
    """`loraport serve-inference` in a child process on `port`, with the tests' settings and a replica token; returns
    once it answers its health check."""
    argv = [sys.executable, "-m", "app.cli.main", "serve-inference", "--host", "127.0.0.1", "--port", str(port)]
    env = settings_env(settings) | {"LORAPORT_INFERENCE_REPLICA_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the replica did not start:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/internal/v1/health", headers=AUTH, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def replica(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_ports(1)[0]
    process = start_replica(settings, port, tmp_path_factory.mktemp("replica") / "replica.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def remote_api(settings: Settings, replica: str) -> Iterator[tuple[FastAPI, str]]:
    """An API whose replicas are a dead one, ranked first for the base model, and the live one."""
    port = free_ports(1)[0]
    base = settings.default_base_model
    dead = next(
        url
        # as many names as it takes: a live replica whose weight is in the top 1 % for the model outranks 64
        # names with odds of one in two (CI met one), and each try is one hash
        for url in (f"http://127.0.0.1:{port}/gone-{i}" for i in itertools.count())
        if rendezvous_order(base, [url, replica])[0] == url
    )
    app = api_with_replicas(settings, [dead, replica], TOKEN)
    with serving(app) as url:
        yield app, url


@pytest.fixture
def remote_client(remote_api: tuple[FastAPI, str], org_key: str) -> openai.OpenAI:
    return sdk_client(remote_api[1], org_key)


@pytest.fixture
def base(settings: Settings) -> str:
    return settings.default_base_model


def generating(replica: str) -> int:
    return httpx.get(f"{replica}/internal/v1/health", headers=AUTH, timeout=10).json()["generating"]


def test_a_greedy_reply_from_the_replica_equals_the_in_process_engine_s(
    client: openai.OpenAI, remote_client: openai.OpenAI, remote_api: tuple[FastAPI, str], base: str
) -> None:
    options = {"model": base, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    local = client.chat.completions.create(**options)
    remote = remote_client.chat.completions.create(**options)  # the dead replica first, then the live one

    assert remote.choices[0].message.content == local.choices[0].message.content
    assert remote.choices[0].finish_reason == local.choices[0].finish_reason
    assert remote.usage == local.usage
    backend = remote_api[0].state.engine
    assert isinstance(backend, RemoteBackend)
    assert not [value for value in vars(backend).values() if type(value).__module__.startswith("torch")]


def test_seeded_choices_from_the_replica_equal_the_in_process_engine_s(
    client: openai.OpenAI, remote_client: openai.OpenAI, base: str
) -> None:
    options = {"model": base, "prompt": "Name three colours.", "max_tokens": 5, "temperature": 1, "seed": 7, "n": 2}
    local = client.completions.create(**options)
    remote = remote_client.completions.create(**options)

    assert [c.text for c in remote.choices] == [c.text for c in local.choices]


def test_log_probabilities_come_through_the_replica(
    client: openai.OpenAI, remote_client: openai.OpenAI, base: str
) -> None:
    options = {"model": base, "messages": CHAT, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    local = client.chat.completions.create(**options).choices[0].logprobs.content
    remote = remote_client.chat.completions.create(**options).choices[0].logprobs.content

    assert [entry.token for entry in remote] == [entry.token for entry in local] and remote
    assert [entry.logprob for entry in remote] == pytest.approx([entry.logprob for entry in local], abs=1e-4)
    assert [[alt.token for alt in entry.top_logprobs] for entry in remote] == [
        [alt.token for alt in entry.top_logprobs] for entry in local
    ]


def test_streaming_through_the_replica_adds_up_to_the_whole_reply(remote_client: openai.OpenAI, base: str) -> None:
    options = {"model": base, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    whole = remote_client.chat.completions.create(**options)
    chunks = list(remote_client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage == whole.usage


def test_a_client_that_hangs_up_frees_the_replica_s_generation(
    remote_api: tuple[FastAPI, str], replica: str, org_key: str, base: str
) -> None:
    endless = [{"role": "user", "content": "Write the numbers from 1 to 5000, separated by commas."}]
    body = {"model": base, "messages": endless, "max_tokens": 2048, "temperature": 0, "stream": True}
    assert generating(replica) == 0
    headers = {"Authorization": f"Bearer {org_key}"}
    with (
        httpx.Client(base_url=remote_api[1], headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a discarded iterator closes the response, which is a hang-up
        next(lines)
        assert generating(replica) == 1
    # minutes of tokens at this CPU's pace, unless the hang-up reached the replica and cancelled them
    eventually(lambda: generating(replica) == 0, timeout=15, interval=0.1, what="the replica to stop generating")


def test_evict_reaches_every_replica_and_warm_errors_come_back(
    remote_api: tuple[FastAPI, str], settings: Settings, base: str
) -> None:
    backend: RemoteBackend = remote_api[0].state.engine
    adapter = "org-x/ft-gone/adapter"
    cached = settings.adapter_cache_dir / adapter_directory_name(adapter)  # the replica shares this home
    cached.mkdir(parents=True, exist_ok=True)
    (cached / "adapter_model.safetensors").write_bytes(b"stale")

    backend.evict(adapter)  # the dead replica is logged and skipped; the live one deletes its copy

    assert not cached.exists()
    with pytest.raises(LoraportError) as error:
        backend.warm(base, "org-x/ft-missing/adapter")  # nothing in storage: the replica's error, passed on
    assert error.value.status_code == 500


def test_a_wrong_replica_token_is_refused(replica: str, settings: Settings, org_key: str, base: str) -> None:
    generate = {"base_model": base, "adapter": None, "prompt_ids": [1, 2], "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in (("POST", "generate", generate), ("GET", "health", None)):
            refused = httpx.request(method, f"{replica}/internal/v1/{path}", json=body, headers=headers, timeout=10)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_replica_token"

    # an API given the wrong token tells its user the service is unavailable, not that their key is wrong
    with (
        serving(api_with_replicas(settings, [replica], "wrong")) as url,
        pytest.raises(openai.InternalServerError) as error,
    ):
        sdk_client(url, org_key).chat.completions.create(model=base, messages=CHAT, max_tokens=2)
    assert error.value.status_code == 503
    assert "LORAPORT_INFERENCE_REPLICA_TOKEN" in error.value.message


def test_unreachable_replicas_are_a_clear_503(settings: Settings, org_key: str, base: str) -> None:
    nowhere = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    with serving(api_with_replicas(settings, nowhere, TOKEN)) as url:
        client = sdk_client(url, org_key)
        with pytest.raises(openai.InternalServerError) as error:
            client.chat.completions.create(model=base, messages=CHAT, max_tokens=2)
        with pytest.raises(openai.APIError) as streamed:
            list(client.chat.completions.create(model=base, messages=CHAT, max_tokens=2, stream=True))

    assert error.value.status_code == 503
    assert error.value.code == "service_unavailable" and error.value.type == "server_error"
    assert "No inference replica is reachable (2 configured)" in error.value.message
    assert "No inference replica is reachable" in streamed.value.message


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_and_its_restart_serves(
    settings: Settings, org_key: str, base: str, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    log_path = tmp_path / "replica.log"
    process = start_replica(settings, port, log_path)
    try:
        with serving(api_with_replicas(settings, [f"http://127.0.0.1:{port}"], TOKEN)) as url:
            body = {"model": base, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400}
            events = []
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body | {"stream": True},
                headers={"Authorization": f"Bearer {org_key}"}, timeout=120,
            ) as stream:  # fmt: skip
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        if len(events) == 2:  # the role, then the first words: kill it mid-answer
                            process.kill()
                            process.wait()
            assert events[-1] != "[DONE]" and json.loads(events[-1])["error"]["type"] == "server_error"

            process = start_replica(settings, port, log_path)
            auth = {"Authorization": f"Bearer {org_key}"}
            deadline = time.monotonic() + 30
            while True:
                answer = httpx.post(
                    f"{url}/v1/chat/completions", json=body | {"max_tokens": 4}, headers=auth, timeout=120
                )
                if answer.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
    finally:
        stop(process)
