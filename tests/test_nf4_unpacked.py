"""4-bit weights are never packed for bitsandbytes' AVX512-BF16 CPU kernel, on any machine.

On CPUs with AVX512-BF16 bitsandbytes packs a ``Linear4bit`` weight at its first eval-mode forward without
grad, and training afterwards gets wrong gradients (or crashes). The guard test makes every layer claim
the instruction set, so it fails wherever the suite forgets the guard, whatever this machine's CPU. The
loss-identity tests run the default recipe's settings with and without the forwards that trigger packing
(sample predictions, evaluation during training): identical curves on any CPU. The Qwen2-style model has
biases on q/k/v, which crashed at the first training step after packing.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from trl import ModelConfig, SFTConfig

from reviewtune.evaluation.systems import load_system
from reviewtune.models.loading import load_causal_lm, load_trained_for_generation
from reviewtune.tasks import DEFAULT_KEYWORDS

ROOT = Path(__file__).resolve().parents[1]
PHRASES = {2: "최고예요", 1: "좋아요", 0: "보통이에요", -1: "아쉬워요", -2: "별로예요"}


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("sft_qlora_recipe_nf4", ROOT / "recipes" / "sft_qlora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        aspects = [{"keyword": k, "polarity": rng.choice(list(PHRASES))} for k in rng.sample(DEFAULT_KEYWORDS[:8], 2)]
        text = " 그리고 ".join(f"{a['keyword']}이 {PHRASES[a['polarity']]}" for a in aspects)
        rows.append({"id": f"{seed}-{i}", "text": text, "sentiment": None, "aspects": aspects, "score": None})
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nf4_data")
    for name, n, seed in (("train", 64, 1), ("validation", 8, 2), ("test", 4, 3)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records(n, seed)))
    return d


def _argv(model_dir, data_dir, out, *extra) -> list[str]:
    """The default config's method (NF4, LoRA on all linear layers + trained embeddings) on a tiny model, 12 steps,
    with activation checkpointing and LoRA dropout (random draws an evaluation must not shift) switched on."""
    return [
        *("--model_name_or_path", str(model_dir), "--output_dir", str(out)),
        *("--train_file", str(data_dir / "train.jsonl"), "--validation_file", str(data_dir / "validation.jsonl")),
        *("--test_file", str(data_dir / "test.jsonl"), "--max_length", "96"),
        *("--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--max_steps", "12"),
        *("--logging_steps", "1", "--save_steps", "100", "--warmup_steps", "0", "--seed", "0"),
        *("--lora_r", "8", "--lora_alpha", "16", "--eval_steps", "3"),
        *("--activation_checkpointing", "true", "--lora_dropout", "0.1"),
        *extra,
    ]


def _losses(summary: dict) -> list[float]:
    return [loss for _, loss in summary["train_loss_history"]]


@pytest.fixture(scope="module")
def reference_losses(recipe, tiny_causal_dir, data_dir, tmp_path_factory):
    """No sample predictions, no evaluation or learning-curve answers during training: nothing runs an eval-mode
    forward before the end."""
    out = tmp_path_factory.mktemp("nf4_reference")
    summary = recipe.main(_argv(tiny_causal_dir, data_dir, out, "--num_sample_predictions", "0",
                                "--eval_strategy", "no", "--curve_samples", "0"))  # fmt: skip
    assert len(_losses(summary)) == 12
    return _losses(summary)


@pytest.mark.parametrize(
    "extra",
    [
        ("--num_sample_predictions", "4", "--eval_strategy", "no"),
        ("--num_sample_predictions", "0", "--eval_strategy", "steps"),  # + the learning curves' greedy answers
    ],
    ids=["sample_predictions", "evaluation_during_training"],
)
def test_loss_curve_is_identical_with_and_without_eval_forwards(recipe, tiny_causal_dir, data_dir, tmp_path,
                                                               reference_losses, extra):  # fmt: skip
    summary = recipe.main(_argv(tiny_causal_dir, data_dir, tmp_path, *extra))
    assert _losses(summary) == reference_losses  # bit for bit on one machine


def _claim_avx512bf16(monkeypatch) -> None:
    """Make every ``Linear4bit`` built from now on believe the CPU has AVX512-BF16 (as many users' CPUs do)."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def _linear4bit(model) -> list:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_every_4bit_layer_the_suite_loads_stays_off_the_packed_path(tiny_causal_dir, tmp_path, monkeypatch):
    _claim_avx512bf16(monkeypatch)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    model_args = ModelConfig(load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True, dtype="float32")
    unguarded = bnb.nn.Linear4bit(64, 64, quant_type="nf4")
    assert unguarded.support_avx512bf16_for_cpu  # the claim works: without the guard a layer would pack

    trained = load_causal_lm(str(tiny_causal_dir), model_args, args)  # the recipe's training load
    layers = _linear4bit(trained)
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)

    from peft import LoraConfig, get_peft_model

    adapter_dir = tmp_path / "adapter"
    get_peft_model(trained, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(adapter_dir)
    reloaded = load_trained_for_generation(adapter_dir, str(tiny_causal_dir), model_args, args)  # ZeRO-3 reload
    layers = _linear4bit(reloaded)
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)


def test_nf4_scoring_without_dequantisation_stays_off_the_packed_path(gen_run_nf4, monkeypatch):
    _claim_avx512bf16(monkeypatch)
    system = load_system(gen_run_nf4, dequantize_nf4=False)
    assert system.weights == "nf4"
    layers = _linear4bit(system.model)
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)


@pytest.fixture(scope="module")
def gen_run_nf4(recipe, tiny_causal_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nf4_run")
    recipe.main(_argv(tiny_causal_dir, data_dir, out, "--max_steps", "2", "--num_sample_predictions", "0"))
    return out


def tiny_qwen2(tokenizer_dir: Path, out: Path) -> Path:
    """A random-weight Qwen2 (q/k/v projections with biases) sharing the tiny test tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_qwen2_style_biases_train_after_sample_predictions(recipe, tiny_causal_dir, data_dir, tmp_path):
    model_dir = tiny_qwen2(tiny_causal_dir, tmp_path / "tiny-qwen2")
    summary = recipe.main(_argv(model_dir, data_dir, tmp_path / "run", "--max_steps", "4",
                                "--num_sample_predictions", "2", "--eval_strategy", "steps"))  # fmt: skip
    assert summary["global_step"] == 4 and len(_losses(summary)) == 4
    assert all(loss == loss for loss in _losses(summary))  # finite, trained
