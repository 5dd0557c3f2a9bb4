"""The default base model, SmolLM2-135M-Instruct, from the GGUF file in its PyPI package: converted once, then
loaded from the cache, and it answers sensibly. It reads the real model, so it is not a unit test."""

import time

import torch

import app.ml.base_models.registry as registry_module
from app.ml.base_models import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids

DEFAULT_ID = "smollm2-135m-instruct"


def test_default_smollm2_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    conversions = []
    convert = registry_module.convert_gguf
    monkeypatch.setattr(registry_module, "convert_gguf", lambda *args: conversions.append(args) or convert(*args))
    registry = BaseModelRegistry(cache_dir=tmp_path)

    converted = registry.materialize(DEFAULT_ID)
    inode = converted.stat().st_ino
    started = time.perf_counter()
    model, tokenizer = registry.load(DEFAULT_ID)
    print(f"second load from cache: {time.perf_counter() - started:.2f} s")

    assert len(conversions) == 1 and converted.stat().st_ino == inode
    assert (converted / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [DEFAULT_ID], "no staging directory left"
    prompt = render_prompt_ids(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(prompt)
    output = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, len(prompt) :])
    assert model.dtype == torch.float32 and not model.training
