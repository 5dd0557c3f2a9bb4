import random

from app.serving.detokenize import Detokenizer

END = 0


def stream(tokenizer, text: str, stop: list[str], end: bool = False) -> tuple[list[str], Detokenizer]:
    detokenizer = Detokenizer(tokenizer, {tokenizer.eos_token_id}, stop)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if end else [])
    deltas = []
    for token_id in ids:
        deltas.append(detokenizer.feed(token_id))
        if detokenizer.finished:
            break
    deltas.append(detokenizer.close())
    return deltas, detokenizer


def test_deltas_add_up_to_the_text_and_an_end_token_finishes_with_stop(tokenizer):
    deltas, detokenizer = stream(tokenizer, "Paris is the capital.", [], end=True)

    assert "".join(deltas) == tokenizer.decode(
        tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"]
    )
    assert detokenizer.finish_reason == "stop"
    assert sum(1 for delta in deltas if delta) > 1  # streamed in pieces, not at the end


def test_a_stop_sequence_cuts_the_text_and_is_never_sent(tokenizer):
    deltas, detokenizer = stream(tokenizer, "one, two, three, four", [", thr"])

    assert "".join(deltas) == "one, two"
    assert all(", thr" not in delta and not delta.endswith(",") for delta in deltas[:-1])
    assert detokenizer.finish_reason == "stop"


def test_running_out_of_tokens_finishes_with_length(tokenizer):
    deltas, detokenizer = stream(tokenizer, "Hello there", ["zzz"])

    assert "".join(deltas).strip() == "Hello there" and detokenizer.finish_reason == "length"
    assert detokenizer.completion_tokens == len(tokenizer("Hello there", add_special_tokens=False)["input_ids"])


def test_characters_split_over_tokens_are_sent_whole(tokenizer):
    text = "Café ☕ naïve 日本語 — 🙂 done. " * 3
    deltas, _ = stream(tokenizer, text, [])

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in delta for delta in deltas)


def held_back_before(text: str, stops: list[str]) -> int:
    """The held-back length as the first implementation computed it (every prefix of every stop, each token)."""
    end = len(text)
    return max(
        (next((n for n in range(min(len(s) - 1, end), 0, -1) if text.endswith(s[:n], 0, end)), 0) for s in stops),
        default=0,
    )


def test_the_held_back_tail_is_the_longest_one_a_stop_may_begin_with(tokenizer):
    rng = random.Random(0)
    for _ in range(2000):
        stops = ["".join(rng.choices("ab ", k=rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choices("ab ", k=rng.randint(0, 12)))
        detokenizer = Detokenizer(tokenizer, set(), stops)
        assert len(text) - detokenizer._safe_end(text) == held_back_before(text, stops), (text, stops)


class CountedStop(str):
    """A stop sequence that counts the characters sliced out of it."""

    sliced = 0

    def __getitem__(self, key):  # type: ignore[override]
        part = super().__getitem__(key)
        CountedStop.sliced += len(part)
        return part


def test_the_work_per_token_on_stops_does_not_grow_with_the_text(tokenizer):
    stops = [CountedStop("X" + "a" * 900), CountedStop("Y" * 300)]
    detokenizer = Detokenizer(tokenizer, set(), stops)
    ids = tokenizer("aa " * 1500, add_special_tokens=False)["input_ids"]
    CountedStop.sliced = 0
    for token_id in ids:
        detokenizer.feed(token_id)

    assert not detokenizer.finished
    assert CountedStop.sliced / len(ids) <= sum(map(len, stops))
