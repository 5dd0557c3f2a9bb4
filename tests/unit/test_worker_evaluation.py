"""Answers and token metrics of several saved adapters and the base model, measured in one pass on one base model:
each equals what that model gives alone."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from app.ml.chat_format import render_prompt_ids
from app.ml.scoring.report import held_out_examples
from worker.held_out import answer_and_measure
from worker.training.trainer import TrainingConfig, held_out_metrics

CONVERSATIONS = [
    [{"role": "user", "content": "Ticket: login fails"}, {"role": "assistant", "content": "category: bug"}],
    [{"role": "user", "content": "Ticket: refund please"}, {"role": "assistant", "content": "category: billing"}],
    [{"role": "user", "content": "Ticket: how to export"}, {"role": "assistant", "content": "category: how-to"}],
]
CONFIG = TrainingConfig(n_epochs=1, batch_size=2, learning_rate=1e-3, seed=0)


def _saved_adapter(make_model, directory, seed: int, r: int, targets: list[str]):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    get_peft_model(make_model(), config).save_pretrained(directory)
    return directory


def test_each_model_measured_together_equals_it_measured_alone(make_model, tokenizer, tmp_path):
    adapters = {
        "a": _saved_adapter(make_model, tmp_path / "a", seed=1, r=4, targets=["q_proj", "v_proj"]),
        "b": _saved_adapter(make_model, tmp_path / "b", seed=2, r=8, targets=["k_proj", "down_proj"]),
    }
    examples = held_out_examples(CONVERSATIONS, max_examples=10)

    outcome = answer_and_measure(make_model().eval(), tokenizer, adapters, examples, CONFIG, max_tokens=6)

    def alone(adapter: str | None) -> tuple[tuple[float, float] | None, list[str]]:
        model = make_model().eval()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapters[adapter]).eval()
        metrics = held_out_metrics(model, tokenizer, CONVERSATIONS, CONFIG)
        answers = []
        for example in examples:
            ids = torch.tensor([render_prompt_ids(tokenizer, example.prompt)])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id
                )
            answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return metrics, answers

    for name in (None, "a", "b"):
        metrics, answers = alone(name)
        measured = outcome.metrics[name]
        assert measured is not None and metrics is not None
        assert (measured.loss, measured.token_accuracy) == (metrics[0], metrics[1])
        assert outcome.answers[name] == answers
    assert len({outcome.metrics[name].loss for name in (None, "a", "b")}) == 3  # type: ignore[union-attr]


def test_without_the_base_model_only_the_adapters_are_measured(make_model, tokenizer, tmp_path):
    adapters = {"a": _saved_adapter(make_model, tmp_path / "a", seed=1, r=4, targets=["q_proj"])}
    examples = held_out_examples(CONVERSATIONS, max_examples=2)

    outcome = answer_and_measure(make_model().eval(), tokenizer, adapters, examples, CONFIG, 4, with_base=False)

    assert set(outcome.answers) == set(outcome.metrics) == {"a"} and len(outcome.answers["a"]) == 2
