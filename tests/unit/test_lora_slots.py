"""Our grouped LoRA computation against peft's: the same logits for every row of a batch that mixes adapters of
different ranks and targets, rsLoRA scaling, and rows without an adapter."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from app.serving.errors import AdapterRankUnsupported
from app.serving.lora_slots import AdapterSlots, UnsupportedAdapter

CONFIGS = {
    "wide": LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    "narrow": LoraConfig(r=2, lora_alpha=8, target_modules=["o_proj"], init_lora_weights=False),
    "rslora": LoraConfig(
        r=4, lora_alpha=4, target_modules=["k_proj", "up_proj"], use_rslora=True, init_lora_weights=False
    ),
}


@pytest.fixture(scope="module")
def peft_model(make_model):
    torch.manual_seed(3)
    names = iter(CONFIGS)
    first = next(names)
    model = get_peft_model(make_model(), CONFIGS[first], adapter_name=first)
    for name in names:
        model.add_adapter(name, CONFIGS[name])
    return model.eval()


def save(peft_model, name: str, root: Path) -> Path:
    peft_model.save_pretrained(root, selected_adapters=[name])
    return next(root.rglob(f"{name}/adapter_config.json")).parent if name != "default" else root


@pytest.fixture(scope="module")
def adapter_dirs(peft_model, tmp_path_factory) -> dict[str, Path]:
    return {name: save(peft_model, name, tmp_path_factory.mktemp(name)) for name in CONFIGS}


@pytest.mark.parametrize("staged", [False, True], ids=["gathered", "staged"])
def test_mixed_rows_match_peft_row_by_row(peft_model, adapter_dirs, make_model, staged):
    model = make_model().eval()
    slots = AdapterSlots(model, max_slots=2)  # grows from 1 slot, and rank 2 → 8, as adapters arrive
    for name in ["narrow", "wide"]:
        slots.load(name, adapter_dirs[name])
    slots.unload("narrow")
    slots.load("rslora", adapter_dirs["rslora"])  # reuses the freed slot
    rows = ["wide", None, "rslora", "wide", "rslora"]
    input_ids = torch.randint(5, 300, (len(rows), 7), generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        expected = peft_model(input_ids=input_ids, adapter_names=[row or "__base__" for row in rows]).logits
        with slots.routed(rows, staged=staged):
            mixed = model(input_ids=input_ids).logits
        with slots.routed(["wide"] * len(rows)):
            single = model(input_ids=input_ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=input_ids).logits

    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single, peft_model(input_ids=input_ids, adapter_names=["wide"] * len(rows)).logits)
    assert not torch.allclose(mixed[0], base[0], atol=1e-3)  # the adapters do change the logits


def test_batches_that_change_between_forwards_keep_matching_peft(peft_model, adapter_dirs, make_model):
    """The staged copies follow the batch: adapters leave (the last one moves into the freed position) and join, an
    adapter is unloaded and another loaded into its slot while staged, one that targets layers not wrapped yet
    arrives, and a staged adapter is loaded again with other weights."""
    model = make_model().eval()
    slots = AdapterSlots(model, max_slots=3)
    slots.load("wide", adapter_dirs["wide"])
    slots.load("narrow", adapter_dirs["narrow"])
    input_ids = torch.randint(5, 300, (4, 6), generator=torch.Generator().manual_seed(1))

    def check(rows: list[str | None], weights: dict[str, str] | None = None) -> None:
        as_peft = [(weights or {}).get(row, row) if row else "__base__" for row in rows]
        with torch.inference_mode():
            expected = peft_model(input_ids=input_ids, adapter_names=as_peft).logits
            with slots.routed(rows, staged=True):
                got = model(input_ids=input_ids).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    check(["wide", "narrow", None, "wide"])
    check(["narrow", None, None, "narrow"])  # wide left: narrow moves into its position
    with torch.inference_mode(), slots.routed(["wide", "narrow", "narrow", None]):  # a prefill: gathers, stages none
        model(input_ids=input_ids)
    slots.unload("wide")
    slots.load("rslora", adapter_dirs["rslora"])  # into wide's slot; targets k_proj and up_proj, not wrapped yet
    check(["rslora", "narrow", "rslora", None])
    slots.unload("rslora")
    slots.load("wide", adapter_dirs["wide"])  # back into the slot rslora is staged from
    check(["wide", "narrow", "narrow", "wide"])
    slots.load("narrow", adapter_dirs["rslora"])  # the same name, new weights, in its staged slot
    check(["wide", "narrow", "narrow", "wide"], weights={"narrow": "rslora"})


def test_a_full_slot_table_and_unknown_adapters_are_refused(adapter_dirs, make_model):
    slots = AdapterSlots(make_model().eval(), max_slots=1)
    slots.load("wide", adapter_dirs["wide"])
    with pytest.raises(RuntimeError, match="slots are in use"):
        slots.load("narrow", adapter_dirs["narrow"])
    with pytest.raises(KeyError, match="narrow"), slots.routed(["narrow"]):
        pass


def test_dora_adapters_are_refused(make_model, tmp_path):
    config = LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    get_peft_model(make_model(), config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        AdapterSlots(make_model().eval(), max_slots=1).load("dora", tmp_path)


def test_an_adapter_above_the_serving_rank_is_refused_and_leaves_the_slots_as_they_were(adapter_dirs, make_model):
    slots = AdapterSlots(make_model().eval(), max_slots=4, max_rank=4)
    slots.load("narrow", adapter_dirs["narrow"])  # rank 2
    before = slots.slot_bytes()

    with pytest.raises(AdapterRankUnsupported, match="LoRA rank 8; this server serves ranks up to 4"):
        slots.load("wide", adapter_dirs["wide"])

    assert slots.slot_bytes() == before  # the rank-2 adapter's slots did not grow to rank 8
    assert slots.names() == {"narrow"}
