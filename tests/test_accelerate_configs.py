"""accelerate_configs/*.yaml load with accelerate's own loader, and the recipes' settings follow from them.

`accelerate launch --config_file X` turns the file into environment variables for the training processes
(ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_ZERO_STAGE, FSDP_*, ...), and the recipes' ``SFTConfig`` /
``TrainingArguments`` build their DeepSpeed plugin from those. These tests run the launcher's own config
handling in-process (``_validate_launch_command`` + ``prepare_*_env``, exactly what ``launch_command`` runs
before it starts the processes) and then build the objects a recipe builds under that environment.
No GPU here: DeepSpeed/FSDP themselves are not started (docs/distributed.md says what ran where).
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from accelerate.utils.launch import (
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "accelerate_configs"

EXPECTED = {
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu.yaml": DistributedType.MULTI_GPU,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3_qlora.yaml": DistributedType.DEEPSPEED,
    "fsdp_qlora.yaml": DistributedType.FSDP,
    "cpu_2proc.yaml": DistributedType.MULTI_GPU,  # selects the torchrun launcher; the processes run on gloo
}
DEEPSPEED = {
    "deepspeed_zero2.yaml": (2, False),
    "deepspeed_zero3.yaml": (3, True),
    "deepspeed_zero3_qlora.yaml": (3, True),
}


def launcher_env(config: Path, *cli: str) -> tuple[object, dict[str, str]]:
    """The parsed launch arguments and the environment variables `accelerate launch` adds for the processes."""
    args = launch_command_parser().parse_args(["--config_file", str(config), *cli, "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as in accelerate.commands.launch.launch_command
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v}


@pytest.fixture
def clean_state():
    """TrainingArguments initialise accelerate's process-global state; reset it around each test."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def sft_args(tmp_path: Path, **kw):
    from trl import SFTConfig

    base = dict(output_dir=str(tmp_path), report_to=[], bf16=False, per_device_train_batch_size=2)
    return SFTConfig(**{**base, **kw})


def test_the_shipped_set_is_complete():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    cfg = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == EXPECTED[name]
    assert cfg.num_machines == 1
    assert cfg.num_processes == (1 if name == "single_gpu.yaml" else 2)
    assert cfg.use_cpu is (name == "cpu_2proc.yaml")
    # GPU configs train in bf16; the CPU one in fp32.
    assert cfg.mixed_precision == ("no" if name == "cpu_2proc.yaml" else "bf16")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_gives_when_command_and_recipe_settings(name):
    text = (CONFIG_DIR / name).read_text(encoding="utf-8")
    header = text[: text.index("compute_environment:")]
    assert all(line.startswith("#") for line in header.strip().splitlines())
    assert "When:" in header
    assert f"accelerate launch --config_file accelerate_configs/{name}" in header
    assert "Recipe config" in header or "recipe config" in header


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_real_launch_arguments(name):
    """accelerate's loader does not check keys inside deepspeed_config/fsdp_config: a typo would be ignored."""
    dests = {a.dest for a in launch_command_parser()._actions}
    cfg = load_config_from_file(str(CONFIG_DIR / name))
    keys = list(cfg.deepspeed_config) + [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in cfg.fsdp_config]
    assert not [k for k in keys if k not in dests]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_picks_the_intended_launcher(name):
    args, env = launcher_env(CONFIG_DIR / name)
    kind = EXPECTED[name]
    assert args.use_deepspeed is (kind == DistributedType.DEEPSPEED)
    assert args.use_fsdp is (kind == DistributedType.FSDP)
    assert bool(args.multi_gpu) is (kind == DistributedType.MULTI_GPU)
    if kind == DistributedType.NO:
        assert env["ACCELERATE_USE_CPU"] == "False"
    else:  # torchrun-based launchers: one process per rank
        assert int(args.nproc_per_node) == 2


def test_num_processes_on_the_command_line_overrides_the_file():
    args, _ = launcher_env(CONFIG_DIR / "multi_gpu.yaml", "--num_processes", "8")
    assert int(args.nproc_per_node) == 8


@pytest.mark.parametrize("name", sorted(DEEPSPEED))
def test_recipe_builds_its_deepspeed_plugin_from_the_config(name, tmp_path, clean_state):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    stage, zero3_init = DEEPSPEED[name]
    _, env = launcher_env(CONFIG_DIR / name)
    with mock.patch.dict(os.environ, env):
        args = sft_args(tmp_path, gradient_accumulation_steps=4, max_grad_norm=0.5)
    plugin = args.deepspeed_plugin
    assert plugin is not None, "SFTConfig did not build a DeepSpeed plugin under the launcher's environment"
    assert plugin.zero_stage == stage
    assert plugin.zero3_init_flag is zero3_init
    assert plugin.zero3_save_16bit_model is (stage == 3)
    assert plugin.offload_optimizer_device == plugin.offload_param_device == "none"
    # The files leave micro batch, accumulation and clipping to the recipe ("auto") ...
    assert plugin.gradient_accumulation_steps == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"
    # ... and the Trainer fills them from the recipe's arguments, as propagate_args_to_deepspeed does.
    hf_ds = HfTrainerDeepSpeedConfig(plugin.hf_ds_config.config)
    hf_ds.trainer_config_process(args)
    ds = hf_ds.config
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["train_batch_size"] == 2 * args.world_size * 4  # global batch = per-device x processes x accumulation
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


def test_without_the_launcher_no_deepspeed_plugin_is_built(tmp_path, clean_state):
    assert sft_args(tmp_path).deepspeed_plugin is None


