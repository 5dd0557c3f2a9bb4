"""QLoRA: base weights held in 4-bit NF4 by bitsandbytes, computed in bf16, LoRA trained on top (Dettmers et al.
2023). bitsandbytes' 4-bit kernels need a CUDA GPU."""

import torch
from transformers import BitsAndBytesConfig

FOUR_BIT = "4bit"


def qlora_config() -> BitsAndBytesConfig:
    """The QLoRA paper's recipe: NF4 weights, double quantisation of their scales, bf16 compute."""
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # transformers leaves its __init__ unannotated
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
