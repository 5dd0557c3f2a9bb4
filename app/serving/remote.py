"""Generation on `loraport serve-inference` replicas over HTTP: the API process keeps only tokenizers.

Each adapter (the base model id when there is none) goes to the replica that rendezvous hashing ranks first for
it, so it stays cached on one replica, and adding a replica moves only the adapters it now ranks first for. A
replica that does not answer is skipped for the next in that order; when none answers the request fails with a
503. The wire protocol is the replica's (`app/serving/replica.py`): one JSON line per token, and a last
`{"error": …}` line when generation fails after it began.
"""

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Sequence
from typing import Any

import httpx
import structlog
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase

from app.core.errors import LoraportError, ServiceUnavailable
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_templates import end_of_turn_ids
from app.serving.backend import GeneratedToken, QueuedTokenStream, SamplingParams
from app.serving.errors import EngineError

log = structlog.get_logger()
API_PREFIX = "/internal/v1"


def rendezvous_order(key: str, replicas: Sequence[str]) -> list[str]:
    """`replicas`, the one that should serve `key` first: highest random weight, a hash of (replica, key) that is
    the same in every process, so every API process picks the same replica."""

    def weight(replica: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{replica}\n{key}".encode()).digest()[:8], "big")

    return sorted(replicas, key=lambda replica: (weight(replica), replica), reverse=True)


class ReplicaError(LoraportError):
    """An error a replica reported, passed on to the client with its status, type and code."""

    def __init__(self, error: dict[str, Any], status: int) -> None:
        message = error.get("message") or f"An inference replica failed with status {status}"
        super().__init__(message, param=error.get("param"), code=error.get("code"))
        self.status_code = status
        self.type = error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")


class RemoteTokenStream(QueuedTokenStream):
    """Tokens read off a replica's streamed response by a background thread.

    `cancel()` ends the stream at once and shuts the connection down, which the replica sees as a client gone
    away: it cancels the generation there and frees its batch row.
    """

    def __init__(self, response: httpx.Response, replica: str) -> None:
        self._response = response
        self._replica = replica
        super().__init__()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._reading = True  # the response is open and owned by the reader; guarded by _lock
        self._reader = threading.Thread(target=self._read, name="replica-stream", daemon=True)
        self._reader.start()

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._end()
        with self._lock:
            if self._reading:  # wake the reader (a socket closed elsewhere would not) and tell the replica
                _shutdown(self._response)

    def _read(self) -> None:
        try:
            for line in self._response.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if "token" in item:
                    self._put(_token(item))
                elif "engine_error" in item:
                    self._fail(EngineError.from_wire(item["engine_error"]))
                    return
                elif "error" in item:
                    error = item["error"]
                    self._fail(ReplicaError(error, int(error.get("status") or 500)))
                    return
            self._end()
        except Exception:
            if not self._cancelled.is_set():
                log.warning("inference.replica_stream_broken", replica=self._replica, exc_info=True)
                self._fail(ServiceUnavailable("The inference replica went away while generating; retry the request"))
        finally:
            with self._lock:
                self._reading = False
            self._response.close()


def _token(line: dict[str, Any]) -> GeneratedToken:
    alternatives = tuple((int(token), float(logprob)) for token, logprob in line.get("top_logprobs", ()))
    logprob = line.get("logprob")
    return GeneratedToken(int(line["token"]), None if logprob is None else float(logprob), alternatives)


def _shutdown(response: httpx.Response) -> None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)


