"""Which replica serves which adapter (rendezvous hashing), and what the API keeps locally when replicas generate."""

from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.cli.embedded.process import free_ports
from app.core.errors import ServiceUnavailable
from app.ml.base_models import BaseModelRegistry, BaseModelSpec
from app.serving.backend import SamplingParams
from app.serving.engine import model_end_of_turn_ids
from app.serving.remote import RemoteBackend, rendezvous_order
from tests.helpers.tiny_models import TINY_MODEL_ID

REPLICAS = [f"http://10.0.0.{i}:8100" for i in range(1, 5)]
ADAPTERS = [f"org-{i % 7}/ft-{i:04d}/adapter" for i in range(2000)]


def owners(replicas: list[str]) -> dict[str, str]:
    return {adapter: rendezvous_order(adapter, replicas)[0] for adapter in ADAPTERS}


def test_the_order_is_stable_and_ignores_how_replicas_are_listed() -> None:
    order = rendezvous_order("org-1/ft-0001/adapter", REPLICAS)

    assert sorted(order) == sorted(REPLICAS)
    assert rendezvous_order("org-1/ft-0001/adapter", list(reversed(REPLICAS))) == order
    assert rendezvous_order("org-1/ft-0001/adapter", REPLICAS) == order
    # pinned values: another process, or another Python, must route the same way (no salted hash())
    assert order == [
        "http://10.0.0.1:8100",
        "http://10.0.0.3:8100",
        "http://10.0.0.2:8100",
        "http://10.0.0.4:8100",
    ]


def test_adapters_spread_over_the_replicas() -> None:
    counts = {replica: 0 for replica in REPLICAS}
    for owner in owners(REPLICAS).values():
        counts[owner] += 1

    assert all(0.18 < count / len(ADAPTERS) < 0.32 for count in counts.values()), counts


def test_adding_a_replica_moves_only_the_adapters_it_takes() -> None:
    before = owners(REPLICAS)
    added = "http://10.0.0.5:8100"
    after = owners([*REPLICAS, added])

    moved = [adapter for adapter in ADAPTERS if before[adapter] != after[adapter]]
    assert all(after[adapter] == added for adapter in moved)  # nothing moves between the old replicas
    assert 0.12 < len(moved) / len(ADAPTERS) < 0.28  # about 1/5, where a modulo hash would move 4/5


def test_losing_a_replica_moves_only_its_adapters() -> None:
    before = owners(REPLICAS)
    after = owners(REPLICAS[1:])

    assert {adapter for adapter in ADAPTERS if before[adapter] != after[adapter]} == {
        adapter for adapter, owner in before.items() if owner == REPLICAS[0]
    }
    # and each goes where the full order said its second choice was
    assert all(after[a] == rendezvous_order(a, REPLICAS)[1] for a, o in before.items() if o == REPLICAS[0])


@pytest.mark.parametrize("generation_config", ["eos list", "none"])
def test_the_api_side_reads_end_of_turn_ids_as_the_engine_does(
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerFast,
    make_model: Callable[[], LlamaForCausalLM],
    generation_config: str,
) -> None:
    model_dir = tmp_path / "model"
    model = make_model()
    if generation_config == "eos list":  # as many instruct models have: end of turn and end of text
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    if generation_config == "none":
        (model_dir / "generation_config.json").unlink()
    spec = BaseModelSpec(id="m", source="local", location=str(model_dir), gguf_filename=None, lora_target_modules=(),
                         max_seq_length=512, created=0)  # fmt: skip
    registry = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: [spec])

    expected = set(model_end_of_turn_ids(*registry.load("m")))
    assert RemoteBackend(["http://127.0.0.1:1"], registry).end_of_turn_ids("m") == expected
    assert len(expected) == (2 if generation_config == "eos list" else 1)


def test_no_reachable_replica_is_a_503(registry: BaseModelRegistry) -> None:
    backend = RemoteBackend([f"http://127.0.0.1:{port}" for port in free_ports(2)], registry)

    with pytest.raises(ServiceUnavailable) as error:
        backend.stream_tokens(TINY_MODEL_ID, None, [1, 2, 3], SamplingParams(max_tokens=2))
    assert error.value.status_code == 503 and "No inference replica is reachable (2 configured)" in error.value.message
    backend.evict("org/ft/adapter")  # best effort: nothing raised for replicas that are down
