"""Real 2-process data-parallel runs of both recipes on the CPU, checked against 1-process runs.

Each 2-process run is launched the way a user launches it, ``accelerate launch --config_file
accelerate_configs/<x>.yaml recipes/<recipe>.py ...`` (the torchrun launcher underneath, gloo on the CPU):

- SFT QLoRA (NF4 layers) under ``cpu_2proc.yaml`` (DDP) and under ``deepspeed_zero3_qlora.yaml`` (DeepSpeed
  ZeRO-3 with the 4-bit weights stored in the model dtype and sharded; runs on the CPU with
  ``--use_cpu false --ddp_backend gloo``, see docs/distributed.md);
- the RoBERTa classifier (LoRA, ``sentiment``) under ``cpu_2proc.yaml``.

The recipe runs unchanged inside a small wrapper (``PROBE``) that subclasses its trainer class to record,
on every rank, the examples of each training step (a hash of each row's non-padding token ids), and
counts which rank called the recipe's output writers. From that the tests check that both processes
joined one group, that the ranks trained on different examples whose union per step is exactly the
1-process run's batch (equal global batch: 2 processes x 4 = 1 process x 8), that only rank 0 wrote the
summary, and that losses and trained weights match the 1-process run within ``LOSS_RTOL`` / ``PARAM_ATOL``
(measured: ~1e-6, the difference of summation order in the gradient all-reduce).
Dropout is off (``lora_dropout 0``, a dropout-free copy of the tiny RoBERTa), as ranks draw different masks.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
LOSS_RTOL = 1e-4  # per-step training loss, relative
PARAM_ATOL = 1e-4  # trained adapter / head weights (|w| up to ~0.15 after these steps)
STEPS = 4
TIMEOUT_S = 420

PROBE = r'''
"""Run a recipe's main() with its trainer class wrapped to record what each rank trained on and wrote."""
import hashlib, importlib.util, json, os, sys

recipe_path, probe_dir, trainer_attr, *argv = sys.argv[1:]
if os.environ.get("PROBE_NO_DS_SHM") == "1":
    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (minutes on 2 cores) and falls back to
    # torch.distributed (gloo) when it is unavailable; take the fallback so CI does not compile C++.
    # (``deepspeed.comm.torch`` as an attribute is the torch package; the submodule is only in sys.modules.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
spec = importlib.util.spec_from_file_location("recipe_under_test", recipe_path)
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
rank = int(os.environ.get("RANK", 0))
runs, writes = [], []

for owner in (recipe, getattr(recipe, "run_directory", None)):  # the recipe's names, or its run_directory module's
    for name in ("write_run_summary", "save_token_frequencies", "atomic_write_json"):
        if owner is not None and hasattr(owner, name):
            def wrapped(*args, _f=getattr(owner, name), _name=name, **kwargs):
                writes.append(_name)
                return _f(*args, **kwargs)
            setattr(owner, name, wrapped)

Base = getattr(recipe, trainer_attr)


