"""Loading run directories and predicting: a generative run (NF4 base + LoRA adapter, both scoring modes),
a LoRA classifier and the two-model aspect classifier, on the same tiny test set.

The run directories are built here the way the recipes write them (adapter / model + tokenizer +
``task_spec.json`` + ``run_summary.json``), without training, so that scoring is tested on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reviewtune.atomic import atomic_write_json
from reviewtune.evaluation import predict as predict_module
from reviewtune.evaluation.metrics import task_metrics
from reviewtune.evaluation.predict import predict
from reviewtune.evaluation.prediction_schema import PREDICTION_KEYS
from reviewtune.evaluation.systems import load_system
from reviewtune.prompts import build_prompt, fit_prompt, keyword_input, parse_answer
from reviewtune.records import make_record, write_records
from reviewtune.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = ["가격", "배송", "디자인"]
TEXTS = [
    "가격이 좋아요 그리고 배송은 별로예요",
    "디자인이 예뻐요",
    "배송이 너무 느려요 ㅠㅠ",
    "색상은 괜찮네요 근데 소재가 아쉬워요",
    "품질이 최고예요!!",
    "사이즈는 딱 맞아요",
]


def test_records(task_name: str = "sentiment") -> list[dict]:
    if task_name == "aspects":
        gold = [[{"keyword": "가격", "polarity": 1}], [], [{"keyword": "배송", "polarity": -1}]] * 2
        return [make_record(f"r{i}", t, aspects=gold[i]) for i, t in enumerate(TEXTS)]
    return [make_record(f"r{i}", t, sentiment=i % 2) for i, t in enumerate(TEXTS)]


test_records.__test__ = False  # a helper, not a test


def _summary(kind: str, task: str, base: str, **extra) -> dict:
    return {
        "schema_version": 1,
        "recipe": "sft_qlora" if kind == "generative" else "classify_roberta",
        "kind": kind,
        "task": task,
        "base_model": base,
        "quantization": "none",
        "method": "lora",
        "trainable_params": 1000,
        "total_params": 100000,
        "train_runtime_s": 1.5,
        "config": {"max_length": 128},
        **extra,
    }


def make_generative_run(out: Path, base_dir: Path, task_name: str = "sentiment") -> Path:
    """A QLoRA-style run: LoRA adapter (non-zero, so it changes outputs) on the NF4 base + tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    task = get_task(task_name, keywords=KEYWORDS if task_name == "aspects" else None)
    task.save(out)
    atomic_write_json(out / "run_summary.json", _summary("generative", task.name, str(base_dir), quantization="nf4"))
    return out