def test_fsdp_qlora_config_gives_a_model_fsdp_can_flatten(tiny_causal_dir, tmp_path, clean_state):
    """Under fsdp_qlora.yaml the recipe loads the 4-bit model so that FSDP (use_orig_params false) can flatten it:
    every parameter of each unit the config's auto-wrap policy wraps, and of the root, is floating point and of
    one dtype. (uint8 4-bit storage, the default elsewhere, would fail FSDP's flattening.)"""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoModelForCausalLM

    from reviewtune.models.loading import distributed_mode, model_loading_kwargs
    from reviewtune.models.quantization import load_pretrained

    _, env = launcher_env(CONFIG_DIR / "fsdp_qlora.yaml")
    # sync_module_states makes the plugin ask for the current GPU (where rank > 0 materialise the weights);
    # there is none here, so answer as device 0 would; the recipe's "bf16 GPU?" questions likewise.
    with mock.patch.dict(os.environ, env):
        args = sft_args(tmp_path)
        assert distributed_mode(args) == "fsdp"
        with (
            mock.patch("accelerate.utils.dataclasses.is_cuda_available", return_value=True),
            mock.patch("torch.cuda.current_device", return_value=0),
            mock.patch("torch.cuda.is_available", return_value=True),
            mock.patch("torch.cuda.is_bf16_supported", return_value=True),
        ):
            kwargs = model_loading_kwargs(qlora_model_args(dtype="bfloat16"), args)
            plugin = FullyShardedDataParallelPlugin()
    assert plugin.use_orig_params is False  # what makes one dtype per flat parameter necessary
    model = load_pretrained(AutoModelForCausalLM, str(tiny_causal_dir), **kwargs)
    plugin.set_auto_wrap_policy(model)
    wrapped = [m for m in model.modules() if type(m).__name__ in plugin.transformer_cls_names_to_wrap]
    assert wrapped and {type(m).__name__ for m in wrapped} == set(model._no_split_modules)
    in_units = {id(p) for m in wrapped for p in m.parameters()}
    units = [list(m.parameters()) for m in wrapped] + [[p for p in model.parameters() if id(p) not in in_units]]
    for params in units:
        assert all(p.is_floating_point() for p in params)
        assert len({p.dtype for p in params}) == 1, {p.dtype for p in params}


# -------------------------------------------- quantisation settings follow the config (reviewtune.models.quantization)

# config -> (distributed mode the SFT recipe sees, 4-bit weights sharded with the model)
MODES = {
    "single_gpu.yaml": ("single", False),
    "multi_gpu.yaml": ("single", False),  # in-process world size is 1; under the launcher it is "ddp"
    "cpu_2proc.yaml": ("single", False),
    "deepspeed_zero2.yaml": ("deepspeed", False),
    "deepspeed_zero3.yaml": ("zero3", True),
    "deepspeed_zero3_qlora.yaml": ("zero3", True),
    "fsdp_qlora.yaml": ("fsdp", True),
}


def qlora_model_args(**kw):
    from trl import ModelConfig

    return ModelConfig(model_name_or_path="x", load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True, **kw)


@pytest.mark.parametrize("name", sorted(MODES))
def test_recipe_quantisation_follows_the_config(name, tmp_path, clean_state):
    """As on a GPU node: quant storage = model dtype and no device_map exactly where the model is sharded."""
    import torch

    from reviewtune.models.loading import distributed_mode, model_loading_kwargs

    mode, sharded = MODES[name]
    _, env = launcher_env(CONFIG_DIR / name)
    with mock.patch.dict(os.environ, env):
        args = sft_args(tmp_path)
        assert distributed_mode(args) == mode
        # No GPU here: answer the recipe's "is there a bf16 GPU?" questions as an Ampere+ GPU would.
        with (
            mock.patch("torch.cuda.is_available", return_value=True),
            mock.patch("torch.cuda.is_bf16_supported", return_value=True),
        ):
            kwargs = model_loading_kwargs(qlora_model_args(dtype="bfloat16"), args)
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs["dtype"] == torch.bfloat16
    if sharded:
        assert quant.bnb_4bit_quant_storage == torch.bfloat16
        assert "device_map" not in kwargs
    else:
        assert quant.bnb_4bit_quant_storage == torch.uint8
        assert kwargs["device_map"] == {"": 0}  # each process loads its own 4-bit copy onto its GPU


@pytest.mark.parametrize("name", ["deepspeed_zero3_qlora.yaml", "deepspeed_zero3.yaml", "fsdp_qlora.yaml"])
def test_sharded_config_refuses_quant_storage_unlike_the_model_dtype(name, tmp_path, clean_state):
    from reviewtune.models.loading import check_configuration

    _, env = launcher_env(CONFIG_DIR / name)
    with mock.patch.dict(os.environ, env):
        args = sft_args(tmp_path)
        with pytest.raises(ValueError) as err:
            check_configuration(qlora_model_args(dtype="bfloat16", bnb_4bit_quant_storage="uint8"), args)
        message = str(err.value)
        assert "uint8" in message and "bfloat16" in message and "bnb_4bit_quant_storage" in message
        assert len(message.splitlines()) == 1
        assert check_configuration(qlora_model_args(dtype="bfloat16"), args) == "qlora"  # storage left to the recipe


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "multi_gpu.yaml", "single_gpu.yaml"])
def test_unsharded_config_accepts_uint8_storage(name, tmp_path, clean_state):
    from reviewtune.models.loading import check_configuration

    _, env = launcher_env(CONFIG_DIR / name)
    with mock.patch.dict(os.environ, env):
        args = sft_args(tmp_path)
        assert check_configuration(qlora_model_args(dtype="bfloat16", bnb_4bit_quant_storage="uint8"), args) == "qlora"
