"""How the causal LM is loaded for each method (qlora / lora / full) and distributed mode.

One place decides the ``BitsAndBytesConfig`` and ``from_pretrained`` keyword arguments so that the
quantisation settings follow the distributed mode: under DeepSpeed ZeRO-3 or FSDP the 4-bit weights
are stored in the model dtype (so the sharding engine can flatten them with the other parameters)
and no ``device_map`` is given; a configuration that cannot work stops here, before training, with
one clear message. The merge of an adapter into de-quantised NF4 weights lives here too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from accelerate.utils import str_to_bool
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainingArguments
from trl import ModelConfig, get_peft_config

from reviewtune.atomic import atomic_directory, atomic_write_json
from reviewtune.models.quantization import compute_dtype, load_pretrained, nf4_config
from reviewtune.provenance import provenance

logger = logging.getLogger(__name__)

METHODS = ("qlora", "lora", "full")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def distributed_mode(training_args: TrainingArguments) -> str:
    """``"zero3"``, ``"fsdp"``, ``"deepspeed"`` (ZeRO 0-2), ``"ddp"`` or ``"single"``.

    Read from the training arguments, which pick up ``accelerate launch``'s environment
    (``ACCELERATE_USE_DEEPSPEED``/``ACCELERATE_USE_FSDP``) as well as ``--deepspeed``/``--fsdp``.
    """
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is not None:
        return "zero3" if plugin.zero_stage == 3 else "deepspeed"
    if training_args.fsdp or str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")):
        return "fsdp"
    if training_args.world_size > 1:
        return "ddp"
    return "single"


def is_sharded(mode: str) -> bool:
    """Whether the model's parameters are split across processes (ZeRO-3, FSDP)."""
    return mode in ("zero3", "fsdp")


def training_method(model_args: ModelConfig) -> str:
    """``qlora`` (4-bit base + LoRA), ``lora`` (16/32-bit base + LoRA) or ``full`` fine-tuning."""
    if model_args.load_in_8bit:
        raise ValueError(
            "load_in_8bit is not supported by this recipe: use load_in_4bit: true (QLoRA, NF4), "
            "or load_in_4bit: false for 16/32-bit LoRA or full fine-tuning."
        )
    if model_args.load_in_4bit:
        if not model_args.use_peft:
            raise ValueError(
                "load_in_4bit: true needs use_peft: true; 4-bit weights cannot be trained directly (QLoRA trains "
                "LoRA adapters on top of them)."
            )
        if model_args.bnb_4bit_quant_type != "nf4":
            raise ValueError(f"bnb_4bit_quant_type must be nf4 for QLoRA, got {model_args.bnb_4bit_quant_type!r}.")
        return "qlora"
    return "lora" if model_args.use_peft else "full"


def model_dtype(model_args: ModelConfig) -> torch.dtype | str:
    """The ``dtype`` the non-quantised weights are loaded in (``"auto"`` passes through)."""
    if model_args.dtype in (None, "auto"):
        return "auto"
    return _DTYPES[model_args.dtype]


def bnb_config(
    model_args: ModelConfig, training_args: TrainingArguments, mode: str | None = None
) -> BitsAndBytesConfig | None:
    """NF4 + double quantisation for QLoRA, ``None`` otherwise.

    Quant storage is ``uint8`` unless the model is sharded (ZeRO-3/FSDP), where it must equal the model
    dtype; a different explicit ``bnb_4bit_quant_storage`` there is an error.
    """
    if training_method(model_args) != "qlora":
        return None
    mode = mode or distributed_mode(training_args)
    storage = model_args.bnb_4bit_quant_storage
    if is_sharded(mode):
        dtype = model_dtype(model_args)
        if dtype == "auto":
            raise ValueError(
                f"QLoRA under {mode.upper()} needs an explicit model dtype (e.g. dtype: bfloat16): the 4-bit "
                "weights are stored in that dtype so they can be sharded with the other parameters."
            )
        dtype_name = str(dtype).removeprefix("torch.")
        if storage is None:
            storage = dtype_name
        elif storage != dtype_name:
            raise ValueError(
                f"QLoRA under {mode.upper()} cannot shard 4-bit weights stored as {storage} next to {dtype_name} "
                f"parameters: set bnb_4bit_quant_storage: {dtype_name} (or leave it unset) to match "
                f"dtype: {dtype_name}."
            )
    return nf4_config(
        double_quant=model_args.use_bnb_nested_quant,
        compute_dtype=compute_dtype(training_args.use_cpu),
        quant_storage=storage or "uint8",
    )


