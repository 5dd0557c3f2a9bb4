"""QLoRA's configuration, the refusal to load 4-bit weights without CUDA, and the memory estimate's parameter
count against a real model's."""

import pytest
import torch

from app.ml.base_models.quantization import FOUR_BIT, qlora_config
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.memory import parameter_count, projection_shapes, training_memory
from tests.helpers.tiny_models import TINY_MODEL_ID


def test_qlora_loads_nf4_weights_with_double_quantisation_and_computes_in_bf16() -> None:
    config = qlora_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_4bit_weights_are_refused_on_the_cpu(registry: BaseModelRegistry) -> None:
    with pytest.raises(ValueError, match="4-bit weights need a CUDA device"):
        registry.load(TINY_MODEL_ID, device="cpu", quantization=FOUR_BIT)


def test_the_parameter_count_is_the_models_own(make_model) -> None:
    model = make_model()
    config = model.config.to_dict()

    projections, others = parameter_count(config)

    assert projections + others == sum(p.numel() for p in model.parameters())
    linear = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {name: (m.in_features, m.out_features) for name, m in linear.items() if name != "lm_head"} == (
        projection_shapes(config)
    )


def test_4bit_weights_take_about_a_quarter_of_bf16(make_model) -> None:
    config = make_model().config.to_dict() | {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                               "vocab_size": 128256, "tie_word_embeddings": False}  # fmt: skip
    full = training_memory(config, None, batch_size=1, max_seq_length=512, lora_r=16, target_modules=[])
    quantized = training_memory(config, FOUR_BIT, batch_size=1, max_seq_length=512, lora_r=16, target_modules=[])

    assert 14e9 < full.weights < 17e9  # an 8B model: ~16 GB in bf16
    assert 0.3 < quantized.weights / full.weights < 0.4  # NF4 projections, bf16 embeddings
    assert quantized.adapter == full.adapter and quantized.activations == full.activations
    assert training_memory(config, None, 4, 512, 16, []).activations == 4 * full.activations
