"""The report: schema validation, pairwise tests, the three files and their content."""

import copy
import json
import re

import pytest

from reviewtune.evaluation.baselines import fit_baseline
from reviewtune.evaluation.metrics import task_metrics
from reviewtune.records import make_record
from reviewtune.report.comparisons import disagreement_examples, recommendation
from reviewtune.report.markdown import render_markdown
from reviewtune.report.schema import COST_KEYS, validate_report_schema
from reviewtune.report.write import write_report
from reviewtune.tasks import get_task

GOOD = ["정말 좋아요", "아주 좋아요", "너무 좋아요 최고", "좋아요 만족"]
BAD = ["정말 별로예요", "아주 별로예요", "너무 별로 실망", "별로예요 실망"]


def _pred(record, label=None, aspects=None):
    """A prediction dict; no label and no aspects means an invalid output."""
    invalid = label is None and aspects is None
    return {
        "id": record["id"],
        "label": label,
        "probs": None,
        "aspects": aspects,
        "score": None,
        "invalid": invalid,
        "invalid_reason": "unknown_label" if invalid else None,
    }


def _cost(**kw):
    return {k: None for k in COST_KEYS} | kw


@pytest.fixture(scope="module")
def sentiment_case():
    """Three systems on the same 24 test records: two baselines and a 'generative' one with invalid outputs."""
    task = get_task("sentiment")
    train = [make_record(f"tr{i}", t, sentiment=1) for i, t in enumerate(GOOD * 3)]
    train += [make_record(f"tr{i + 12}", t, sentiment=0) for i, t in enumerate(BAD * 2)]
    test = [make_record(f"te{i}", t, sentiment=1) for i, t in enumerate(GOOD * 3)]
    test += [make_record(f"te{i + 12}", t, sentiment=0) for i, t in enumerate(BAD * 3)]
    preds = {name: fit_baseline(name, task, train).predict(test) for name in ("majority", "tfidf_lr")}
    # 'sft': right on the first 20, invalid on the last 4 (all negatives)
    preds["sft (generate)"] = [_pred(r, label=r["sentiment"]) if i < 20 else _pred(r) for i, r in enumerate(test)]
    kinds = {"majority": "baseline", "tfidf_lr": "baseline", "sft (generate)": "generative"}
    systems = [
        {
            "name": name,
            "kind": kinds[name],
            "scoring": "generate" if kinds[name] == "generative" else "predict",
            "run_dir": None,
            "metrics": task_metrics(task, test, p, n_resamples=200),
            "cost": _cost(
                throughput_per_s=100.0 * (i + 1),
                batch_size=8,
                latency_p50_ms=1.5,
                latency_p95_ms=3.0,
                total_params=1000 * i,
                trainable_params=10 * i,
                train_runtime_s=2.0,
            ),
        }
        for i, (name, p) in enumerate(preds.items())
    ]
    report = {"task": task, "test_file": "data/test/records.jsonl", "subsample": None, "systems": systems}
    return task, test, preds, report


def test_write_report_files_and_schema(tmp_path, sentiment_case):
    task, test, preds, report = sentiment_case
    paths = write_report(tmp_path, report, test, preds)
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html"}
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    validate_report_schema(data)
    assert [s["name"] for s in data["systems"]] == ["majority", "tfidf_lr", "sft (generate)"]
    assert data["n_examples"] == 24 and data["subsample"] is None and data["task"]["name"] == "sentiment"
    assert set(data["systems"][2]["cost"]) == set(COST_KEYS)
    assert data["systems"][2]["metrics"]["invalid_rate"] == pytest.approx(4 / 24)
    assert "versions" in data["provenance"]
    # every pair tested; majority (always 긍정: right on the 12 positives) vs sft (right on the first 20):
    # majority-only right: none; sft-only right: te12..te19 (8) -> b = 0, c = 8, exact p = 2 * 0.5**8
    assert len(data["pairwise"]) == 3
    pair = next(p for p in data["pairwise"] if (p["system_a"], p["system_b"]) == ("majority", "sft (generate)"))
    assert (pair["b"], pair["c"], pair["method"]) == (0, 8, "exact_binomial")
    assert pair["p_value"] == pytest.approx(2 * 0.5**8)
    assert pair["accuracy_a"] == pytest.approx(0.5) and pair["accuracy_b"] == pytest.approx(20 / 24)
    assert pair["significant"] is True
    # disagreements: majority differs from sft on the 12 negatives (8 predicted 부정, 4 invalid)
    assert data["n_disagreements"] >= 12
    ids = {d["id"] for d in data["disagreements"]}
    assert {f"te{i}" for i in range(12, 24)} <= ids
    invalid_shown = next(d for d in data["disagreements"] if d["id"] == "te23")
    assert invalid_shown["predictions"]["sft (generate)"] == "invalid (unknown_label)"
    assert invalid_shown["correct"] == {"majority": False, "tfidf_lr": True, "sft (generate)": False}


