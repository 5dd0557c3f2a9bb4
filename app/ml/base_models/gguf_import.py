"""Turning a GGUF file shipped in a Python package into a transformers model directory."""

import importlib.metadata
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def packaged_gguf(package: str, filename: str | None = None) -> Path:
    """Path of the .gguf file (or the one named `filename`) installed with `package`, without importing it."""
    distribution = importlib.metadata.distribution(package)
    candidates = [
        file
        for file in distribution.files or []
        if file.name.endswith(".gguf") and (filename is None or file.name == filename)
    ]
    if len(candidates) != 1:
        wanted = filename or "exactly one .gguf file"
        raise FileNotFoundError(f"package {package!r} does not contain {wanted} (found {len(candidates)})")
    return Path(str(distribution.locate_file(candidates[0])))


def convert_gguf(gguf_path: Path, destination: Path) -> None:
    """Dequantise `gguf_path` and save model and tokenizer as safetensors into `destination`."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers marks GGUF-loaded models as quantised and refuses to save them, although the weights
    # are already dequantised; dropping the marker makes save_pretrained write plain weights.
    model.hf_quantizer = None  # type: ignore[assignment]  # an attribute transformers sets without declaring it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
