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
