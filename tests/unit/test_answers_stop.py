"""Held-out answers stop when asked to between answers (a cancelled evaluation); the batcher goes on serving."""

import pytest

from app.serving.answers import Stopped, answering, greedy_answers

PROMPTS = [[{"role": "user", "content": f"Ticket {i}: it broke"}] for i in range(6)]


def test_answers_stop_at_the_first_answer_after_should_stop_says_so(make_model, tokenizer):
    asked = []

    def stop_after_two() -> bool:
        asked.append(True)
        return len(asked) > 2

    with answering(make_model().eval(), tokenizer, {}) as (batcher, end_ids):
        with pytest.raises(Stopped):
            greedy_answers(batcher, tokenizer, end_ids, PROMPTS, [None], 8, should_stop=stop_after_two)
        assert len(asked) == 3  # two answers read, then stopped

        answers = greedy_answers(batcher, tokenizer, end_ids, PROMPTS[:2], [None], 8)  # the batcher still serves
    assert len(answers[None]) == 2
