"""The evaluation report on crafted answers: its verdict, its warnings and the worst answers side by side."""

from app.ml.scoring.report import Losses, evaluation_report, held_out_examples

TARGETS = [f"category: {c}\npriority: {p}\nteam: {t}" for c, p, t in [
    ("billing", "low", "payments"), ("bug", "high", "mobile"), ("how-to", "low", "support"),
    ("outage", "urgent", "platform"), ("account", "high", "security"),
]]  # fmt: skip


def conversation(i: int, target: str) -> list[dict]:
    return [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": f"Ticket {i}"},
        {"role": "assistant", "content": target},
    ]


EXAMPLES = held_out_examples([conversation(i, t) for i, t in enumerate(TARGETS)], max_examples=100)
BASE = ["I think this is about billing.", "bug", "No idea", "category: outage", "Thanks for your ticket!"]
TUNED = [TARGETS[0], TARGETS[1], TARGETS[2], "category: outage\npriority: high\nteam: platform", TARGETS[4]]


def test_held_out_prompts_end_before_the_answer_and_the_cap_holds():
    conversations = [conversation(i, t) for i, t in enumerate(TARGETS)] + [[{"role": "user", "content": "hi"}]]

    examples = held_out_examples(conversations, max_examples=3)

    assert [e.target for e in examples] == TARGETS[:3]
    assert examples[0].prompt == conversation(0, TARGETS[0])[:2]
    assert len(held_out_examples(conversations, max_examples=100)) == 5  # the one without an answer is skipped


def test_the_verdict_compares_the_tuned_model_with_its_base():
    report = evaluation_report(EXAMPLES, BASE, TUNED, Losses([1.2, 0.6, 0.4], [0.9, 0.5, 0.55], kept_epoch=2))

    assert report["held_out_examples"] == 5
    assert report["fine_tuned_model"]["exact"] == 0.8 and report["base_model"]["exact"] == 0.0
    assert report["fine_tuned_model"]["field_accuracy"] == 14 / 15
    assert report["verdict"] == (
        "fine-tuned: 80 % exact (base: 0 %); format kept in 100 % of answers (base: 0 %); "
        "fields right: 93 % (base: 7 %); validation loss lowest at epoch 2 of 3 (kept)"  # base: 1 field of 15
    )


def test_the_worst_answers_are_shown_with_the_base_answer_beside_them():
    report = evaluation_report(EXAMPLES, BASE, TUNED)

    [worst] = report["worst_examples"]  # the other four are exact
    assert worst["target"] == TARGETS[3] and worst["fine_tuned_answer"] == TUNED[3]
    assert worst["base_answer"] == BASE[3] and worst["prompt"][-1] == {"role": "user", "content": "Ticket 3"}
    assert worst["field_accuracy"] == 2 / 3


def test_warnings_for_a_small_set_overfitting_and_leakage():
    overfit = Losses(train=[1.0, 0.5, 0.1], valid=[0.8, 0.7, 0.9], kept_epoch=2)
    healthy = Losses(train=[1.0, 0.5, 0.3], valid=[0.8, 0.6, 0.5], kept_epoch=3)

    flagged = evaluation_report(EXAMPLES, BASE, TUNED, overfit, leaked_examples=2)["warnings"]
    quiet = evaluation_report(EXAMPLES * 40, BASE * 40, TUNED * 40, healthy)["warnings"]

    assert [w["code"] for w in flagged] == ["small_held_out_set", "overfitting", "validation_leakage"]
    assert "from 0.7000 to 0.9000" in flagged[1]["message"] and "epoch 2 is kept" in flagged[1]["message"]
    assert "Only 5 held-out examples" in flagged[0]["message"]
    assert quiet == []  # 200 examples pin the rate down; losses that keep falling are no overfitting