class RemoteBackend:
    """`InferenceBackend` over replicas at `replicas` (base URLs); tokenizers and end-of-turn ids are read from
    the registry's files here, so this process never loads weights."""

    def __init__(
        self,
        replicas: Sequence[str],
        registry: BaseModelRegistry,
        token: str | None = None,
        timeout_seconds: float = 300.0,
        connect_timeout_seconds: float = 5.0,
    ) -> None:
        self.replicas = [url.rstrip("/") for url in replicas]
        if not self.replicas:
            raise ValueError("RemoteBackend needs at least one replica URL")
        self._registry = registry
        self._end_of_turn: dict[str, set[int]] = {}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds, connect=connect_timeout_seconds),
            # Every running generation holds a connection; admission, not the pool, bounds how many there are.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase:
        return self._registry.tokenizer(base_model_id)

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        """As the engine computes them: the generation config's eos ids, the tokenizer's eos token and its chat
        template's end-of-turn token."""
        if base_model_id not in self._end_of_turn:
            directory = self._registry.materialize(base_model_id)
            try:
                config = GenerationConfig.from_pretrained(directory)
            except OSError:  # no generation_config.json: transformers derives it from the model's config
                config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory))
            configured = config.eos_token_id
            ids = set(configured if isinstance(configured, list) else [configured])
            ids |= end_of_turn_ids(self.tokenizer(base_model_id))
            self._end_of_turn[base_model_id] = {i for i in ids if i is not None}
        return set(self._end_of_turn[base_model_id])

    def order(self, base_model_id: str, adapter_name: str | None) -> list[str]:
        """The replicas to try for this adapter (or base model), best first."""
        return rendezvous_order(adapter_name or base_model_id, self.replicas)

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> RemoteTokenStream:
        body = {
            "base_model": base_model_id,
            "adapter": adapter_name,
            "prompt_ids": prompt_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "logprobs": params.logprobs,
            "organization": params.organization,
        }
        for replica in self.order(base_model_id, adapter_name):
            request = self._client.build_request("POST", f"{replica}{API_PREFIX}/generate", json=body)
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as error:
                log.warning("inference.replica_unreachable", replica=replica, error=str(error))
                continue
            if response.status_code != 200:
                try:
                    response.read()
                finally:
                    response.close()
                raise _error_of(response, replica)
            return RemoteTokenStream(response, replica)
        raise _none_answered(self.replicas)

    def warm(self, base_model_id: str, adapter_name: str) -> None:
        """Warms the adapter on the replica its requests go to (the next one if that one is down)."""
        for replica in self.order(base_model_id, adapter_name):
            try:
                self._post(replica, "/warm", {"base_model": base_model_id, "adapter": adapter_name})
                return
            except httpx.TransportError as error:
                log.warning("inference.replica_unreachable", replica=replica, error=str(error))
        raise _none_answered(self.replicas)

    def evict(self, adapter_name: str) -> None:
        """Every replica forgets the adapter. Best effort: a replica that is down keeps its files on disk, which
        no request reaches any more (the model is gone from the catalog)."""
        for replica in self.replicas:
            try:
                self._post(replica, "/evict", {"adapter": adapter_name})
            except (httpx.TransportError, LoraportError):
                log.warning("inference.replica_evict_failed", replica=replica, adapter=adapter_name, exc_info=True)

    def close(self) -> None:
        self._client.close()

    def _post(self, replica: str, path: str, body: dict[str, str]) -> dict[str, Any]:
        response = self._client.post(f"{replica}{API_PREFIX}{path}", json=body)
        if response.status_code != 200:
            raise _error_of(response, replica)
        answer: dict[str, Any] = response.json()
        return answer


def _error_of(response: httpx.Response, replica: str) -> LoraportError | EngineError:
    if response.status_code == 401:
        log.error("inference.replica_refused_token", replica=replica)
        return ServiceUnavailable(
            "An inference replica refused this server's credentials; the operator must give the API and its "
            "replicas the same LORAPORT_INFERENCE_REPLICA_TOKEN"
        )
    try:
        answer = response.json()
        if "engine_error" in answer:
            return EngineError.from_wire(answer["engine_error"])
        error = answer["error"]
        if not isinstance(error, dict):
            raise TypeError(error)
    except (ValueError, KeyError, TypeError):
        log.error("inference.replica_bad_answer", replica=replica, status=response.status_code)
        return ServiceUnavailable(f"An inference replica answered with status {response.status_code}")
    return ReplicaError(error, response.status_code)


def _none_answered(replicas: list[str]) -> ServiceUnavailable:
    return ServiceUnavailable(f"No inference replica is reachable ({len(replicas)} configured); retry later")