class Probe(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        acc = self.accelerator
        linear4bit = [m for m in self.model.modules()  # bitsandbytes' layers, not PEFT's wrappers of the same name
                      if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")]
        self._probe = {
            "num_processes": acc.num_processes, "process_index": acc.process_index,
            "distributed_type": str(acc.distributed_type).split(".")[-1], "deepspeed": self.is_deepspeed_enabled,
            "nf4_layers": len(linear4bit),
            "quant_storage": sorted({str(m.weight.dtype) for m in linear4bit}),
            "steps": [],
        }
        runs.append(self._probe)
        if os.environ.get("PROBE_STOP_AFTER_STEP"):  # an interrupted run: stop (after saving) at this step
            from transformers import TrainerCallback

            stop_at = int(os.environ["PROBE_STOP_AFTER_STEP"])

            class Interrupt(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    if state.global_step >= stop_at:
                        control.should_save = control.should_training_stop = True

            self.add_callback(Interrupt())

    def training_step(self, model, inputs, *args, **kwargs):
        if not self._probe["steps"]:  # after accelerate/DeepSpeed prepared the model
            params = list(model.parameters())
            self._probe["zero3_partitioned"] = sum(hasattr(p, "ds_id") for p in params)
            self._probe["zero3_partitioned_4bit"] = sum(
                hasattr(p, "ds_id") and type(p).__name__ == "Params4bit" for p in params
            )
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        rows = [row[m.bool()] for row, m in zip(ids, mask)] if mask is not None else list(ids)
        keys = [hashlib.sha1(r.cpu().numpy().tobytes()).hexdigest()[:16] for r in rows]
        self._probe["steps"].append(keys)
        return super().training_step(model, inputs, *args, **kwargs)


setattr(recipe, trainer_attr, Probe)
recipe.main(argv)
os.makedirs(probe_dir, exist_ok=True)
with open(os.path.join(probe_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
    json.dump({"rank": rank, "runs": runs, "writes": writes}, f)
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from reviewtune.data.synthetic import synthetic_splits

    d = tmp_path_factory.mktemp("mp_data")
    for split, records in synthetic_splits(n=100, seed=3).items():
        (d / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
    return d


def data_args(data_dir: Path) -> list[str]:
    return [
        *("--train_file", str(data_dir / "train.jsonl"), "--validation_file", str(data_dir / "validation.jsonl")),
        *("--test_file", str(data_dir / "test.jsonl"), "--max_train_samples", "64", "--max_eval_samples", "8"),
    ]


def run_one_process(probe: Path, recipe: str, trainer_attr: str, out: Path, args: list[str]) -> None:
    """The 1-process reference, in this pytest process (no launcher, no process group)."""
    argv = [str(probe), str(ROOT / "recipes" / recipe), str(out / "probe"), trainer_attr, *args]
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(str(probe), run_name="__main__")
    finally:
        sys.argv = old


def launch_two_processes(
    probe: Path,
    config: str,
    recipe: str,
    trainer_attr: str,
    out: Path,
    args: list[str],
    launch_args: tuple[str, ...] = (),
    env: dict | None = None,
    probe_name: str = "probe",
) -> None:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *launch_args,
        str(probe), str(ROOT / "recipes" / recipe), str(out / probe_name), trainer_attr, *args,
    ]  # fmt: skip
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # CPU runs, also on a machine with GPUs
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        **(env or {}),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=TIMEOUT_S)
    log = proc.stdout + proc.stderr
    (out / f"{probe_name}_launch.log").write_text(log, encoding="utf-8")
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}; last lines:\n" + "\n".join(
        log.splitlines()[-40:]
    )


def read_probe(out: Path, probe_name: str = "probe") -> dict[int, dict]:
    files = sorted((out / probe_name).glob("rank*.json"))
    return {json.loads(f.read_text())["rank"]: json.loads(f.read_text()) for f in files}


def concat_launches(first: dict, resumed: dict) -> dict:
    """One rank's probe of an interrupted launch followed by the resumed one, as if it were one run."""
    run = {**resumed["runs"][0], "steps": first["runs"][0]["steps"] + resumed["runs"][0]["steps"]}
    return {**resumed, "runs": [run], "writes": first["writes"] + resumed["writes"]}


def check_two_ranks(two: dict[int, dict], one: dict[int, dict], distributed_type: str) -> None:
    """Both ranks in one group; different halves of the 1-process batches; only rank 0 wrote the summary."""
    assert sorted(two) == [0, 1], "expected one probe file per rank"
    ref = one[0]["runs"]
    for rank, p in two.items():
        assert len(p["runs"]) == len(ref)
        for run in p["runs"]:
            assert run["num_processes"] == 2 and run["process_index"] == rank
            assert run["distributed_type"] == distributed_type
    for i, ref_run in enumerate(ref):
        r0, r1 = two[0]["runs"][i]["steps"], two[1]["runs"][i]["steps"]
        assert len(r0) == len(r1) == len(ref_run["steps"]) == STEPS
        for step, (a, b, whole) in enumerate(zip(r0, r1, ref_run["steps"], strict=True)):
            assert len(a) == len(b) == len(whole) // 2 == 4, f"step {step}: per-rank batch sizes {len(a)}, {len(b)}"
            assert Counter(a) != Counter(b), f"step {step}: both ranks trained on the same examples"
            assert Counter(a) + Counter(b) == Counter(whole), f"step {step}: ranks' union is not the global batch"
    assert "write_run_summary" in two[0]["writes"]
    assert not two[1]["writes"], f"rank 1 wrote outputs: {two[1]['writes']}"


def assert_same_training(one_dir: Path, two_dir: Path, weights: str) -> None:
    s1 = json.loads((one_dir / "run_summary.json").read_text())
    s2 = json.loads((two_dir / "run_summary.json").read_text())
    l1 = torch.tensor([loss for _, loss in s1["train_loss_history"]])
    l2 = torch.tensor([loss for _, loss in s2["train_loss_history"]])
    assert len(l1) == len(l2) == STEPS
    torch.testing.assert_close(l2, l1, rtol=LOSS_RTOL, atol=0)
    w1, w2 = load_file(one_dir / weights), load_file(two_dir / weights)
    assert sorted(w1) == sorted(w2) and w1
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst <= PARAM_ATOL, f"trained weights differ by up to {worst:.3g} from the 1-process run"
    assert any(w1[k].abs().max() > 0 for k in w1 if "lora_B" in k), "LoRA B is still zero: nothing was trained"


# ------------------------------------------------------------------------------------------------ SFT QLoRA


def sft_args(model_dir: Path, data_dir: Path, out: Path, per_device: int, use_cpu: bool = True) -> list[str]:
    return [
        *("--model_name_or_path", str(model_dir), "--output_dir", str(out), *data_args(data_dir)),
        *("--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", "1"),
        *("--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no"),
        *("--max_length", "64", "--learning_rate", "5e-3", "--warmup_steps", "0", "--seed", "0"),
        *("--load_in_4bit", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0", "--bf16", "false"),
        *("--per_device_eval_batch_size", "8", "--num_sample_predictions", "2"),
        *("--use_cpu", str(use_cpu).lower()),
    ]


@pytest.fixture(scope="module")
def sft_one(probe, tiny_causal_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft_1proc")
    run_one_process(probe, "sft_qlora.py", "SFTTrainer", out, sft_args(tiny_causal_dir, data_dir, out, 8))
    return out


def test_sft_qlora_ddp_two_processes_match_one_across_a_resume(probe, sft_one, tiny_causal_dir, data_dir, tmp_path):
    """Interrupted after step 2 (checkpoint saved), re-launched into the same output_dir: resumes and ends
    where the uninterrupted 1-process run ends."""
    out = tmp_path / "sft_ddp"
    args = [*sft_args(tiny_causal_dir, data_dir, out, 4), "--save_strategy", "steps", "--save_steps", "2"]
    launch_two_processes(probe, "cpu_2proc.yaml", "sft_qlora.py", "SFTTrainer", out, args,
                         env={"PROBE_STOP_AFTER_STEP": "2"}, probe_name="first")  # fmt: skip
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    launch_two_processes(probe, "cpu_2proc.yaml", "sft_qlora.py", "SFTTrainer", out, args, probe_name="resumed")
    first, resumed = read_probe(out, "first"), read_probe(out, "resumed")
    assert all(len(first[r]["runs"][0]["steps"]) == 2 == len(resumed[r]["runs"][0]["steps"]) for r in (0, 1))
    two = {r: concat_launches(first[r], resumed[r]) for r in (0, 1)}
    check_two_ranks(two, read_probe(sft_one), "MULTI_CPU")
    for p in two.values():  # NF4 layers on every rank, packed in uint8 (DDP keeps whole copies)
        assert p["runs"][0]["nf4_layers"] > 0 and p["runs"][0]["quant_storage"] == ["torch.uint8"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_mode"] == "ddp" and summary["quantization"] == "nf4"
    assert summary["resumed_from"] == str(out / "checkpoint-2") and summary["global_step"] == STEPS
    assert_same_training(sft_one, out, "adapter_model.safetensors")


def test_sft_qlora_deepspeed_zero3_two_processes_match_one(probe, sft_one, tiny_causal_dir, data_dir, tmp_path):
    out = tmp_path / "sft_zero3"
    # On the CPU: DeepSpeed needs an explicit gloo backend (else accelerate counts 1 process while DeepSpeed
    # counts 2), use_cpu false (use_cpu makes accelerate ignore DeepSpeed) and fp32 (the CPU's compute dtype),
    # so the 4-bit weights are stored as float32, the model dtype.
    args = [*sft_args(tiny_causal_dir, data_dir, out, 4, use_cpu=False), "--ddp_backend", "gloo", "--dtype", "float32"]
    launch_two_processes(
        probe, "deepspeed_zero3_qlora.yaml", "sft_qlora.py", "SFTTrainer", out, args,
        launch_args=("--mixed_precision", "no", "--main_process_port", "0"),
        env={"PROBE_NO_DS_SHM": "1", "DS_ACCELERATOR": "cpu"},
    )  # fmt: skip
    two, one = read_probe(out), read_probe(sft_one)
    check_two_ranks(two, one, "DEEPSPEED")
    for p in two.values():
        run = p["runs"][0]
        assert run["deepspeed"] and run["nf4_layers"] > 0
        assert run["quant_storage"] == ["torch.float32"]  # quant storage = model dtype under ZeRO-3
        assert run["zero3_partitioned_4bit"] == run["nf4_layers"]  # the packed 4-bit weights are sharded too
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_mode"] == "zero3" and summary["method"] == "qlora"
    assert_same_training(sft_one, out, "adapter_model.safetensors")


# ----------------------------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def roberta_no_dropout(tiny_roberta_dir, tmp_path_factory) -> Path:
    """The tiny RoBERTa with dropout off, so that 1- and 2-process runs compute the same function."""
    import shutil

    out = tmp_path_factory.mktemp("roberta_no_dropout") / "model"
    shutil.copytree(tiny_roberta_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def classifier_args(model_dir: Path, data_dir: Path, out: Path, per_device: int) -> list[str]:
    # class_weights none: a weighted mean is normalised per rank under DDP, so it would match only approximately.
    # random sampling: length grouping forms its mega-batches from the per-process batch size.
    return [
        *("--task", "sentiment", "--model_name_or_path", str(model_dir), "--output_dir", str(out)),
        *data_args(data_dir),
        *("--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", "1"),
        *("--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no"),
        *("--load_best_model_at_end", "false", "--early_stopping_patience", "0", "--class_weights", "none"),
        *("--train_sampling_strategy", "random", "--max_length", "64", "--learning_rate", "5e-3"),
        *("--warmup_steps", "0", "--seed", "0", "--use_peft", "true", "--lora_dropout", "0", "--use_cpu", "true"),
        *("--per_device_eval_batch_size", "16", "--num_sample_predictions", "2"),
    ]


def test_classifier_ddp_two_processes_match_one(probe, roberta_no_dropout, data_dir, tmp_path):
    one_dir, two_dir = tmp_path / "clf_1proc", tmp_path / "clf_ddp"
    run_one_process(probe, "classify_roberta.py", "WeightedLossTrainer", one_dir,
                    classifier_args(roberta_no_dropout, data_dir, one_dir, 8))  # fmt: skip
    launch_two_processes(probe, "cpu_2proc.yaml", "classify_roberta.py", "WeightedLossTrainer", two_dir,
                         classifier_args(roberta_no_dropout, data_dir, two_dir, 4))  # fmt: skip
    check_two_ranks(read_probe(two_dir), read_probe(one_dir), "MULTI_CPU")
    assert_same_training(one_dir, two_dir, "adapter/adapter_model.safetensors")  # the LoRA run's adapter
    m1 = json.loads((one_dir / "run_summary.json").read_text())["metrics"]
    m2 = json.loads((two_dir / "run_summary.json").read_text())["metrics"]
    assert m1["validation"]["accuracy"] == m2["validation"]["accuracy"]
