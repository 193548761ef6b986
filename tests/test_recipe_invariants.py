"""What both recipes must keep whatever their settings: the same validation split, the same training under
gradient accumulation, every task end to end, and the best checkpoint restored when asked.

Gradient-accumulation tolerance: per-device batch 8 x 1 vs 4 x 2 vs 2 x 4 computes the same loss and gradients,
summed in another order; in fp32 on a CPU the logged losses of the first steps then agree to about 1e-7 relative
(measured on this CPU: at most 1.1e-7 over 4 steps, both recipes). ``GA_RTOL`` leaves room for other CPUs' kernels.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reviewtune.evaluation.predict import predict
from reviewtune.evaluation.systems import load_system
from reviewtune.records import make_record, write_records

ROOT = Path(__file__).resolve().parents[1]
GA_RTOL = 1e-5
GOOD, BAD = ["좋아요", "최고예요", "만족해요", "예뻐요"], ["별로예요", "실망이에요", "아쉬워요", "불편해요"]
KEYWORDS = ["가격", "디자인", "배송", "사이즈"]


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_invariants", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        polarity = rng.choice([-2, -1, 1, 2])
        degree = "정말 " if abs(polarity) == 2 else ""
        text = f"{rng.choice(KEYWORDS)} {degree}{rng.choice(GOOD if polarity > 0 else BAD)}"
        labels = {
            "sentiment": {"sentiment": int(polarity > 0)},
            "sentiment5": {"sentiment": {-2: 0, -1: 1, 1: 3, 2: 4}[polarity]},
            "regression": {"score": float(polarity + 3)},
        }[task]
        rows.append(make_record(f"{seed}-{i}", text, **labels))
    return rows


def _files(tmp_path: Path, task: str, splits=("train", "validation", "test")) -> dict[str, str]:
    sizes = {"train": 64, "validation": 16, "test": 8}
    return {s: str(write_records(tmp_path / "data" / task / f"{s}.jsonl", _records(task, sizes[s], seed=i)))
            for i, s in enumerate(splits)}  # fmt: skip


def _data_args(files: dict[str, str], task: str) -> list[str]:
    return ["--task", task, *(x for split, path in files.items() for x in (f"--{split}_file", path))]


def _sft(tmp_path, model_dir, files, task, out_name, *extra) -> dict:
    argv = [
        *_data_args(files, task), "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / out_name),
        "--max_length", "128", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--warmup_steps", "0",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
        "--seed", "0", "--lora_r", "8", "--lora_alpha", "16", "--num_sample_predictions", "0", *extra,
    ]  # fmt: skip
    return _recipe("sft_qlora").main(argv)


def _classify(tmp_path, model_dir, files, task, out_name, *extra) -> dict:
    argv = [
        *_data_args(files, task), "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / out_name),
        "--max_length", "32", "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--warmup_steps", "0",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--seed", "0", "--use_peft", "false",
        "--num_sample_predictions", "0", "--disable_tqdm", "true", "--train_sampling_strategy", "random",
        "--early_stopping_patience", "0", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", *extra,
    ]  # fmt: skip
    return _recipe("classify_roberta").main(argv)


@pytest.fixture(scope="module")
def roberta_without_dropout(tiny_roberta_dir, tmp_path_factory) -> Path:
    """The tiny RoBERTa with dropout off, so that micro-batch shapes cannot change the dropout masks."""
    out = tmp_path_factory.mktemp("roberta_no_dropout")
    shutil.copytree(tiny_roberta_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _losses(summary: dict) -> list[float]:
    return [loss for _, loss in summary["train_loss_history"]]


def test_both_recipes_hold_out_the_same_validation_records(tmp_path, tiny_causal_dir, tiny_roberta_dir):
    files = _files(tmp_path, "sentiment", splits=("train",))
    steps = ("--max_steps", "1", "--validation_fraction", "0.2", "--seed", "7")
    sft = _sft(tmp_path, tiny_causal_dir, files, "sentiment", "sft", *steps)
    clf = _classify(tmp_path, tiny_roberta_dir, files, "sentiment", "clf", *steps)
    assert sft["split"] == clf["split"]
    assert sft["split"]["train"] == 51 and sft["split"]["validation"] == 13


@pytest.mark.parametrize("batch, accumulation", [(4, 2), (2, 4)])
def test_gradient_accumulation_keeps_the_sft_loss_curve(tmp_path, tiny_causal_dir, batch, accumulation):
    files = _files(tmp_path, "sentiment")
    common = ("--max_steps", "4", "--lora_dropout", "0")
    whole = _sft(tmp_path, tiny_causal_dir, files, "sentiment", "ga1", *common)
    split = _sft(tmp_path, tiny_causal_dir, files, "sentiment", "ga", *common, "--per_device_train_batch_size",
                 str(batch), "--gradient_accumulation_steps", str(accumulation))  # fmt: skip
    assert _losses(split) == pytest.approx(_losses(whole), rel=GA_RTOL)


@pytest.mark.parametrize("batch, accumulation", [(4, 2), (2, 4)])
def test_gradient_accumulation_keeps_the_classifier_loss_curve(tmp_path, roberta_without_dropout, batch, accumulation):
    files = _files(tmp_path, "sentiment")
    common = ("--max_steps", "4", "--class_weights", "balanced")  # class weights must not break the invariance
    whole = _classify(tmp_path, roberta_without_dropout, files, "sentiment", "ga1", *common)
    split = _classify(tmp_path, roberta_without_dropout, files, "sentiment", "ga", *common,
                      "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps",
                      str(accumulation))  # fmt: skip
    assert _losses(split) == pytest.approx(_losses(whole), rel=GA_RTOL)


@pytest.mark.parametrize("task", ["sentiment", "sentiment5", "regression"])
def test_sft_recipe_end_to_end_on_each_task(tmp_path, tiny_causal_dir, task):
    files = _files(tmp_path, task)
    summary = _sft(tmp_path, tiny_causal_dir, files, task, "run", "--max_steps", "3", "--num_sample_predictions", "2")
    run = tmp_path / "run"
    assert summary["task"] == task and summary["global_step"] == 3
    samples = json.loads((run / "sample_predictions.json").read_text())
    assert samples["n"] == 2 and all(p["after"] is not None for p in samples["predictions"])
    system = load_system(run)
    records = [json.loads(line) for line in Path(files["test"]).read_text().splitlines()]
    for scoring in system.scoring_modes:
        predictions = predict(system, records, scoring=scoring, progress=False)
        assert [p["id"] for p in predictions] == [r["id"] for r in records]
        for p in predictions:
            if scoring == "loglik":
                assert not p["invalid"] and len(p["probs"]) == len(system.task.label_names)
            elif scoring == "constrained":  # valid by construction
                assert not p["invalid"]
            if not p["invalid"]:
                assert (p["score"] is not None) if task == "regression" else p["label"] in range(5)
    modes = ("generate", "constrained") if task == "regression" else ("generate", "loglik", "constrained")
    assert system.scoring_modes == modes


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path, tiny_roberta_dir):
    files = _files(tmp_path, "sentiment")
    # Train on flipped labels, validate on true ones: every step makes validation worse, so the best evaluation is an
    # early one, never the last.
    flipped = [{**r, "sentiment": 1 - r["sentiment"]} for r in _records("sentiment", 64, seed=0)]
    files["train"] = str(write_records(tmp_path / "flipped.jsonl", flipped))
    summary = _classify(tmp_path, tiny_roberta_dir, files, "sentiment", "run", "--max_steps", "24",
                        "--eval_strategy", "steps", "--eval_steps", "4",
                        "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "10",
                        "--load_best_model_at_end", "true", "--early_stopping_metric", "loss")  # fmt: skip
    run = tmp_path / "run"
    state = json.loads((run / "checkpoint-24" / "trainer_state.json").read_text())
    losses = {h["step"]: h["eval_loss"] for h in state["log_history"] if "eval_loss" in h}
    best_step = min(losses, key=losses.get)
    assert summary["best_checkpoint"] == str(run / f"checkpoint-{best_step}")
    assert best_step != 24, losses  # otherwise the test would not tell restoring from keeping the last weights
    final = load_file(run / "model.safetensors")
    best = load_file(run / f"checkpoint-{best_step}" / "model.safetensors")
    last = load_file(run / "checkpoint-24" / "model.safetensors")
    assert all((final[k] == best[k]).all() for k in final)
    assert any((final[k] != last[k]).any() for k in final)


@pytest.mark.parametrize("recipe", ["sft", "classify"])
def test_a_finished_run_relaunched_changes_nothing(tmp_path, tiny_causal_dir, tiny_roberta_dir, recipe, capsys):
    """5 steps of 8 per epoch: the last checkpoint is mid-epoch, where transformers would train one step more."""
    files = _files(tmp_path, "sentiment")
    run, model = (_sft, tiny_causal_dir) if recipe == "sft" else (_classify, tiny_roberta_dir)
    args = ("--max_steps", "5", "--save_strategy", "steps", "--save_steps", "2")
    run(tmp_path, model, files, "sentiment", "run", *args)
    out = tmp_path / "run"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "checkpoint-5").is_dir()
    capsys.readouterr()
    again = run(tmp_path, model, files, "sentiment", "run", *args)
    assert "is already complete" in capsys.readouterr().out
    assert again == json.loads((out / "run_summary.json").read_text())  # the kept summary
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no step, no checkpoint, every file byte for byte as it was


def test_a_resumed_run_reports_its_whole_training(tmp_path, tiny_causal_dir, monkeypatch, capsys):
    from trl import SFTTrainer

    files = _files(tmp_path, "sentiment")
    args = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2")
    straight = _sft(tmp_path, tiny_causal_dir, files, "sentiment", "straight", *args)
    original = SFTTrainer._save_checkpoint

    def save_then_crash(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated kill after checkpoint-4")

    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _sft(tmp_path, tiny_causal_dir, files, "sentiment", "killed", *args)
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", original)
    state = json.loads((tmp_path / "killed" / "checkpoint-4" / "trainer_state.json").read_text())
    clock_at_kill = state["stateful_callbacks"]["TrainingClock"]["attributes"]["seconds"]
    capsys.readouterr()
    resumed = _sft(tmp_path, tiny_causal_dir, files, "sentiment", "killed", *args)
    assert f"Resuming {tmp_path / 'killed'} from {tmp_path / 'killed' / 'checkpoint-4'} (step 4 of 6)" in (
        capsys.readouterr().out
    )
    assert resumed["train_tokens"] == straight["train_tokens"]  # steps 1-4 counted too, not only 5-6
    assert resumed["train_runtime_s"] > clock_at_kill > 0