def test_markdown_summary_first_then_detail(tmp_path, sentiment_case):
    task, test, preds, report = sentiment_case
    write_report(tmp_path, report, test, preds)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md.index("## Head-to-head") < md.index("## Paired tests") < md.index("## Per-class detail")
    table = md[md.index("## Head-to-head") : md.index("Recommendation:")]
    for header in (
        "Accuracy [95% CI]",
        "Macro-F1 [95% CI]",
        "Invalid",
        "Latency p50 (ms)",
        "Latency p95 (ms)",
        "Throughput (/s)",
        "Peak memory",
        "Params (trainable / total)",
        "Size on disk",
        "Train time",
    ):
        assert header in table
    sft_row = next(line for line in table.splitlines() if line.startswith("| sft (generate)"))
    assert "0.833 [" in sft_row and "16.7%" in sft_row and "300.0 (batch 8)" in sft_row
    # The recommendation follows from the predictions themselves (counted here, not read from the report).
    accuracy = {
        name: sum(p["label"] == r["sentiment"] and not p["invalid"] for p, r in zip(ps, test, strict=True)) / len(test)
        for name, ps in preds.items()
    }
    best = max(accuracy, key=accuracy.get)
    assert sorted(accuracy.values())[-1] > sorted(accuracy.values())[-2]  # a clear winner
    assert f"**{best}** has the best accuracy ({accuracy[best]:.3f};" in md
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert "All 24 examples of `data/test/records.jsonl`" in md
    assert render_markdown(data) == md  # the documents are rebuilt from report.json alone


def test_html_is_self_contained_with_plots_and_highlights(tmp_path, sentiment_case):
    task, test, preds, report = sentiment_case
    examples, total = disagreement_examples(task, test, preds)
    examples[0]["highlights"] = {"tfidf_lr": [0.0] * (len(examples[0]["text"].split()) - 1) + [0.9]}
    report = {**report, "disagreements": examples, "n_disagreements": total}
    write_report(tmp_path, report, test, preds)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    # scatter + F1 bars + one confusion matrix per system, all embedded
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) == 5
    assert not re.search(r'(src|href)="https?:', page)
    last_word = examples[0]["text"].split()[-1]
    assert re.search(rf"<mark[^>]*>{re.escape(last_word)}</mark>", page)
    assert "Where the systems disagree" in page and 'class="bad"' in page and 'class="ok"' in page


def test_validate_report_schema_catches_problems(tmp_path, sentiment_case):
    task, test, preds, report = sentiment_case
    write_report(tmp_path, report, test, preds)
    good = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    validate_report_schema(good)

    def broken(edit):
        bad = copy.deepcopy(good)
        edit(bad)
        return bad

    cases = {
        "missing top-level key 'pairwise'": lambda r: r.pop("pairwise"),
        "cost missing 'latency_p95_ms'": lambda r: r["systems"][0]["cost"].pop("latency_p95_ms"),
        "kind is 'llm'": lambda r: r["systems"][1].update(kind="llm"),
        "duplicate name": lambda r: r["systems"][1].update(name="majority"),
        "metrics missing 'macro_f1'": lambda r: r["systems"][2]["metrics"].pop("macro_f1"),
        "non-finite number": lambda r: r["systems"][0]["cost"].update(throughput_per_s=float("nan")),
        "cost.total_params is not a number": lambda r: r["systems"][0]["cost"].update(total_params="1M"),
        "expected 3 (every pair)": lambda r: r["pairwise"].pop(),
        "subsample must be null": lambda r: r.update(subsample={"n": 10}),
        "highlights must be null": lambda r: r["disagreements"][0].update(highlights=["x"]),
    }
    for message, edit in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            validate_report_schema(broken(edit))