def make_classifier_run(out: Path, base_dir: Path, task_name: str = "sentiment") -> Path:
    """A classifier run: LoRA ``SEQ_CLS`` adapter + config.json with id2label, or the aspect pair of full models."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    task = get_task(task_name, keywords=KEYWORDS if task_name == "aspects" else None)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    task.save(out)
    if task_name != "aspects":
        labels = task.label_names
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
        config = LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(out)
        peft_model.get_base_model().config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        atomic_write_json(out / "run_summary.json", _summary("classifier", task.name, str(base_dir)))
        return out
    for name, labels, problem in (
        ("keywords", task.keywords, "multi_label_classification"),
        ("keyword_sentiment", task.polarity_names, "single_label_classification"),
    ):
        sub = out / name
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), problem_type=problem
        )
        model.save_pretrained(sub)
        tokenizer.save_pretrained(sub)
        task.save(sub)
        atomic_write_json(sub / "run_summary.json", _summary("classifier", task.name, str(base_dir), method="full"))
    # 가격 always detected, 배송 never, 디자인 by the model: tests thresholds and the polarity model.
    atomic_write_json(out / "keywords" / "thresholds.json", {"thresholds": {"가격": 0.0, "배송": 1.01, "디자인": 0.5}})
    atomic_write_json(
        out / "run_summary.json",
        _summary(
            "classifier",
            task.name,
            str(base_dir),
            components={"keywords": "keywords", "keyword_sentiment": "keyword_sentiment"},
        ),
    )
    return out


@pytest.fixture(scope="module")
def gen_run(tiny_causal_dir, tmp_path_factory):
    return make_generative_run(tmp_path_factory.mktemp("gen_run"), tiny_causal_dir)


@pytest.fixture(scope="module")
def clf_run(tiny_roberta_dir, tmp_path_factory):
    return make_classifier_run(tmp_path_factory.mktemp("clf_run"), tiny_roberta_dir)


def _check_format(preds, records):
    assert [p["id"] for p in preds] == [r["id"] for r in records]
    for p in preds:
        assert set(p) == {*PREDICTION_KEYS, "raw"}
        assert isinstance(p["invalid"], bool)
        assert (p["invalid_reason"] is not None) == p["invalid"]


def test_generative_run_both_scoring_modes(gen_run):
    import bitsandbytes as bnb

    system = load_system(gen_run)
    assert system.kind == "generative" and system.scoring_modes == ("generate", "loglik", "constrained")
    assert any("lora_A" in n for n, _ in system.model.named_parameters())
    # Loaded as trained: NF4 4-bit base layers under the LoRA adapter; on the CPU de-quantised once by
    # default, which must give the very same function as bitsandbytes' 4-bit layers.
    assert system.weights == "nf4-dequantized" and not any(
        isinstance(m, bnb.nn.Linear4bit) for m in system.model.modules()
    )
    four_bit = load_system(gen_run, dequantize_nf4=False)
    layers = [m for m in four_bit.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit.weights == "nf4" and layers and all(m.weight.quant_type == "nf4" for m in layers)
    ids = four_bit.tokenizer(build_prompt(TEXTS[0], four_bit.task), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(four_bit.model(ids).logits, system.model(ids).logits, atol=1e-4)
    records = test_records()

    generated = predict(system, records, scoring="generate", batch_size=4, progress=False)
    _check_format(generated, records)
    # An independent reading of the raw answers: exactly a label name (after the space the prompt ends with).
    expected = [system.task.label_names.index(p["raw"].strip()) if p["raw"].strip() in system.task.label_names
                else None for p in generated]  # fmt: skip
    assert [p["label"] for p in generated] == expected
    assert [p["invalid"] for p in generated] == [e is None for e in expected]
    metrics = task_metrics(system.task, records, generated, n_resamples=0)
    assert metrics["invalid_rate"] == sum(e is None for e in expected) / len(records)

    ranked = predict(system, records, scoring="loglik", batch_size=4, progress=False)
    _check_format(ranked, records)
    for p in ranked:
        assert not p["invalid"] and len(p["probs"]) == 2
        assert sum(p["probs"]) == pytest.approx(1.0, abs=1e-9)
        assert p["label"] == int(np.argmax(p["probs"]))
    # Same prompts as training builds them; batch size does not change the scores.
    one = predict(system, records, scoring="loglik", batch_size=1, progress=False)
    np.testing.assert_allclose([p["probs"] for p in one], [p["probs"] for p in ranked], atol=1e-5)


def test_sliding_window_base_scores_the_same_in_any_batch(tiny_corpus_file, tiny_model_config, tmp_path):
    """The embedded causal base's kind (Qwen2, bottom layer on a sliding window): left-padded batches give the same
    answers and scores as one review at a time, in every scoring mode (a padding-blind window would not)."""
    from reviewtune.models.pretraining import pretrain
    from reviewtune.training.arguments import PretrainArguments

    args = PretrainArguments(kind="causal", corpus_file=str(tiny_corpus_file), **{**tiny_model_config,
                             "sliding_window_layers": 1, "sliding_window": 3})  # fmt: skip
    pretrain(args, tmp_path / "base")
    system = load_system(make_generative_run(tmp_path / "run", tmp_path / "base"))
    assert type(system.model.get_base_model()).__name__ == "Qwen2ForCausalLM"
    records = test_records()
    for scoring in ("generate", "loglik", "constrained"):
        four, one = (predict(system, records, scoring=scoring, batch_size=b, progress=False) for b in (4, 1))
        _check_format(four, records)
        assert [p["label"] for p in four] == [p["label"] for p in one], scoring
        if scoring == "loglik":
            np.testing.assert_allclose([p["probs"] for p in four], [p["probs"] for p in one], atol=1e-5)


def test_malformed_generations_are_invalid_not_errors(gen_run, monkeypatch):
    system = load_system(gen_run)
    answers = [" 긍정", "부정", "좋아요", "", "긍정 긍정", "매우긍정"]
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen["prompts"] = prompts
        return answers

    monkeypatch.setattr(predict_module, "generate_answers", fake_generate)
    records = test_records()
    preds = predict(system, records, scoring="generate", progress=False)
    assert seen["prompts"] == [build_prompt(r["text"], system.task) for r in records]
    assert [p["label"] for p in preds] == [1, 0, None, None, None, None]
    assert [p["invalid_reason"] for p in preds] == [
        None,
        None,
        "unknown_label",
        "empty",
        "unknown_label",
        "unknown_label",
    ]
    assert [p["raw"] for p in preds] == answers
    metrics = task_metrics(system.task, records, preds, n_resamples=0)
    assert metrics["invalid_rate"] == pytest.approx(4 / 6)
    hits = sum(p["label"] == r["sentiment"] for p, r in zip(preds, records, strict=True))
    assert metrics["accuracy"] == pytest.approx(hits / 6)


def test_aspect_generative_run_has_no_loglik(tiny_causal_dir, tmp_path):
    system = load_system(make_generative_run(tmp_path / "run", tiny_causal_dir, "aspects"))
    assert system.scoring_modes == ("generate", "constrained")
    with pytest.raises(ValueError, match="loglik"):
        predict(system, test_records("aspects"), scoring="loglik", progress=False)
    preds = predict(system, test_records("aspects")[:2], progress=False)
    assert all(p["invalid"] or isinstance(p["aspects"], list) for p in preds)


@pytest.mark.parametrize("task_name", ["sentiment", "sentiment5", "aspects", "regression"])
def test_constrained_scoring_is_valid_on_every_task(tiny_causal_dir, tmp_path, task_name):
    """An NF4 + LoRA run scored ``constrained``: every answer parses, on the CPU's de-quantised weights and
    on bitsandbytes' 4-bit layers alike (loaded by the suite's loader, never packed)."""
    import bitsandbytes as bnb

    run = make_generative_run(tmp_path / "run", tiny_causal_dir, task_name)
    records = test_records("aspects" if task_name == "aspects" else "sentiment")
    system = load_system(run)
    assert "constrained" in system.scoring_modes
    preds = predict(system, records, scoring="constrained", batch_size=4, progress=False)
    _check_format(preds, records)
    assert not any(p["invalid"] for p in preds)
    for p in preds:
        parsed = parse_answer(p["raw"], system.task)
        assert parsed.valid and (p["label"], p["aspects"], p["score"]) == (parsed.label, parsed.aspects, parsed.score)
    if task_name in ("sentiment", "aspects"):
        four_bit = load_system(run, dequantize_nf4=False)
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in four_bit.model.modules())
        assert predict(four_bit, records, scoring="constrained", batch_size=4, progress=False) == preds
    if task_name == "sentiment":  # loglik on 4-bit layers and LoRA: the same scores as de-quantised
        four_bit_probs = [p["probs"] for p in predict(four_bit, records, scoring="loglik", progress=False)]
        probs = [p["probs"] for p in predict(system, records, scoring="loglik", progress=False)]
        np.testing.assert_allclose(four_bit_probs, probs, atol=1e-4)


def test_long_reviews_are_cut_to_the_trained_length(gen_run):
    system = load_system(gen_run)
    system.max_length = len(system.tokenizer(build_prompt("", system.task))["input_ids"]) + 20  # template + 20
    long = [make_record("long", "배송이 너무 느려요 " * 200, sentiment=0)]
    (p,) = predict(system, long, scoring="loglik", progress=False)
    assert sum(p["probs"]) == pytest.approx(1.0)
    prompt, _ = fit_prompt(long[0]["text"], system.task, system.tokenizer, system.max_length)
    n = len(system.tokenizer(prompt)["input_ids"])
    assert system.max_length - 5 <= n <= system.max_length and prompt.endswith("###출력:")
    assert prompt.startswith("###입력: 배송이 너무 느려요")


def test_classifier_run_matches_a_direct_forward_pass(clf_run):
    system = load_system(clf_run)
    assert system.kind == "classifier" and system.scoring_modes == ("classifier",)
    records = test_records()
    preds = predict(system, records, batch_size=4, progress=False)
    _check_format(preds, records)
    with torch.no_grad():
        enc = system.tokenizer([r["text"] for r in records], padding=True, return_tensors="pt")
        probs = torch.softmax(system.model(**enc).logits, -1).numpy()
    np.testing.assert_allclose([p["probs"] for p in preds], probs, atol=1e-5)
    assert [p["label"] for p in preds] == probs.argmax(1).tolist()
    with pytest.raises(ValueError, match="scoring 'generate'"):
        predict(system, records, scoring="generate", progress=False)


def test_aspect_classifier_system(tiny_roberta_dir, tmp_path):
    system = load_system(make_classifier_run(tmp_path / "run", tiny_roberta_dir, "aspects"))
    assert set(system.components) == {"keywords", "keyword_sentiment"} and system.model is None
    records = test_records("aspects")
    preds = predict(system, records, batch_size=4, progress=False)
    _check_format(preds, records)
    pol = system.components["keyword_sentiment"]
    for r, p in zip(records, preds, strict=True):
        keywords = [a["keyword"] for a in p["aspects"]]
        assert keywords[0] == "가격" and "배송" not in keywords  # thresholds 0.0 and 1.01
        assert keywords == sorted(keywords, key=KEYWORDS.index)
        with torch.no_grad():
            enc = pol.tokenizer(keyword_input(r["text"], "가격", system.task), return_tensors="pt")
            expected = system.task.polarities[int(pol.model(**enc).logits[0].argmax())]
        assert p["aspects"][0] == {"keyword": "가격", "polarity": expected}
    metrics = task_metrics(system.task, records, preds, n_resamples=0)
    assert metrics["invalid_rate"] == 0.0


def test_missing_files_give_clear_errors(tmp_path, gen_run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_system(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run_summary.json"):
        load_system(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    summary = json.loads((gen_run / "run_summary.json").read_text())
    atomic_write_json(broken / "run_summary.json", {**summary, "base_model": str(tmp_path / "gone")})
    (broken / "task_spec.json").write_text((gen_run / "task_spec.json").read_text())
    cfg = json.loads((gen_run / "adapter_config.json").read_text())
    atomic_write_json(broken / "adapter_config.json", {**cfg, "base_model_name_or_path": str(tmp_path / "gone")})
    with pytest.raises(FileNotFoundError, match="base model"):
        load_system(broken)


def test_predict_cli_writes_the_same_predictions(gen_run, tmp_path):
    records = test_records()
    write_records(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in records])  # no labels needed
    out = tmp_path / "preds.jsonl"
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "eval" / "predict.py")
    cmd = [sys.executable, script, "--run", str(gen_run), "--input", str(tmp_path / "in.jsonl"), "--out", str(out),
           "--scoring", "loglik", "--batch_size", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 predictions written" in proc.stdout
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    direct = predict(load_system(gen_run), records, scoring="loglik", progress=False)
    assert [p["id"] for p in written] == [r["id"] for r in records]
    np.testing.assert_allclose([p["probs"] for p in written], [p["probs"] for p in direct], atol=1e-5)


def test_predict_cli_accepts_constrained_scoring(gen_run, tmp_path):
    records = test_records()
    write_records(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in records])
    out = tmp_path / "preds.jsonl"
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "eval" / "predict.py"), "--run", str(gen_run), "--input",
           str(tmp_path / "in.jsonl"), "--out", str(out), "--scoring", "constrained"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 predictions written" in proc.stdout and "invalid: 0 {}" in proc.stdout
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == predict(load_system(gen_run), records, scoring="constrained", progress=False)
