"""recipes/classify_roberta.py and reviewtune.training.classifier_heads on tiny models and data the tests write."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from reviewtune.atomic import read_json
from reviewtune.data.splits import hold_out_validation
from reviewtune.evaluation.keyword_attention import aspects_from_pooled, keyword_attention
from reviewtune.records import load_task_records, make_record, write_records
from reviewtune.tasks import get_task
from reviewtune.training.classifier_heads import (
    KEYWORD_ATTENTION,
    MULTI_LABEL,
    REGRESSION,
    SINGLE_LABEL,
    build_examples,
    class_weights,
    head_metrics,
    heads_for_task,
    lora_config,
    loss_normaliser,
    model_max_length,
    weighted_loss,
)
from reviewtune.training.run_directory import SUMMARY_KEYS
from reviewtune.training.thresholds import load_thresholds, save_thresholds, tune_thresholds

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("classify_*.yaml"))
KEYWORDS = ["가격", "디자인", "배송", "사이즈", "색상"]  # a user keyword list (a subset of the default)
STEPS = 80  # optimizer steps per test run
GOOD, BAD = ["좋아요", "최고예요", "만족해요"], ["별로예요", "실망이에요", "아쉬워요"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("classify_roberta", ROOT / "recipes" / "classify_roberta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_records(task: str, n: int, seed: int) -> list[dict]:
    """Easy, learnable records: the label follows from the words used."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kws = rng.sample(KEYWORDS, rng.choice([1, 1, 2]) if task == "aspects" else 1)
        pols = [rng.choice([-2, -1, 1, 2, 2]) for _ in kws]
        text = " 그리고 ".join(f"{k} {'정말 ' if abs(p) == 2 else ''}{rng.choice(GOOD if p > 0 else BAD)}"
                              for k, p in zip(kws, pols, strict=True))  # fmt: skip
        rec = make_record(f"{task}-{seed}-{i}", text)
        if task == "sentiment":
            rec["sentiment"] = int(pols[0] > 0)
        elif task == "sentiment5":
            rec["sentiment"] = {-2: 0, -1: 1, 1: 3, 2: 4}[pols[0]]
        elif task == "aspects":
            rec["aspects"] = [{"keyword": k, "polarity": p} for k, p in zip(kws, pols, strict=True)]
        else:
            rec["score"] = float(pols[0])
        out.append(rec)
    return out


def write_splits(tmp_path: Path, task: str, n_train: int = 96) -> dict[str, str]:
    files = {}
    for split, n, seed in (("train", n_train, 0), ("validation", 32, 1), ("test", 24, 2)):
        files[split] = str(write_records(tmp_path / task / split / "records.jsonl", make_records(task, n, seed)))
    return files