def test_write_report_refuses_misaligned_predictions(tmp_path, sentiment_case):
    task, test, preds, report = sentiment_case
    shuffled = {**preds, "tfidf_lr": list(reversed(preds["tfidf_lr"]))}
    with pytest.raises(ValueError, match="not aligned"):
        write_report(tmp_path, report, test, shuffled)
    with pytest.raises(ValueError, match="differ"):
        write_report(tmp_path, report, test, {k: v for k, v in preds.items() if k != "majority"})
    assert not (tmp_path / "report.json").exists()


def test_aspects_report_with_subsample(tmp_path):
    task = get_task("aspects", keywords=["가격", "배송"])
    a, b = [{"keyword": "배송", "polarity": 1}], [{"keyword": "가격", "polarity": -1}]
    test = [make_record(f"t{i}", f"리뷰 {i}", aspects=a if i % 2 else b) for i in range(10)]

    preds = {
        "gold-ish": [_pred(r, aspects=r["aspects"]) for r in test],
        "always-a": [_pred(r, aspects=a) for r in test],
    }
    systems = [
        {
            "name": n,
            "kind": "classifier",
            "scoring": "classifier",
            "run_dir": "runs/x",
            "metrics": task_metrics(task, test, p, n_resamples=100),
            "cost": _cost(),
        }
        for n, p in preds.items()
    ]
    report = {
        "task": task.to_dict(),
        "test_file": "t.jsonl",
        "subsample": {"n": 10, "seed": 3, "total": 99},
        "systems": systems,
    }
    write_report(tmp_path, report, test, preds)
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    validate_report_schema(data)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "subsample of 10 of the 99 examples" in md and "(seed 3)" in md
    assert "Keyword micro-F1 [95% CI]" in md and "Exact match [95% CI]" in md
    # gold-ish is right on all 10, always-a on the 5 odd ones: b = 5, c = 0
    assert (data["pairwise"][0]["b"], data["pairwise"][0]["c"]) == (5, 0)
    assert data["n_disagreements"] == 5
    assert data["disagreements"][0]["predictions"] == {"gold-ish": "가격-1", "always-a": "배송1"}


def test_recommendation_follows_the_numbers():
    def system(name, acc, tput, invalid=0.0):
        return {"name": name, "metrics": {"accuracy": acc, "invalid_rate": invalid}, "cost": {"throughput_per_s": tput}}

    report = {
        "task": {"name": "sentiment"},
        "systems": [system("clf", 0.90, 500.0), system("sft", 0.92, 5.0, invalid=0.01), system("majority", 0.5, 1e5)],
        "pairwise": [  # b: system_a right where system_b is wrong; c: the reverse
            {"system_a": "clf", "system_b": "sft", "b": 3, "c": 5, "p_value": 0.21, "significant": False},
            {"system_a": "clf", "system_b": "majority", "b": 40, "c": 0, "p_value": 1e-9, "significant": True},
            {"system_a": "sft", "system_b": "majority", "b": 42, "c": 0, "p_value": 1e-9, "significant": True},
        ],
    }
    text = recommendation(report)
    assert text.startswith(
        "**sft** has the best accuracy (0.920; 1.0% invalid outputs, counted as wrong); the next is clf (0.900)"
    )
    assert "not significant (McNemar p = 0.21)" in text and "clf is the faster of the two (500.0 vs 5.0" in text
    report["pairwise"][0].update(p_value=0.001, significant=True)
    assert "the difference is significant (McNemar p = 0.001 < 0.05; right where the other is wrong: 5 vs 3" in (
        recommendation(report)
    )


