"""Quantisation settings by method and distributed mode (reviewtune.models.quantization), and real NF4 loading."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from trl import ModelConfig, SFTConfig

from reviewtune.models.loading import (
    bnb_config,
    check_configuration,
    distributed_mode,
    load_causal_lm,
    model_loading_kwargs,
    training_method,
)
from reviewtune.models.quantization import compute_dtype


def _args(tmp_path, **kw) -> SFTConfig:
    return SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kw)


def _qlora(**kw) -> ModelConfig:
    return ModelConfig(model_name_or_path="x", load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True, **kw)


@pytest.fixture
def zero3_env(monkeypatch):
    """What ``accelerate launch`` with a ZeRO-3 DeepSpeed config exports to the recipe."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")


def test_methods():
    assert training_method(_qlora()) == "qlora"
    assert training_method(ModelConfig(use_peft=True)) == "lora"
    assert training_method(ModelConfig()) == "full"
    with pytest.raises(ValueError, match="needs use_peft: true"):
        training_method(ModelConfig(load_in_4bit=True))
    with pytest.raises(ValueError, match="load_in_8bit is not supported"):
        training_method(ModelConfig(load_in_8bit=True, use_peft=True))
    with pytest.raises(ValueError, match="must be nf4"):
        training_method(_qlora(bnb_4bit_quant_type="fp4"))


def test_single_process_cpu(tmp_path):
    args = _args(tmp_path)
    assert distributed_mode(args) == "single"
    assert compute_dtype(args.use_cpu) == torch.float32
    kwargs = model_loading_kwargs(_qlora(dtype="float32"), args)
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    assert q.bnb_4bit_quant_storage == torch.uint8
    assert "device_map" not in kwargs
    assert "quantization_config" not in model_loading_kwargs(ModelConfig(use_peft=True), args)


def test_zero3_quant_storage_follows_model_dtype(tmp_path, zero3_env):
    args = _args(tmp_path)
    assert distributed_mode(args) == "zero3"
    kwargs = model_loading_kwargs(_qlora(dtype="bfloat16"), args)
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert kwargs["dtype"] == torch.bfloat16
    assert "device_map" not in kwargs


def test_zero3_mismatched_storage_stops_with_one_message(tmp_path, zero3_env):
    args = _args(tmp_path)
    with pytest.raises(ValueError, match="set bnb_4bit_quant_storage: bfloat16"):
        check_configuration(_qlora(dtype="bfloat16", bnb_4bit_quant_storage="uint8"), args)
    with pytest.raises(ValueError, match="explicit model dtype"):
        check_configuration(_qlora(dtype="auto"), args)
    # Matching storage is accepted, and LoRA / full fine-tuning are unaffected.
    assert check_configuration(_qlora(dtype="bfloat16", bnb_4bit_quant_storage="bfloat16"), args) == "qlora"
    assert check_configuration(ModelConfig(use_peft=True, dtype="bfloat16"), args) == "lora"


def test_fsdp(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    args = _args(tmp_path)
    assert distributed_mode(args) == "fsdp"
    q = bnb_config(_qlora(dtype="float16"), args)
    assert q.bnb_4bit_quant_storage == torch.float16


def test_merge_needs_an_adapter(tmp_path):
    with pytest.raises(ValueError, match="no adapter to merge"):
        check_configuration(ModelConfig(), _args(tmp_path), merge=True)


def test_load_qlora_model_is_nf4_and_frozen(tiny_causal_dir, tmp_path):
    model = load_causal_lm(str(tiny_causal_dir), _qlora(dtype="float32"), _args(tmp_path))
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears, "no bitsandbytes 4-bit layers"
    assert all(m.weight.quant_type == "nf4" for m in linears)
    assert all(m.weight.quant_state.nested for m in linears)  # double quantisation
    assert not any(p.requires_grad for p in model.parameters())  # k-bit preparation froze the base
    assert model.get_output_embeddings().weight.dtype == torch.float32