def model_loading_kwargs(model_args: ModelConfig, training_args: TrainingArguments) -> dict:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` for this method and distributed mode."""
    mode = distributed_mode(training_args)
    method = training_method(model_args)
    kwargs: dict = {
        "dtype": model_dtype(model_args),
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
    }
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quant = bnb_config(model_args, training_args, mode)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if method == "qlora" and not is_sharded(mode) and torch.cuda.is_available() and not training_args.use_cpu:
        # bitsandbytes quantises while loading, so each process loads onto its own GPU.
        kwargs["device_map"] = {"": training_args.local_process_index}
    # Otherwise no device_map: Trainer/accelerate place the model (ZeRO-3/FSDP must see it unplaced).
    return kwargs


def check_configuration(model_args: ModelConfig, training_args: TrainingArguments, merge: bool = False) -> str:
    """Validate method x distributed mode x precision before anything is loaded; returns the method."""
    method = training_method(model_args)
    bnb_config(model_args, training_args)  # raises for ZeRO-3/FSDP quant-storage mismatches
    if merge and method == "full":
        raise ValueError("--merge merges a LoRA adapter into its base; method 'full' has no adapter to merge.")
    if method == "full" and model_args.lora_target_modules not in (None, "all-linear"):
        logger.warning("use_peft is false (full fine-tuning): lora_* settings are ignored.")
    return method


def load_causal_lm(model_path: str, model_args: ModelConfig, training_args: TrainingArguments):
    """Load the base model for training: quantised for QLoRA and prepared for k-bit training.

    ``prepare_model_for_kbit_training`` (fp32 norms and embeddings) is skipped under ZeRO-3/FSDP, whose flat
    parameters need the single dtype the 4-bit weights are stored in. Activation checkpointing is left to the
    Trainer (``activation_checkpointing``), and the input gradients it needs under PEFT to trl's ``SFTTrainer``:
    PEFT's own switch would call transformers' deprecated ``gradient_checkpointing_enable``.
    """
    from peft import prepare_model_for_kbit_training

    model = load_pretrained(AutoModelForCausalLM, model_path, **model_loading_kwargs(model_args, training_args))
    if training_method(model_args) == "qlora" and not is_sharded(distributed_mode(training_args)):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def peft_config_for(model, model_args: ModelConfig):
    """trl's ``get_peft_config(model_args)`` (``None`` without LoRA), with fully trained modules (``modules_to_save``,
    e.g. embed_tokens of a small base) kept tied to the output embeddings when the model ties them."""
    peft_config = get_peft_config(model_args)
    if peft_config is not None and peft_config.modules_to_save:
        peft_config.ensure_weight_tying = bool(model.config.get_text_config().tie_word_embeddings)
    return peft_config


def adapters_follow_compute_dtype(model, training_args: TrainingArguments) -> None:
    """Keep trainable (LoRA) parameters in fp32 unless compute is bf16, after ``SFTTrainer`` wrapped the model.

    trl casts QLoRA adapters to bf16 (the QLoRA paper's GPU recipe). With fp32 compute (the CPU) bf16
    adapters would silently lose AdamW updates smaller than bf16's resolution, and fp16 mixed precision
    (GPUs without bf16) needs fp32 master weights, so there they go back to fp32.
    """
    if compute_dtype(training_args.use_cpu) == torch.bfloat16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def _inference_kwargs(model_args: ModelConfig, training_args) -> dict:
    """Single-process loading for inference on this process's device: NF4 with uint8 storage for QLoRA."""
    dtype = compute_dtype(training_args.use_cpu)
    kwargs: dict = {"dtype": dtype, "revision": model_args.model_revision,
                    "trust_remote_code": training_args.trust_remote_code}  # fmt: skip
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if training_method(model_args) == "qlora":
        kwargs["quantization_config"] = nf4_config(double_quant=model_args.use_bnb_nested_quant, compute_dtype=dtype)
    if torch.cuda.is_available() and not training_args.use_cpu:
        kwargs["device_map"] = {"": training_args.local_process_index}
    return kwargs


def load_trained_for_generation(run_dir: str | Path, base_model_path: str, model_args: ModelConfig, training_args):
    """A run reloaded on one device: the base + adapter (PEFT; ``disable_adapter()`` gives the base), or the
    fully fine-tuned model. Used where the trained model is sharded (ZeRO-3/FSDP) and cannot generate as is."""
    from peft import PeftModel

    kwargs = _inference_kwargs(model_args, training_args)
    if training_method(model_args) == "full":
        return load_pretrained(AutoModelForCausalLM, run_dir, **{**kwargs, "revision": None})
    base = load_pretrained(AutoModelForCausalLM, base_model_path, **kwargs)
    return PeftModel.from_pretrained(base, str(run_dir))


def merge_adapter(
    run_dir: str | Path, base_model_path: str, model_args: ModelConfig, training_args, tokenizer=None,
    generation_config=None,
) -> Path:  # fmt: skip
    """Write ``run_dir/merged``: the adapter merged into the de-quantised base, in 16-bit (fp32 on CPU).

    For QLoRA the base is loaded in NF4 exactly as in training and de-quantised (``model.dequantize()``),
    so the merged weights are ``dequant(W_nf4) + B @ A * scale``: the function the trained QLoRA model
    computes, not the original full-precision weights plus an adapter trained against NF4 ones.
    ``generation_config`` (the harness's decoding) replaces the base's in the merged model.
    """
    from peft import PeftModel

    run_dir = Path(run_dir)
    method = training_method(model_args)
    dtype = compute_dtype(training_args.use_cpu)
    kwargs = _inference_kwargs(model_args, training_args)
    base = load_pretrained(AutoModelForCausalLM, base_model_path, **kwargs)
    if method == "qlora":
        base = base.dequantize()
    merged = PeftModel.from_pretrained(base, str(run_dir)).merge_and_unload()
    merged = merged.to(dtype)
    if generation_config is not None:
        merged.generation_config = generation_config
    out = run_dir / "merged"
    with atomic_directory(out) as tmp:  # written beside, then renamed into place: readers never see half a model
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / "merge_info.json",
            {
                "method": method,
                "dtype": str(dtype).removeprefix("torch."),
                "base_model": str(base_model_path),
                "provenance": provenance(),
            },
        )
    return out


@contextlib.contextmanager
def outside_zero3(accelerator):
    """Load and run a model on one process while a ZeRO-3 run is active.

    transformers partitions every model built while a ZeRO-3 config is registered, and ``generate`` then waits
    for the other ranks at every token; rank 0 reloading the trained run alone (sample predictions, ``--merge``)
    would hang or crash. Unregister the config for the block and register the run's own again afterwards.
    """
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(plugin.hf_ds_config)
