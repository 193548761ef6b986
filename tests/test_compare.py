"""eval/compare.py end to end on tiny runs: a generative run in both scoring modes, a classifier and the
two baselines, each scored in its own process, on the same seeded subsample; plus cost measurement."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from test_scoring import TEXTS, make_classifier_run, make_generative_run, test_records

from reviewtune.evaluation import cost as cost_mod
from reviewtune.evaluation.baselines import fit_baseline
from reviewtune.evaluation.cost import SystemSpec, score_and_measure
from reviewtune.records import make_record, write_records
from reviewtune.report.schema import COST_KEYS
from reviewtune.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
GOOD = ["좋아요", "만족해요", "최고예요", "예뻐요", "딱 맞아요"]
BAD = ["별로예요", "아쉬워요", "실망이에요", "너무 느려요", "안 맞아요"]


def _load_compare():
    spec = importlib.util.spec_from_file_location("compare_cli", ROOT / "eval" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


def _train_records() -> list[dict]:
    out = []
    for i, (k, w) in enumerate((k, w) for k in ("가격", "배송", "디자인", "색상") for w in GOOD + BAD):
        out.append(make_record(f"t{i}", f"{k}이 {w}", sentiment=int(w in GOOD)))
    return out


def test_cost_keys_match_the_report_schema():
    assert set(cost_mod.COST_KEYS) == set(COST_KEYS)


def test_score_and_measure_a_baseline():
    task = get_task("sentiment")
    baseline = fit_baseline("tfidf_lr", task, _train_records())
    records = test_records()
    preds, cost = score_and_measure(SystemSpec("b", "baseline", "tfidf_lr", baseline=baseline), records, 4, 3)
    assert [p["id"] for p in preds] == [r["id"] for r in records]
    assert set(COST_KEYS) <= set(cost)
    assert cost["n_latency"] == 3 and 0 < cost["latency_p50_ms"] <= cost["latency_p95_ms"]
    assert cost["throughput_per_s"] > 0 and cost["batch_size"] == 4
    assert cost["peak_memory_bytes"] > 0 and cost["memory_measure"] == "peak_rss"
    assert cost["trainable_params"] == cost["total_params"] == baseline.parameter_count()
    assert cost["size_on_disk_bytes"] == baseline.serialized_bytes()


@pytest.fixture(scope="module")
def tiny_runs(tiny_causal_dir, tiny_roberta_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_runs")
    return {
        "gen": make_generative_run(root / "sft_tiny", tiny_causal_dir),
        "clf": make_classifier_run(root / "roberta_tiny", tiny_roberta_dir),
    }


def test_compare_end_to_end(tiny_runs, tmp_path):
    test = [
        make_record(f"x{i}", f"{t} {w}", sentiment=i % 2)
        for i, (t, w) in enumerate(zip(TEXTS, GOOD + BAD, strict=False))
    ]
    test += [make_record("x-empty", "  ", sentiment=1), make_record("x-nolabel", "배송 좋아요")]  # dropped, counted
    write_records(tmp_path / "test.jsonl", test)
    write_records(tmp_path / "train.jsonl", _train_records())
    config = tmp_path / "compare.yaml"
    config.write_text(
        "\n".join(
            [
                f"test_file: {tmp_path / 'test.jsonl'}",
                f"train_file: {tmp_path / 'train.jsonl'}",
                "task: sentiment",
                f"generative_runs: [{tiny_runs['gen']}]",
                "generative_scoring: [generate, loglik, constrained]",
                f"classifier_runs: [{tiny_runs['clf']}]",
                "baselines: [majority, tfidf_lr]",
                "batch_size: 4",
                "latency_sample: 10",
                "n_resamples: 50",
                f"out_dir: {tmp_path / 'out'}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    compare = _load_compare()
    # Command-line flags override the YAML.
    md = compare.main(["--config", str(config), "--max_test_samples", "4", "--latency_sample", "2"])
    out = tmp_path / "out"
    assert md == out / "report.md" and md.is_file() and (out / "report.html").is_file()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))

    names = ["sft_tiny/generate", "sft_tiny/loglik", "sft_tiny/constrained", "roberta_tiny", "baseline/majority",
             "baseline/tfidf_lr"]  # fmt: skip
    assert [s["name"] for s in report["systems"]] == names
    assert [s["kind"] for s in report["systems"]] == ["generative"] * 3 + ["classifier", "baseline", "baseline"]
    assert [s["scoring"] for s in report["systems"]][:4] == ["generate", "loglik", "constrained", "classifier"]
    assert report["subsample"] == {"n": 4, "seed": 0, "total": 6} and report["n_examples"] == 4
    assert report["test_records_dropped"] == {"empty_text": 1, "missing_label": 1}
    assert len(report["pairwise"]) == 15

    # Identical examples in identical order for every system.
    ids = None
    for s in report["systems"]:
        preds = [json.loads(line) for line in (out / "predictions" / f"{s['name'].replace('/', '_')}.jsonl").open()]
        ids = ids or [p["id"] for p in preds]
        assert [p["id"] for p in preds] == ids and len(ids) == 4
        assert s["metrics"]["n"] == 4
        c = s["cost"]
        assert set(COST_KEYS) <= set(c)
        assert c["batch_size"] == 4 and c["throughput_per_s"] > 0 and c["n_latency"] == 2
        assert c["latency_p50_ms"] <= c["latency_p95_ms"]
    by_name = {s["name"]: s for s in report["systems"]}
    assert by_name["sft_tiny/loglik"]["metrics"]["invalid_rate"] == 0.0
    assert by_name["sft_tiny/constrained"]["metrics"]["invalid_rate"] == 0.0  # valid by construction
    assert "ece" in by_name["sft_tiny/loglik"]["metrics"] and "ece" in by_name["roberta_tiny"]["metrics"]
    gen_cost = by_name["sft_tiny/generate"]["cost"]
    assert gen_cost["train_runtime_s"] == 1.5 and gen_cost["trainable_params"] == 1000
    assert gen_cost["size_on_disk_bytes"] > (tiny_runs["gen"] / "adapter_model.safetensors").stat().st_size
    # Each system in its own process: a baseline process never loads torch, so it peaks far lower.
    assert by_name["baseline/majority"]["cost"]["peak_memory_bytes"] < gen_cost["peak_memory_bytes"]
    assert "head-to-head" in md.read_text(encoding="utf-8").lower()

    # Disagreements carry occlusion highlights from the systems with probabilities (loglik, classifier),
    # one score per word of the review; baselines and generate scoring have none.
    assert report["n_disagreements"] >= len(report["disagreements"]) > 0
    for ex in report["disagreements"]:
        assert set(ex["highlights"]) == {"sft_tiny/loglik", "roberta_tiny"}
        assert all(len(scores) == len(ex["text"].split()) for scores in ex["highlights"].values())


def test_compare_refuses_runs_of_different_tasks(tiny_runs, tiny_causal_dir, tmp_path):
    compare = _load_compare()
    other = make_generative_run(tmp_path / "aspects_run", tiny_causal_dir, "aspects")
    config = tmp_path / "c.yaml"
    config.write_text("baselines: [none]\n")
    args = compare.parse_args(["--config", str(config), "--generative_runs", str(tiny_runs["gen"]), str(other)])
    with pytest.raises(ValueError, match="different tasks"):
        compare.resolve_task(args)
    args = compare.parse_args(
        ["--config", str(config), "--classifier_runs", str(tiny_runs["clf"]), "--task", "sentiment5"]
    )
    with pytest.raises(ValueError, match="trained for 'sentiment'"):
        compare.resolve_task(args)


@pytest.mark.parametrize("config", sorted((ROOT / "eval" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_compare_config_parses(config):
    args = _load_compare().parse_args(["--config", str(config)])
    assert args.generative_runs or args.classifier_runs or args.baselines
    assert args.out_dir and args.batch_size >= 1
