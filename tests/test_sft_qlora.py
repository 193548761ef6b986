"""recipes/sft_qlora.py on a tiny pre-trained Llama (CPU): QLoRA steps, masking, shortening, resume, merge, packing."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig, pipeline
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from reviewtune.evaluation.as_scored import load_as_scored, pipeline_inputs
from reviewtune.evaluation.generation import generate_answers
from reviewtune.evaluation.predict import answer_token_budget, predict
from reviewtune.evaluation.systems import load_system
from reviewtune.models.loading import adapters_follow_compute_dtype, load_causal_lm, load_trained_for_generation
from reviewtune.models.quantization import keep_4bit_weights_unpacked
from reviewtune.prompts import build_prompt, parse_answer, to_instruction
from reviewtune.tasks import DEFAULT_KEYWORDS, TaskSpec, get_task
from reviewtune.training.run_directory import SUMMARY_KEYS
from reviewtune.training.sample_predictions import answer_samples
from reviewtune.training.serving import files_to_push
from reviewtune.training.sft_examples import TOO_LONG, instruction_dataset, packing_keeps_examples_apart

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sft_qlora.py"
TASK = get_task("aspects")
PHRASES = {2: "최고예요", 1: "좋아요", 0: "보통이에요", -1: "아쉬워요", -2: "별로예요"}
# Logits of the merged fp32 model vs NF4 + adapter: same function, different summation order.
MERGE_LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("sft_qlora_recipe", RECIPE)
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


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft_data")
    _write(d / "train.jsonl", _records(96, seed=1))
    _write(d / "validation.jsonl", _records(16, seed=2))
    _write(d / "test.jsonl", _records(8, seed=3))
    return d


def _argv(model_dir, data_dir, output_dir, *extra) -> list[str]:
    return [
        *("--model_name_or_path", str(model_dir), "--output_dir", str(output_dir)),
        *("--train_file", str(data_dir / "train.jsonl"), "--validation_file", str(data_dir / "validation.jsonl")),
        *("--test_file", str(data_dir / "test.jsonl"), "--max_length", "96", "--max_train_samples", "96"),
        *("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3"),
        *("--max_steps", "24", "--logging_steps", "1", "--save_steps", "12", "--warmup_steps", "0", "--seed", "0"),
        *("--lr_scheduler_type", "constant"),
        *("--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05", "--num_sample_predictions", "4"),
        *extra,
    ]


@pytest.fixture(scope="module")
def qlora_run(recipe, tiny_causal_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora_run")
    # As the embedded default: LoRA plus fully trained (tied) input/output embeddings.
    argv = _argv(tiny_causal_dir, data_dir, out, "--merge", "true", "--lora_modules_to_save", "embed_tokens",
                 "--report_to", "tensorboard")  # fmt: skip
    summary = recipe.main(argv)
    return out, summary


def test_qlora_run_writes_the_contract_and_loss_falls(qlora_run):
    out, summary = qlora_run
    on_disk = json.loads((out / "run_summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(on_disk)
    assert on_disk["kind"] == "generative" and on_disk["recipe"] == "sft_qlora"
    assert on_disk["quantization"] == "nf4" and on_disk["method"] == "qlora"
    assert on_disk["train_examples"] == 96 and on_disk["eval_examples"] == 16
    assert 0 < on_disk["trainable_params"] < on_disk["total_params"]
    assert on_disk["train_tokens_per_s"] > 0 and on_disk["peak_memory_bytes"] > 0
    assert on_disk["final_eval_loss"] is not None
    losses = [loss for _, loss in on_disk["train_loss_history"]]
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:2]) / 2, losses  # falls clearly in 24 steps
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "task_spec.json",
                 "token_freqs.json", "sample_predictions.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "task_spec.json").read_text())["name"] == "aspects"
    assert json.loads((out / "token_freqs.json").read_text())
    preds = json.loads((out / "sample_predictions.json").read_text())
    assert preds["n"] == 4 and all(p["before"] is not None and p["after"] is not None for p in preds["predictions"])
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # the adapter loads onto its recorded base
    assert model.peft_config["default"].r == 8
    # The trained embedding copy is saved with the adapter and stays tied to the output layer after reloading.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert on_disk["trainable_params"] > model.get_input_embeddings().weight.numel()


def test_qlora_layers_are_nf4_and_only_lora_trains(tiny_causal_dir, data_dir, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=64)
    model_args = ModelConfig(load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True, lora_r=4,
                             lora_target_modules="all-linear")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    dataset, _ = instruction_dataset(_records(8, seed=5), TASK, tokenizer, 64)
    model = load_causal_lm(str(tiny_causal_dir), model_args, args)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=get_peft_config(model_args))  # fmt: skip
    adapters_follow_compute_dtype(trainer.model, args)
    lora_layers = [m for m in trainer.model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert lora_layers
    for layer in lora_layers:
        assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
        assert layer.base_layer.weight.quant_type == "nf4"
    n_linear = sum(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    assert len(lora_layers) == n_linear == 7 * model.config.num_hidden_layers  # all-linear: q k v o gate up down
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())  # fp32 compute on CPU


def test_loss_on_answer_only_ends_with_eos_and_shortening_cuts_the_review(tiny_causal_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    long_review = " 그리고 ".join(["디자인이 예쁘고 색감도 좋아요 그런데 배송이 느렸어요"] * 12)
    records = [
        *_records(2, seed=7),
        {
            "id": "long",
            "text": long_review,
            "aspects": [{"keyword": "디자인", "polarity": 1}, {"keyword": "배송", "polarity": -1}],
        },  # fmt: skip
        {"id": "no-room", "text": "길어요", "aspects": [{"keyword": k, "polarity": -2} for k in DEFAULT_KEYWORDS]},
    ]
    max_length = 72
    dataset, stats = instruction_dataset(records, TASK, tokenizer, max_length)
    assert dataset.column_names == ["prompt", "completion"]
    assert stats.total == 4 and stats.kept == 3 and stats.dropped == {TOO_LONG: 1} and stats.shortened == 1
    long_ex = dataset[2]
    assert long_ex["completion"] == " 디자인1, 배송-1"  # the answer is intact
    review_kept = long_ex["prompt"].removeprefix("###입력: ").split("\n###명령어:")[0]
    assert review_kept and long_review.startswith(review_kept) and len(review_kept) < len(long_review)
    assert len(tokenizer(long_ex["prompt"] + long_ex["completion"] + tokenizer.eos_token)["input_ids"]) <= max_length

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=max_length)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    for source, row in zip(dataset, trainer.train_dataset, strict=True):
        labels = row["labels"]
        n_prompt = len(tokenizer(source["prompt"])["input_ids"])
        assert all(label == -100 for label in labels[:n_prompt])  # prompt tokens carry no loss
        supervised = [t for t in labels if t != -100]
        assert labels[-1] == tokenizer.eos_token_id  # the last supervised token is EOS, not cut by truncation
        assert tokenizer.decode(supervised[:-1]) == source["completion"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding carries no loss either


def test_resume_after_interruption_continues_from_the_saved_step(recipe, tiny_causal_dir, data_dir, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    extra = ("--max_steps", "6", "--save_steps", "2", "--num_sample_predictions", "0", "--max_train_samples", "48")
    reference = recipe.main(_argv(tiny_causal_dir, data_dir, tmp_path / "straight", *extra))

    original = SFTTrainer._save_checkpoint

    def save_then_crash(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 2:
            raise KeyboardInterrupt("simulated interruption after checkpoint-2")

    out = tmp_path / "interrupted"
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        recipe.main(_argv(tiny_causal_dir, data_dir, out, *extra))
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", original)
    assert (out / "checkpoint-2").is_dir() and not (out / "run_summary.json").exists()

    resumed = recipe.main(_argv(tiny_causal_dir, data_dir, out, *extra))  # same command, same output_dir
    assert resumed["resumed_from"] == str(out / "checkpoint-2")
    assert resumed["global_step"] == 6
    steps = [s for s, _ in resumed["train_loss_history"]]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-2 come from the checkpoint's state, 3-6 from this run
    torch.testing.assert_close(
        [loss for _, loss in resumed["train_loss_history"]],
        [loss for _, loss in reference["train_loss_history"]],
        rtol=1e-4,
        atol=1e-4,
    )
    points = json.loads((out / "learning_curves.json").read_text())["points"]
    assert [(p["step"], p["loss"]) for p in points if "loss" in p] == resumed["train_loss_history"]  # 1-2 kept
    assert [p["step"] for p in points if "seconds" in p] == [3, 4, 5, 6]  # timed in this launch only

    # Launched once more, the complete run has no step left: its summary is kept, not rewritten.
    written = (out / "run_summary.json").read_bytes()
    assert recipe.main(_argv(tiny_causal_dir, data_dir, out, *extra)) == json.loads(written)
    assert (out / "run_summary.json").read_bytes() == written


def test_merge_matches_nf4_plus_adapter(qlora_run, tiny_causal_dir, data_dir):
    out, _ = qlora_run
    assert (out / "merged" / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    test_records = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]
    prompts = [to_instruction(r, TASK)["prompt"] for r in test_records]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    qlora = AutoPeftModelForCausalLM.from_pretrained(out, quantization_config=quant, dtype=torch.float32).eval()
    keep_4bit_weights_unpacked(qlora)  # as every 4-bit load of the suite: no packed CPU kernel
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert merged.dtype == torch.float32  # CPU: the "16-bit" merge is written in fp32
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, quantization_config=quant, dtype=torch.float32)
    base = base.dequantize().eval()

    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        lq, lm, lb = (m(**enc).logits for m in (qlora, merged, base))
    mask = enc["attention_mask"].bool()
    diff = (lq - lm).abs()[mask].max().item()
    assert diff <= MERGE_LOGIT_ATOL, diff
    assert (lq - lb).abs()[mask].max().item() > 100 * MERGE_LOGIT_ATOL  # the adapter really changes the model
    assert generate_answers(qlora, tokenizer, prompts, max_new_tokens=12, progress=False) == generate_answers(
        merged, tokenizer, prompts, max_new_tokens=12, progress=False
    )


def test_packed_losses_match_unpacked_on_cpu_attention(tiny_causal_dir, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    examples = [to_instruction(r, TASK) for r in _records(4, seed=9)]
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, attn_implementation=attn)
        ok, diff = packing_keeps_examples_apart(model, tokenizer, examples)
        assert ok and diff < 1e-4, (attn, diff)
    # Negative control: without the block-diagonal mask the check must fail.
    import transformers.masking_utils as masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    ok, diff = packing_keeps_examples_apart(model, tokenizer, examples)
    assert not ok and diff > 1e-3


def test_packing_lora_and_full_runs(recipe, tiny_causal_dir, data_dir, tmp_path):
    extra = ("--max_steps", "2", "--num_sample_predictions", "0", "--max_train_samples", "32")
    packed = recipe.main(_argv(tiny_causal_dir, data_dir, tmp_path / "packed", *extra, "--packing", "true"))
    assert packed["config"]["packing"] is True and packed["train_tokens_per_s"] > 0
    lora = recipe.main(_argv(tiny_causal_dir, data_dir, tmp_path / "lora", *extra, "--load_in_4bit", "false"))
    assert (lora["method"], lora["quantization"]) == ("lora", "none")
    full = recipe.main(
        _argv(tiny_causal_dir, data_dir, tmp_path / "full", *extra, "--load_in_4bit", "false", "--use_peft", "false")
    )
    assert (full["method"], full["quantization"]) == ("full", "none")
    assert full["trainable_params"] == full["total_params"] > lora["trainable_params"]
    assert (tmp_path / "full" / "model.safetensors").is_file()
    # A full fine-tune is a model directory itself: the harness's decoding in its generation config, its own card
    saved = GenerationConfig.from_pretrained(tmp_path / "full")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "full")
    assert saved.do_sample is False and saved.max_new_tokens == answer_token_budget(TASK, tokenizer)
    card = ModelCard.load(tmp_path / "full" / "README.md")
    assert card.data.library_name == "transformers" and "full" in card.data.tags
    assert f'pipeline("text-generation", model="{tmp_path / "full"}")` | yes' in card.text


def test_every_config_parses_and_unknown_keys_fail(recipe, tmp_path):
    configs = sorted((ROOT / "recipes" / "configs").glob("sft_qlora*.yaml"))
    assert {c.name for c in configs} >= {
        "sft_qlora_default.yaml",
        "sft_qlora_nsmc_small_instruct.yaml",
        "sft_qlora_aspects_small_instruct.yaml",
        "sft_qlora_8b_zero3.yaml",
    }
    for config in configs:
        text = config.read_text(encoding="utf-8")
        assert "accelerate launch" in text.split("\n\n")[0] or "accelerate launch" in text[:1500], config.name
        data_args, script_args, training_args, model_args = recipe.parse_args(["--config", str(config)])
        assert model_args.load_in_4bit and model_args.use_peft, config.name
    data_args, _, training_args, model_args = recipe.parse_args([])  # no arguments: the embedded default
    assert model_args.model_name_or_path == "embedded" and data_args.train_file is None
    assert training_args.max_length <= 256 and model_args.lora_target_modules == "all-linear"
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: aspects\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*learning_rat"):
        recipe.parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="no_such_option"):
        recipe.parse_args(["--no_such_option", "0.1"])
    with pytest.raises(ValueError, match="learning_rat"):  # no prefix matching: --learning_rat is no --learning_rate
        recipe.parse_args(["--learning_rat", "0.1"])


def test_reloaded_run_answers_like_the_trained_model(qlora_run, tiny_causal_dir, data_dir):
    """The path used under ZeRO-3/FSDP (rank 0 reloads the run on one device) gives the in-process answers."""
    out, _ = qlora_run
    preds = json.loads((out / "sample_predictions.json").read_text())["predictions"]
    test_records = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(out)
    samples = test_records[: len(preds)]
    args = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, report_to="none")
    model_args = ModelConfig(load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True)
    model = load_trained_for_generation(out, str(tiny_causal_dir), model_args, args)
    # Answered as the recipe answers its samples: the harness's generate scoring at the trained max_length (96).
    after = [a["answer"] for a in answer_samples(model, tokenizer, samples, TASK, max_length=96, batch_size=16)]
    with model.disable_adapter():
        before = [a["answer"] for a in answer_samples(model, tokenizer, samples, TASK, max_length=96, batch_size=16)]
    assert after == [p["after"] for p in preds]
    assert before == [p["before"] for p in preds]
    assert after != before


def _test_records(data_dir) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]


def test_merged_model_answers_like_the_harness_in_a_plain_pipeline(qlora_run, data_dir):
    """What the issue saw: the merged model kept the base's generation config. Now pipeline() with no generation
    arguments gives the harness's greedy answers, and so does the NF4 load the run's card names."""
    out, _ = qlora_run
    records = _test_records(data_dir)
    task = TaskSpec.load(out)
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    saved = GenerationConfig.from_pretrained(out / "merged")
    assert saved.do_sample is False and saved.num_beams == 1
    assert saved.max_new_tokens == answer_token_budget(task, tokenizer)
    assert saved.eos_token_id == [tokenizer.eos_token_id]

    reported = [p["raw"] for p in predict(load_system(out), records, scoring="generate", progress=False)]
    harness = [p["raw"] for p in predict(load_system(out, merged=True), records, scoring="generate", progress=False)]
    assert harness == reported  # merged/ scores as the NF4 adapter run the report scored
    prompts = [build_prompt(r["text"], task) for r in records]
    generator = pipeline("text-generation", model=str(out / "merged"), device="cpu")
    outputs = generator(prompts)  # no generation arguments at all
    assert [o[0]["generated_text"].removeprefix(p) for o, p in zip(outputs, prompts, strict=True)] == harness
    assert len(set(harness)) > 1 and sum(parse_answer(a, task).valid for a in harness) >= 2  # real answers

    # The card's NF4 load + the run's generation config: the same answers; without NF4: a different function
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    nf4 = AutoPeftModelForCausalLM.from_pretrained(out, quantization_config=quant, dtype=torch.float32).eval()
    keep_4bit_weights_unpacked(nf4)
    nf4.generation_config = GenerationConfig.from_pretrained(out)
    nf4_outputs = pipeline("text-generation", model=nf4, tokenizer=AutoTokenizer.from_pretrained(out))(prompts)
    assert [o[0]["generated_text"].removeprefix(p) for o, p in zip(nf4_outputs, prompts, strict=True)] == harness
    unquantised = AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    enc = tokenizer(prompts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (nf4(**enc).logits - unquantised(**enc).logits).abs()[enc["attention_mask"].bool()].max().item()
    assert diff > 100 * MERGE_LOGIT_ATOL, diff


def test_load_as_scored_plain_run_in_a_pipeline(qlora_run, data_dir):
    out, _ = qlora_run
    records = _test_records(data_dir)
    system = load_as_scored(out)
    generator = pipeline("text-generation", model=system.model, tokenizer=system.tokenizer)
    outputs = generator(pipeline_inputs(system, [r["text"] for r in records]), return_full_text=False)
    assert [o[0]["generated_text"] for o in outputs] == [
        p["raw"] for p in predict(system, records, scoring="generate", progress=False)
    ]


def test_run_card_and_the_files_that_would_be_pushed(qlora_run, tmp_path):
    out, summary = qlora_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"reviewtune", "trl", "sft", "qlora"} <= set(card.data.tags) and card.data.language == ["ko"]
    assert card.data.base_model is None  # a local base is named in the text, not as a hub id
    for section in ("## Task", "## Data", "## Training", "## Results", "## Reproduce", "## How to load"):
        assert section in card.text, section
    text = card.text
    assert "QLoRA fine-tune (4-bit NF4 base, LoRA r=8, alpha=16)" in text and "train 96, validation 16" in text
    assert f"final validation loss {summary['final_eval_loss']:.4g}" in text.lower()
    assert "accelerate launch recipes/sft_qlora.py --model_name_or_path" in text and "--merge true" in text
    assert f'pipeline("text-generation", model="{out}/merged")` | yes' in text
    unquantised = f'AutoPeftModelForCausalLM.from_pretrained("{out}")`, `pipeline("text-generation", model="{out}")`'
    assert f"{unquantised} | no" in text
    assert "GenerationConfig.from_pretrained" in text and "max_new_tokens=" in text
    assert ModelCard.load(out / "merged" / "README.md").data.library_name == "transformers"
    for readme in out.glob("**/README.md"):
        if "checkpoint-" not in str(readme):  # PEFT's and trl's cards are replaced
            written = readme.read_text()
            assert "Model Card for Model ID" not in written and "fine-tuned version of" not in written, readme

    files = files_to_push(out)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json",
            "task_spec.json", "run_summary.json", "sample_predictions.json", "merged/README.md", "merged/config.json",
            "merged/model.safetensors", "merged/generation_config.json", "merged/tokenizer.json",
            "learning_curves.png", "learning_curves.json"} <= set(files)  # fmt: skip
    assert "![learning curves](learning_curves.png)" in text  # the card shows the pushed plot
    assert not [f for f in files if "checkpoint-" in f or f.endswith(".bin") or "/." in f or f.startswith(".")]
    assert any(f.startswith("runs/") and "tfevents" in f for f in files)  # the training curves go along
    # What a hub user downloads is complete: the copy loads and answers as the run does
    hub = tmp_path / "hub"
    for f in files:
        (hub / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / f, hub / f)
    records = [{"id": "a", "text": "배송이 빨라요 그리고 색상이 예뻐요"}]
    assert predict(load_system(hub), records, progress=False) == predict(load_system(out), records, progress=False)
    assert predict(load_system(hub, merged=True), records, progress=False)[0]["raw"] == pipeline(
        "text-generation", model=str(hub / "merged"))(build_prompt(records[0]["text"], TASK), return_full_text=False
    )[0]["generated_text"]  # fmt: skip


def test_tensorboard_logs_are_written_offline(qlora_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary = qlora_run
    (log_dir,) = {p.parent for p in (out / "runs").glob("*/events.out.tfevents.*")}
    events = EventAccumulator(str(log_dir))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [step for step, _ in summary["train_loss_history"]]
    np.testing.assert_allclose([e.value for e in losses], [loss for _, loss in summary["train_loss_history"]],
                               rtol=1e-5)  # fmt: skip


def test_learning_curves_written_with_the_task_metric(qlora_run, data_dir):
    from reviewtune.evaluation.metrics import task_metrics
    from reviewtune.training.learning_curves import read_curves

    out, summary = qlora_run
    curves = read_curves(out)
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert curves["steps"] == summary["global_step"] == len(curves["step_seconds"])
    points = curves["points"]
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    assert all(p["seconds"] >= 0 for p in points) and points[-1]["seconds"] <= curves["train_seconds"] + 1e-3
    losses = [p["loss"] for p in points if "loss" in p]
    assert losses == [loss for _, loss in summary["train_loss_history"]]
    last = points[-1]  # the last step always carries the task metric, scored as the harness scores answers
    assert last["step"] == summary["global_step"]
    assert {"eval_micro_f1", "eval_exact_match", "eval_invalid_rate"} <= set(last)
    # The saved run scored by the harness on the same validation reviews gives the same numbers
    records = [json.loads(line) for line in (data_dir / "validation.jsonl").read_text().splitlines()]
    harness = task_metrics(TASK, records, predict(load_system(out), records, scoring="generate"), n_resamples=0)
    for name in ("micro_f1", "exact_match", "invalid_rate", "polarity_accuracy"):
        assert last[f"eval_{name}"] == pytest.approx(harness[name]), name


def test_card_repeats_the_runs_trust_remote_code_setting(qlora_run):
    from reviewtune.training.model_card import _loading_section

    out, summary = qlora_run
    assert "trust_remote_code" not in _loading_section(out, summary, TASK, "run")  # off unless the run asked
    recorded = True  # the value the run recorded, repeated by the card (never a literal the card hard-codes)
    asked = {**summary, "config": {**summary["config"], "trust_remote_code": recorded}}
    expected = f"pass `trust_remote_code={recorded}` to the plain transformers loads"
    assert expected in _loading_section(out, asked, TASK, "run")