def _regression_report(tmp_path, predictions_by_system: dict[str, list[float | None]], gold: list[float]):
    """A regression report of the given predictions, built by the harness's own metric and report code."""
    from reviewtune.evaluation.metrics import task_metrics
    from reviewtune.evaluation.prediction_schema import new_prediction

    task = get_task("regression")
    records = [{"id": str(i), "text": f"리뷰 {i}", "score": g} for i, g in enumerate(gold)]
    preds = {
        name: [new_prediction(str(i), score=v, invalid=v is None, invalid_reason="no_number" if v is None else None)
               for i, v in enumerate(values)]  # fmt: skip
        for name, values in predictions_by_system.items()
    }
    train_mean = 3.0
    cost = dict.fromkeys(COST_KEYS)
    systems = [
        {"name": name, "kind": "generative", "scoring": "generate", "run_dir": None, "cost": cost,
         "metrics": task_metrics(task, records, p, n_resamples=0, invalid_score=train_mean)}
        for name, p in preds.items()
    ]  # fmt: skip
    report = {"task": task, "test_file": "test.jsonl", "subsample": None, "systems": systems,
              "invalid_score": {"value": train_mean, "from": "train"}}  # fmt: skip
    write_report(tmp_path, report, records, preds)
    return json.loads((tmp_path / "report.json").read_text(encoding="utf-8")), (tmp_path / "report.md").read_text()


def test_regression_recommendation_charges_invalid_outputs(tmp_path):
    # A is exact on 10 reviews and invalid on 90; B is valid everywhere with error 0.3 (the case).
    gold = [1.0, 5.0] * 50
    a = [g if i < 10 else None for i, g in enumerate(gold)]
    b = [g - 0.3 for g in gold]
    report, md = _regression_report(tmp_path, {"A": a, "B": b}, gold)
    metrics = {s["name"]: s["metrics"] for s in report["systems"]}
    assert metrics["A"]["mae_valid"] == 0.0 and metrics["A"]["mae"] > 1.5  # 90 invalid scored as 3.0: error 2
    text = recommendation(report)
    assert text.startswith("**B** has the best mae (0.300; 0.0% invalid outputs, scored as the training mean)")
    assert "the next is A" in text and "significant (McNemar" in text  # b (B right, A wrong) = 90 for B
    assert "Here that score is 3, the mean of the train records." in md


def test_recommendation_never_calls_a_lead_significant_against_the_paired_test(tmp_path):
    # A misses every review by 0.6 (MAE 0.6, never within the 0.5 tolerance); B is exact on 60 and 2.0 off on 40
    # (MAE 0.8). A wins on MAE, but B is right where A is wrong on 60 examples and never the reverse.
    gold = [3.0] * 100
    a = [3.6] * 100
    b = [3.0] * 60 + [5.0] * 40
    report, _ = _regression_report(tmp_path, {"A": a, "B": b}, gold)
    test = report["pairwise"][0]
    assert test["significant"]
    text = recommendation(report)
    assert text.startswith("**A** has the best mae (0.600;")
    assert "the paired test favours B (right where A is wrong on 60 examples, the reverse on 0" in text
    assert "no significant lead" in text and "the difference is significant" not in text


def test_disagreements_between_models_come_first(sentiment_case):
    task, test, preds, _ = sentiment_case
    models = ["tfidf_lr", "sft (generate)"]
    examples, total = disagreement_examples(task, test, preds, first=models)
    assert total == len(examples) >= 12
    flags = [ex["predictions"][models[0]] != ex["predictions"][models[1]] for ex in examples]
    assert any(flags) and not all(flags)
    assert flags == sorted(flags, reverse=True)  # every model-vs-model disagreement before the others
    capped, total_capped = disagreement_examples(task, test, preds, max_examples=3)
    assert len(capped) == 3 and total_capped == total
    assert [ex["id"] for ex in capped] == sorted((ex["id"] for ex in examples), key=lambda s: int(s[2:]))[:3]
