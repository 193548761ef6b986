"""The benchmarks are ready for the machines they need: their commands parse, with the settings they claim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("sft_qlora_bench", ROOT / "recipes" / "sft_qlora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_trains_adapters_only():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_memory_throughput.py", "--dry_run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    commands = [line.split() for line in proc.stdout.splitlines() if "recipes/sft_qlora.py" in line]
    assert len(commands) == 9
    recipe = _recipe()
    for cmd in commands:
        argv = cmd[cmd.index(next(c for c in cmd if c.endswith("recipes/sft_qlora.py"))) + 1 :]
        assert argv[:2] == ["--config", str(ROOT / "recipes" / "configs" / "sft_qlora_gpu_benchmark.yaml")]
        assert " ".join(argv).count("--use_cpu false --bf16 true") == 1  # on the GPU, in bf16
        # Parsed here on the CPU (TrainingArguments refuses bf16 without a GPU), with the GPU flags last overridden.
        _, _, _, model_args = recipe.parse_args([*argv, "--use_cpu", "true", "--bf16", "false"])
        assert not model_args.lora_modules_to_save  # no fully trained embeddings skewing the memory ratios


def test_cpu_step_profile_variants_parse(tmp_path):
    """Every --ablate variant of benchmarks/cpu_step_profile.py is a config the recipe takes, with its changes."""
    spec = importlib.util.spec_from_file_location("cpu_step_profile", ROOT / "benchmarks" / "cpu_step_profile.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for kind, variants in bench.VARIANTS.items():
        recipe = bench.load_recipe(kind)
        for name, changes in variants.items():
            config = bench.variant_config(recipe, changes, tmp_path / f"{kind}_{name}.yaml")
            parsed = recipe.parse_args(bench.recipe_argv(kind, config, tmp_path / "out", 5, []))
            assert parsed[2].max_steps == 5 and parsed[2].eval_strategy == "no", (kind, name)
            for key, value in changes.items():
                assert [getattr(p, key) for p in parsed if hasattr(p, key)] == [value], (kind, name, key)
    assert bench.SFT_VARIANTS["embeddings_frozen"] == {"lora_modules_to_save": None}  # trained by the default
    default = _recipe().parse_args([])
    assert default[3].lora_modules_to_save and not default[2].activation_checkpointing
