"""The datasets of bench.vs_trl: fixed by their seed, test examples never trained on, answers following each rule."""

import json
import re
from collections.abc import Mapping

import pytest

from bench.vs_trl_data import (
    ACCOUNTS,
    CITIES,
    CUSTOMERS,
    DATASETS,
    DAYS,
    DEPOTS,
    DISPATCH_TEMPLATES,
    FIRST_NAMES,
    GOODS,
    INTENT_TEMPLATES,
    INTENTS,
    ITEMS,
    PRODUCTS,
    QUANTITIES,
    STATUSES,
    TIMES,
    chrf,
    exact,
    json_exact,
)

NAMES = sorted(DATASETS)


def _matching(template: str, text: str, slots: Mapping[str, tuple[str, ...]]) -> re.Match[str] | None:
    """`text` matched against `template`, each {slot} standing for one of its values."""
    pattern = re.escape(template)
    for slot, values in slots.items():
        pattern = pattern.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{'|'.join(map(re.escape, values))})")
    return re.fullmatch(pattern, text)


@pytest.mark.parametrize("name", NAMES)
def test_split_has_the_sizes_asked_for(name: str) -> None:
    split = DATASETS[name].make(0, 140, 40)
    assert (len(split.train), len(split.test)) == (140, 40)
    small = DATASETS[name].make(0, 30, 10)
    assert (len(small.train), len(small.test)) == (30, 10)


@pytest.mark.parametrize("name", NAMES)
def test_split_is_fixed_by_its_seed(name: str) -> None:
    make = DATASETS[name].make
    assert make(1, 140, 40) == make(1, 140, 40)
    assert make(1, 140, 40) != make(2, 140, 40)


@pytest.mark.parametrize("name", NAMES)
def test_no_test_example_is_a_training_one_and_none_repeats(name: str) -> None:
    split = DATASETS[name].make(3, 140, 40)
    prompts = [prompt for prompt, _ in split.train + split.test]
    assert len(set(prompts)) == len(prompts) == 180


def test_dispatch_answers_follow_the_template_and_the_depot() -> None:
    split = DATASETS["dispatch"].make(0, 140, 40)
    slots = {"goods": GOODS, "Goods": tuple(g[0].upper() + g[1:] for g in GOODS), "depot": tuple(d for d, _ in DEPOTS)}
    hubs = dict(DEPOTS)
    used_templates = set()
    for prompt, answer in split.train + split.test:
        text = prompt.removeprefix("Carrier note: ")
        matches = [(t, m) for t, m in ((t, _matching(t[0], text, slots)) for t in DISPATCH_TEMPLATES) if m]
        assert len(matches) == 1, prompt
        (template, desk, severity), match = matches[0]
        used_templates.add(template)
        assert answer == f"desk: {desk}\nseverity: {severity}\nhub: {hubs[match['depot']]}"
    assert len(used_templates) == len(DISPATCH_TEMPLATES)


def test_orders_answers_are_compact_json_of_the_order() -> None:
    split = DATASETS["orders"].make(0, 140, 40)
    words = dict(QUANTITIES)
    for prompt, answer in split.train + split.test:
        order = json.loads(answer)
        assert answer == json.dumps(order, separators=(",", ":"))
        assert list(order) == ["customer", "product", "quantity", "city", "day"]
        assert order["customer"] in CUSTOMERS and order["customer"] in prompt
        assert order["product"] in PRODUCTS and f" {order['product']}" in prompt
        assert order["city"] in CITIES and order["city"] in prompt
        assert order["day"] in DAYS and order["day"] in prompt
        written = [word for word in words if re.search(rf"\b{word}\b", prompt)]
        assert [words[word] for word in written] == [order["quantity"]], prompt


def test_intents_answer_is_the_templates_label() -> None:
    split = DATASETS["intents"].make(0, 140, 40)
    slots = {"account": ACCOUNTS, "when": TIMES}
    for prompt, answer in split.train + split.test:
        text = prompt.removeprefix("Message: ")
        labels = [label for template, label in INTENT_TEMPLATES if _matching(template, text, slots)]
        assert labels == [answer], prompt
    assert {answer for _, answer in split.train} == set(INTENTS)
    assert len(INTENTS) == 8


def test_replies_copy_name_and_item_and_say_what_the_status_means() -> None:
    split = DATASETS["replies"].make(0, 140, 40)
    for prompt, answer in split.train + split.test:
        name = next(n for n in FIRST_NAMES if re.search(rf"\b{n}\b", prompt))
        item = next(i for i in ITEMS if f"the {i}" in prompt)
        meaning = next(reply for status, reply in STATUSES if status in prompt)
        assert answer == f"Hi {name}, your {item} {meaning}."


def _values(name: str, answer: str) -> set[str]:
    """The values a target answer is made of, each tagged with its place."""
    if name == "dispatch":
        return set(answer.splitlines())
    if name == "orders":
        return {f"{key}: {value}" for key, value in json.loads(answer).items()}
    if name == "replies":
        who = answer.removeprefix("Hi ").split(",", 1)[0]
        item = next(i for i in ITEMS if f" your {i} " in answer)
        meaning = next(reply for _, reply in STATUSES if answer.endswith(f" {reply}."))
        return {f"name: {who}", f"item: {item}", f"status: {meaning}"}
    return {answer}


@pytest.mark.parametrize("name", NAMES)
def test_each_test_answer_is_made_of_values_seen_in_training(name: str) -> None:
    """Training answers hold every value of every test answer: the test asks for new combinations only."""
    split = DATASETS[name].make(5, 140, 40)
    seen = set().union(*(_values(name, answer) for _, answer in split.train))
    for _, answer in split.test:
        assert _values(name, answer) <= seen, answer


def test_scorers_give_points_out_of_100() -> None:
    assert exact(" desk: claims\n", "desk: claims") == 100.0
    assert exact("desk: claim", "desk: claims") == 0.0
    assert json_exact('{"b": 2, "a": 1}', '{"a":1,"b":2}') == 100.0
    assert json_exact('{"a":1,"b":3}', '{"a":1,"b":2}') == 0.0
    assert json_exact("not json", '{"a":1}') == 0.0
    assert chrf("Hi Maya, your kettle.", "Hi Maya, your kettle.") == pytest.approx(100.0)
    assert 0.0 < chrf("Hi Maya, your lamp.", "Hi Maya, your kettle.") < 100.0
