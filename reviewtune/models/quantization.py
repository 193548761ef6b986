"""4-bit NF4: the one ``BitsAndBytesConfig`` builder, the compute dtype, and the guard against packed CPU weights.

Light on purpose (torch and transformers' config class only): classifier and scoring processes import it
without loading trl or peft.

Why the guard: bitsandbytes (0.49+) converts a ``Linear4bit`` weight in place to a packed layout for its
AVX512-BF16 CPU kernel at the first eval-mode forward without grad, on CPUs that have the instruction set
(Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later), and nothing converts it back. Later
training forwards then run through a kernel that passes no gradient to the layer's input (LoRA layers below
train on wrong gradients, silently), layers whose out_features is not a multiple of 32 assert, a layer with
a bias crashes at the first backward, and a ZeRO-3 checkpoint asserts on the packed dtype. The suite's sample
predictions, packing check and evaluations all run such forwards, so every 4-bit model the suite loads keeps
its weights unpacked (:func:`keep_4bit_weights_unpacked`); packing is prevented, never undone afterwards
(the inverse re-quantises with a bf16-rounded absmax and is lossy).
"""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

NF4 = "nf4"


def compute_dtype(use_cpu: bool = False) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU (``use_cpu`` or no GPU)."""
    if torch.cuda.is_available() and not use_cpu:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def nf4_config(
    *, double_quant: bool, compute_dtype: torch.dtype, quant_storage: str | torch.dtype = "uint8"
) -> BitsAndBytesConfig:
    """The suite's only 4-bit config: NF4 (QLoRA), optional double quantisation, compute in ``compute_dtype``.

    Written here rather than with trl's ``get_quantization_config``, which sets the compute dtype to the
    weights' ``dtype`` ("auto" included); the suite computes in the hardware's dtype (fp32 on a CPU) and stores
    the 4-bit weights in the model dtype only under ZeRO-3/FSDP (``quant_storage``).
    """
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=NF4,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage,
    )


def keep_4bit_weights_unpacked(model: torch.nn.Module) -> int:
    """Stop every bitsandbytes ``Linear4bit`` of ``model`` from packing its weight for the CPU kernel.

    ``support_avx512bf16_for_cpu`` is the layer's own switch for that path (bitsandbytes sets it from the
    CPU's flags when the layer is built). Returns how many 4-bit layers were found.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_pretrained(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained(name_or_path, **kwargs)``; a 4-bit model comes back with unpacked weights.

    Every model the suite loads with a ``quantization_config`` goes through here.
    """
    model = auto_class.from_pretrained(name_or_path, **kwargs)
    if kwargs.get("quantization_config") is not None:
        keep_4bit_weights_unpacked(model)
    return model