def run_recipe(tmp_path, tiny_roberta_dir, task: str, method: str, *extra: str, n_train: int = 96):
    """Run the recipe on the tiny model. The tiny base is barely pre-trained, so LoRA adapts every linear
    layer with a large scale (alpha / r = 8) to learn within a few dozen steps."""
    files = write_splits(tmp_path, task, n_train)
    out = tmp_path / f"run_{task}"
    argv = [
        "--task", task, "--train_file", files["train"], "--validation_file", files["validation"],
        "--test_file", files["test"], "--model_name_or_path", str(tiny_roberta_dir), "--output_dir", str(out),
        "--max_length", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
        "--max_steps", str(STEPS), "--warmup_steps", "0", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--eval_steps", str(STEPS // 2),
        "--save_steps", str(STEPS // 2), "--seed", "0", "--dataloader_pin_memory", "false", "--disable_tqdm", "true",
        "--num_sample_predictions", "2",
    ]  # fmt: skip
    if method == "lora":
        argv += ["--use_peft", "true", "--lora_target_modules", "all-linear", "--lora_r", "16", "--lora_alpha", "128",
                 "--learning_rate", "1e-3"]  # fmt: skip
    else:
        argv += ["--use_peft", "false", "--learning_rate", "2e-3"]
    if task == "aspects":
        argv += ["--keywords", *KEYWORDS]
    summary = load_recipe().main(argv + list(extra))
    return out, summary


def assert_loss_fell(run_dir: Path):
    losses = [h["loss"] for h in read_json(run_dir / "trainer_state.json")["log_history"] if "loss" in h]
    assert len(losses) >= 12, losses
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.95 * first, f"{run_dir.name}: loss did not fall: {losses}"


def assert_run_dir(run_dir: Path, method: str):
    summary = read_json(run_dir / "run_summary.json")
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["recipe"] == "classify_roberta" and summary["kind"] == "classifier"
    assert summary["quantization"] == "none" and summary["method"] == method
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    for name in ("task_spec.json", "token_freqs.json", "classification_report.json", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    # The directory is the complete model (LoRA: merged, the adapter kept in adapter/ where loaders do not see it)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "config.json").is_file()
    assert not (run_dir / "adapter_config.json").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file() == (method == "lora")
    assert not list(run_dir.glob("*.bin")) or all(p.name == "training_args.bin" for p in run_dir.glob("*.bin"))
    assert_model_cards(run_dir, method)
    return summary


def assert_model_cards(run_dir: Path, method: str):
    """A Hugging Face card in the model directory (and its adapter/), none of PEFT's boilerplate left."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "README.md")
    token_level = read_json(run_dir / "run_summary.json")["head"] == KEYWORD_ATTENTION
    tag = "token-classification" if token_level else "text-classification"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == tag
    assert {"reviewtune", method} <= set(card.data.tags) and card.data.language == ["ko"]
    for section in ("## Task", "## Data", "## Training", "## Results", "## Reproduce", "## How to load"):
        assert section in card.text, section
    assert "accelerate launch recipes/classify_roberta.py" in card.text
    if token_level:  # loaded through the harness
        assert f'load_as_scored("{run_dir}")' in card.text
    else:
        assert f'pipeline("text-classification", model="{run_dir}' in card.text
    if method == "lora":
        assert ModelCard.load(run_dir / "adapter" / "README.md").data.library_name == "peft"
    for readme in run_dir.glob("**/README.md"):
        if "checkpoint-" not in str(readme):
            assert "Model Card for Model ID" not in readme.read_text(), readme


def pipeline_labels(model_dir: Path, texts: list[str]) -> list[str]:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(model_dir), device="cpu")
    return [r["label"] for r in clf(texts)]


# ----------------------------------------------------------------------------------------- library units


def test_heads_follow_the_tasks():
    assert [(h.name, h.problem_type, h.label_names) for h in heads_for_task(get_task("sentiment"))] == [
        ("sentiment", SINGLE_LABEL, ("부정", "긍정"))
    ]
    assert heads_for_task(get_task("sentiment5"))[0].num_labels == 5
    assert heads_for_task(get_task("regression"))[0].problem_type == REGRESSION
    keywords, polarity = heads_for_task(get_task("aspects", keywords=KEYWORDS), "pair")
    assert (keywords.name, keywords.problem_type, keywords.label_names) == ("keywords", MULTI_LABEL, tuple(KEYWORDS))
    assert (polarity.name, polarity.label_names) == ("keyword_sentiment", ("-2", "-1", "0", "1", "2"))
    assert (keywords.default_metric, polarity.default_metric) == ("micro_f1", "macro_f1")
    [aspects] = heads_for_task(get_task("aspects", keywords=KEYWORDS[:2]))  # the default: keyword attention
    assert (aspects.name, aspects.problem_type, aspects.default_metric) == ("aspects", KEYWORD_ATTENTION, "exact_match")
    polarity_labels = (f"{k}{p}" for k in ("가격", "디자인") for p in (-2, -1, 0, 1, 2))
    assert aspects.label_names == ("가격", "디자인", *polarity_labels)
    assert (aspects.keywords, aspects.polarities) == (("가격", "디자인"), (-2, -1, 0, 1, 2))
    with pytest.raises(ValueError, match="aspect_model must be one of keyword_attention, pair"):
        heads_for_task(get_task("aspects", keywords=KEYWORDS), "pairs")


def test_examples_per_head_and_class_weights():
    task = get_task("aspects", keywords=KEYWORDS)
    recs = [
        make_record("a", "배송 좋아요 그리고 색상 별로예요", aspects=[{"keyword": "색상", "polarity": -1},
                                                                  {"keyword": "배송", "polarity": 2}]),
        make_record("b", "가격 좋아요", aspects=[{"keyword": "가격", "polarity": 1}]),
        make_record("c", "그냥 그래요", aspects=[]),
    ]  # fmt: skip
    kw_head, pol_head = heads_for_task(task, "pair")
    kw = build_examples(recs, task, kw_head)
    assert [e["labels"] for e in kw] == [[0, 0, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    pol = build_examples(recs, task, pol_head)
    # one example per (review, keyword), in keyword-list order, input = keyword_input, label = polarity index
    assert [e["text"] for e in pol] == [
        "###입력: 배송 좋아요 그리고 색상 별로예요\n###키워드: 배송",
        "###입력: 배송 좋아요 그리고 색상 별로예요\n###키워드: 색상",
        "###입력: 가격 좋아요\n###키워드: 가격",
    ]
    assert [e["label"] for e in pol] == [4, 1, 3]
    # BCE pos_weight = negatives / positives (1 if never present), clipped to [1/10, 10]
    assert class_weights(kw, kw_head, "balanced", 10.0) == [2.0, 1.0, 2.0, 1.0, 2.0]
    # cross-entropy: n / (K * count) = 3 / (5 * 1), absent classes 1; clipped to [1/1.5, 1.5]
    assert class_weights(pol, pol_head, "balanced", 10.0) == [1.0, 0.6, 1.0, 0.6, 0.6]
    assert class_weights(pol, pol_head, "balanced", 1.5) == [1.0, 0.666667, 1.0, 0.666667, 0.666667]
    assert class_weights(pol, pol_head, "none", 10.0) is None
    # keyword attention: one example per review, K presence flags then K polarity indices (-100: absent)
    [ka_head] = heads_for_task(task)
    ka = build_examples(recs, task, ka_head)
    assert [e["text"] for e in ka] == [r["text"] for r in recs]
    assert ka[0]["labels"] == [0, 0, 1, 0, 1, -100, -100, 4, -100, 1]
    assert ka[2]["labels"] == [0] * 5 + [-100] * 5
    assert class_weights(ka, ka_head, "balanced", 10.0) == [2.0, 1.0, 2.0, 1.0, 2.0]  # presence: as keywords


def test_keyword_attention_pools_over_real_tokens_only():
    """Presence = logsumexp of a keyword's token scores; polarity = its polarity logits averaged under the softmax of
    those scores; padding takes no part, whatever its logits."""
    k, p = 2, 3
    torch.manual_seed(0)
    logits = torch.randn(1, 4, k + k * p)
    padded = torch.cat([logits, torch.full((1, 2, k + k * p), 50.0)], dim=1)
    pooled = keyword_attention(logits, torch.ones(1, 4, dtype=torch.long), k)
    pooled_padded = keyword_attention(padded, torch.tensor([[1, 1, 1, 1, 0, 0]]), k)
    torch.testing.assert_close(pooled_padded, pooled)
    s, z = logits[0, :, :k], logits[0, :, k:].view(4, k, p)
    for j in range(k):  # by hand, keyword j
        w = torch.exp(s[:, j]) / torch.exp(s[:, j]).sum()
        torch.testing.assert_close(pooled[0, j], torch.log(torch.exp(s[:, j]).sum()))
        torch.testing.assert_close(pooled[0, k + j * p : k + (j + 1) * p], (w[:, None] * z[:, j]).sum(0))
    # decisions: presence probability >= the keyword's threshold, the polarity of the largest pooled logit
    rows = np.array([[2.0, -2.0, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [-1.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    assert aspects_from_pooled(rows, np.array([0.5, 0.5]), ["가격", "배송"], [-1, 0, 1]) == [
        [{"keyword": "가격", "polarity": 0}], [{"keyword": "배송", "polarity": 1}]]  # fmt: skip
    assert aspects_from_pooled(rows, np.array([0.9, 0.5]), ["가격", "배송"], [-1, 0, 1])[0] == []


def test_keyword_attention_loss_adds_up_over_micro_batches():
    """Per review: presence BCE averaged over keywords + polarity cross-entropy summed over its keywords. Divided by
    the whole batch's normaliser, micro-batch losses add up to the batch's loss (gradient accumulation)."""
    k = 3
    torch.manual_seed(1)
    pooled = torch.randn(4, k + k * 5)
    labels = torch.tensor([[1, 0, 1, 4, -100, 0], [0, 0, 0, -100, -100, -100], [0, 1, 0, -100, 2, -100],
                           [1, 1, 1, 1, 2, 3]], dtype=torch.float)  # fmt: skip
    weights = torch.tensor([2.0, 1.0, 3.0])
    whole = weighted_loss(pooled, labels, KEYWORD_ATTENTION, weights)
    norm = loss_normaliser(labels, KEYWORD_ATTENTION, weights)
    parts = sum(weighted_loss(pooled[i : i + 2], labels[i : i + 2], KEYWORD_ATTENTION, weights, norm) for i in (0, 2))
    torch.testing.assert_close(parts, whole)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pooled[:, :k], labels[:, :k], pos_weight=weights)
    ce = torch.nn.functional.cross_entropy(pooled[:, k:].reshape(-1, 5), labels[:, k:].long().flatten(),
                                           ignore_index=-100, reduction="sum")  # fmt: skip
    torch.testing.assert_close(whole, bce + ce / 4)


def test_load_records_counts_every_dropped_row(tmp_path):
    task = get_task("sentiment")
    rows = [make_record("1", "좋아요", sentiment=1), make_record("2", "", sentiment=0),
            make_record("3", "별로", sentiment=None), make_record("4", "음", sentiment=7)]  # fmt: skip
    path = write_records(tmp_path / "r.jsonl", rows)
    kept, report = load_task_records(path, task)
    assert [r["id"] for r in kept] == ["1"]
    assert report["read"] == 4 == report["kept"] + sum(report["dropped"].values())
    assert report["dropped"] == {"empty_text": 1, "missing_label": 1, "unknown_label": 1}
    train, val = hold_out_validation([make_record(str(i), "x", sentiment=0) for i in range(20)], 0.25, seed=3)
    assert (len(train), len(val)) == (15, 5) and not {r["id"] for r in train} & {r["id"] for r in val}


def test_multilabel_metrics_hand_checked():
    """Keyword detection at per-keyword thresholds, checked against hand-counted TP/FP/FN."""
    task = get_task("aspects", keywords=["가격", "배송", "색상"])
    head = heads_for_task(task, "pair")[0]
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.6, 0.4], [0.2, 0.7, 0.1], [0.55, 0.3, 0.2], [0.1, 0.1, 0.8]])
    logits = np.log(probs / (1 - probs))
    m = head_metrics(head, logits, y_true, thresholds=np.array([0.5, 0.65, 0.5]))
    # predictions: [1,0,0], [0,1,0], [1,0,0], [0,0,1]
    # 가격 TP2 FP0 FN0 -> P1 R1 F1; 배송 TP1 FP0 FN1 -> P1 R.5 F2/3; 색상 TP0 FP1 FN1 -> 0
    # micro: TP3 FP1 FN2 -> P 3/4, R 3/5, F1 2/3
    assert m["micro_precision"] == pytest.approx(3 / 4)
    assert m["micro_recall"] == pytest.approx(3 / 5)
    assert m["micro_f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["exact_match"] == pytest.approx(1 / 4)  # only row 2 is entirely right
    assert m["per_keyword"]["배송"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    # the default threshold 0.5 also detects 배송 in row 1 (0.6): one more false positive
    assert head_metrics(head, logits, y_true)["micro_precision"] == pytest.approx(3 / 5)


def test_thresholds_tuned_per_keyword_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((200, 2)) < 0.3).astype(int)
    probs = np.where(y == 1, 0.25 + 0.1 * rng.random((200, 2)), 0.05 + 0.1 * rng.random((200, 2)))
    probs[:, 1] = np.where(y[:, 1] == 1, 0.9, 0.1)  # separable at 0.5
    t = tune_thresholds(probs, y, ["가격", "배송"])
    assert 0.15 < t["가격"] <= 0.25  # separates 0.05-0.15 from 0.25-0.35
    assert t["배송"] == 0.5  # every threshold in (0.1, 0.9] is perfect: the tie goes to 0.5
    assert tune_thresholds(probs[:3], y[:3], ["가격", "배송"]) == {"가격": 0.5, "배송": 0.5}  # too few positives
    save_thresholds(tmp_path, t, tuned=True)
    assert load_thresholds(tmp_path, ["배송", "가격"]).tolist() == [0.5, t["가격"]]


def test_lora_trains_only_adapters_and_head(tiny_roberta_dir):
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification
    from trl import ModelConfig

    for targets, adapted in ((None, {"query", "value"}), (["all-linear"], {"query", "key", "value", "dense"})):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, num_labels=3)
        model = get_peft_model(model, lora_config(ModelConfig(use_peft=True, lora_r=4, lora_target_modules=targets)))
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or ".classifier.modules_to_save." in n for n in trainable), trainable
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n} == adapted
        assert any(n.endswith("classifier.modules_to_save.default.out_proj.weight") for n in trainable)
        assert not any("classifier" in n and "lora_" in n for n in trainable)  # the head is trained in full
    assert model_max_length(model.config, 10_000) == model.config.max_position_embeddings - 2


def test_configs_parse_and_unknown_keys_fail(tmp_path):
    recipe = load_recipe()
    assert {p.name for p in CONFIGS} >= {
        "classify_roberta_default.yaml", "classify_klue_roberta_base_nsmc.yaml",
        "classify_klue_roberta_large_nsmc.yaml",
        "classify_klue_roberta_base_aspects.yaml", "classify_nsmc_sentiment_cpu.yaml",
    }  # fmt: skip
    for path in CONFIGS:
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path.name}: no comment header"
        data, clf, training, model = recipe.parse_args(["--config", str(path)])
        assert data.task in ("sentiment", "sentiment5", "aspects", "regression")
        assert training.load_best_model_at_end and training.train_sampling_strategy == "group_by_length"
        recipe.check_model_args(model)
    data, clf, training, model = recipe.parse_args(["--max_length", "64"])  # no --config: the embedded default
    assert (data.task, data.train_file, model.model_name_or_path, clf.max_length) == ("aspects", None, "embedded", 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sentiment\nnot_a_field: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.yaml.*not_a_field"):
        recipe.parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="command line.*not_a_flag"):
        recipe.parse_args(["--not_a_flag", "1"])


# ------------------------------------------------------------------------------------------- recipe runs


def test_sentiment_lora_run_merges_and_resumes(tmp_path, tiny_roberta_dir):
    out, summary = run_recipe(tmp_path, tiny_roberta_dir, "sentiment", "lora")
    assert_loss_fell(out)
    assert_run_dir(out, "lora")
    assert summary["pipeline_model"] == "." and summary["metrics"]["test"]["n"] == 24
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "부정", "1": "긍정"}
    # the run directory itself round-trips through pipeline, with label names, and agrees with the adapter
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reviewtune.evaluation.predict import predict
    from reviewtune.evaluation.systems import load_system

    texts = ["배송 정말 좋아요", "가격 실망이에요", "색상 아쉬워요", "사이즈 최고예요"]
    labels = pipeline_labels(out, texts)
    assert set(labels) <= {"부정", "긍정"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, config=str(out / "config.json"))
    adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        ids = adapter(**tok(texts, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert labels == [["부정", "긍정"][i] for i in ids]
    # the harness scores this same directory: its predictions are the pipeline's
    harness = predict(load_system(out), [{"id": str(i), "text": t} for i, t in enumerate(texts)], progress=False)
    assert labels == [["부정", "긍정"][p["label"]] for p in harness]
    # why the adapter is not left in the model directory: alone it rebuilds the head from the base config
    assert set(pipeline_labels(out / "adapter", texts)) <= {"LABEL_0", "LABEL_1"}
    # re-launched into the same output_dir with more steps: resumes from the last checkpoint
    _, resumed = run_recipe(tmp_path, tiny_roberta_dir, "sentiment", "lora", "--max_steps", str(STEPS + 6))
    assert resumed["resumed_from"].endswith(f"checkpoint-{STEPS}") and resumed["global_step"] == STEPS + 6


def test_sentiment5_full_finetuning_pipeline(tmp_path, tiny_roberta_dir):
    out, summary = run_recipe(tmp_path, tiny_roberta_dir, "sentiment5", "full")
    assert_loss_fell(out)
    assert_run_dir(out, "full")
    assert summary["pipeline_model"] == "." and summary["trainable_params"] == summary["total_params"]
    report = read_json(out / "classification_report.json")
    assert report["test"]["confusion_matrix"]["labels"] == get_task("sentiment5").label_names
    assert set(pipeline_labels(out, ["배송 정말 좋아요"])) <= set(get_task("sentiment5").label_names)


def test_regression_run(tmp_path, tiny_roberta_dir):
    out, summary = run_recipe(tmp_path, tiny_roberta_dir, "regression", "full")
    assert_loss_fell(out)
    assert_run_dir(out, "full")
    assert {"pearson", "spearman", "mse", "mae"} <= set(summary["metrics"]["test"])
    assert summary["best_metric"]["name"] == "mse"


def test_aspects_keyword_attention_model(tmp_path, tiny_roberta_dir):
    """The default aspect classifier: one LoRA token-classification model; the harness loads it and scores the test
    split exactly as the recipe's own evaluation did."""
    from reviewtune.evaluation.metrics import task_metrics
    from reviewtune.evaluation.predict import predict
    from reviewtune.evaluation.systems import load_system

    out, summary = run_recipe(tmp_path, tiny_roberta_dir, "aspects", "lora", n_train=128)
    assert (summary["head"], summary["component"], summary.get("components")) == (KEYWORD_ATTENTION, None, None)
    assert summary["label_names"][: len(KEYWORDS)] == KEYWORDS and len(summary["label_names"]) == 6 * len(KEYWORDS)
    assert_loss_fell(out)
    assert_run_dir(out, "lora")
    assert read_json(out / "config.json")["architectures"] == ["RobertaForTokenClassification"]
    thresholds = read_json(out / "thresholds.json")["thresholds"]
    assert list(thresholds) == KEYWORDS and all(0 < t < 1 for t in thresholds.values())
    system = load_system(out)
    assert system.components == {} and list(system.thresholds) == [thresholds[k] for k in KEYWORDS]
    test = load_task_records(tmp_path / "aspects" / "test" / "records.jsonl", system.task)[0]
    scored = task_metrics(system.task, test, predict(system, test, batch_size=5, progress=False), n_resamples=0)
    for name in ("micro_f1", "polarity_accuracy", "exact_match"):
        assert scored[name] == pytest.approx(summary["metrics"]["test"][name]), name
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert "keyword attention" in card.text and "load_as_scored" in card.text
    # The adapter's card loads it as a token classifier: the merged model's outputs, up to float rounding
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    assert "AutoModelForTokenClassification.from_pretrained" in ModelCard.load(out / "adapter" / "README.md").text
    base = AutoModelForTokenClassification.from_pretrained(tiny_roberta_dir, config=AutoConfig.from_pretrained(out))
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    enc = AutoTokenizer.from_pretrained(out)(["배송 좋아요 그리고 색상 별로예요"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapted(**enc).logits, system.model(**enc).logits, atol=1e-4, rtol=1e-4)


def test_aspects_two_model_system(tmp_path, tiny_roberta_dir):
    out, summary = run_recipe(tmp_path, tiny_roberta_dir, "aspects", "lora", "--aspect_model", "pair", n_train=128)
    assert read_json(out / "run_summary.json") == json.loads(json.dumps(summary, default=str)) | {"schema_version": 1}
    assert summary["components"] == {"keywords": "keywords", "keyword_sentiment": "keyword_sentiment"}
    assert set(SUMMARY_KEYS) - {"schema_version"} <= set(summary)
    assert (summary["task"], summary["kind"], summary["method"]) == ("aspects", "classifier", "lora")
    assert (out / "task_spec.json").is_file() and (out / "token_freqs.json").is_file()
    assert {"micro_f1", "exact_match", "polarity_accuracy"} <= set(summary["metrics"]["test"])
    assert set(read_json(out / "learning_curves.json")["components"]) == {"keywords", "keyword_sentiment"}
    assert (out / "learning_curves.png").is_file()
    for name in ("keywords", "keyword_sentiment"):
        assert_loss_fell(out / name)
        curves = read_json(out / name / "learning_curves.json")  # losses and the Trainer's metrics per step
        assert (out / name / "learning_curves.png").is_file() and curves["steps"] > 0
        assert any("eval_loss" in p for p in curves["points"]) and any("loss" in p for p in curves["points"])
        sub = assert_run_dir(out / name, "lora")
        assert sub["component"] == name
    thresholds = read_json(out / "keywords" / "thresholds.json")["thresholds"]
    assert list(thresholds) == KEYWORDS and all(0 < t < 1 for t in thresholds.values())
    assert set(pipeline_labels(out / "keywords", ["배송 좋아요"])) <= set(KEYWORDS)
    assert set(pipeline_labels(out / "keyword_sentiment", ["###입력: 배송 좋아요\n###키워드: 배송"])) <= {
        "-2", "-1", "0", "1", "2"}  # fmt: skip
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")  # the two-model system's own card
    assert "keywords/" in card.text and "keyword_sentiment/" in card.text and "load_as_scored" in card.text
    # keyword inputs are cut on the left, so the keyword at the end survives truncation
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "keyword_sentiment")
    ids = tok("###입력: " + "아주 긴 리뷰 " * 50 + "\n###키워드: 배송", truncation=True, max_length=16)["input_ids"]
    assert len(ids) == 16 and tok.decode(ids, skip_special_tokens=True).endswith("배송")
