"""benchmarks/label_scoring.py on a tiny run: every mode in its own process, on the same reviews."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from test_scoring import make_generative_run, test_records

from reviewtune.records import write_records

ROOT = Path(__file__).resolve().parent.parent


def test_label_scoring_benchmark_measures_each_mode(tiny_causal_dir, tmp_path, capsys):
    run = make_generative_run(tmp_path / "run", tiny_causal_dir, "sentiment5")
    records = test_records() * 2
    records = [{**r, "id": f"{r['id']}-{k}", "sentiment": k % 5} for k, r in enumerate(records)]
    write_records(tmp_path / "records.jsonl", records)
    spec = importlib.util.spec_from_file_location("label_scoring", ROOT / "benchmarks" / "label_scoring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results.json"
    report = bench.main(["--run", str(run), "--records", str(tmp_path / "records.jsonl"), "--n", "10",
                         "--batch_size", "4", "--modes", "loglik,constrained,prompt", "--chunk", "4",
                         "--out", str(out)])  # fmt: skip
    assert out.is_file() and report["n"] == 10 and report["task"] == "sentiment5"
    modes = report["modes"]
    assert set(modes) == {"loglik", "constrained", "prompt"}
    for m in modes.values():
        assert m["reviews_per_s"] > 0 and m["peak_memory_bytes"] > m["rss_after_load_bytes"] * 0.5
    assert modes["loglik"]["invalid_rate"] == modes["constrained"]["invalid_rate"] == 0.0
    assert "accuracy" in modes["loglik"]["quality"]
    assert report["ratios"]["loglik/prompt time"] > 0
    # The same modes timed in one process, taking turns chunk by chunk.
    interleaved = report["interleaved"]
    assert set(interleaved["seconds"]) == {"loglik", "constrained", "prompt"} and interleaved["n"] == 10
    assert all(v > 0 for v in interleaved["reviews_per_s"].values()) and "loglik/prompt time" in interleaved["ratios"]
    printed = capsys.readouterr().out
    assert "loglik/prompt time" in printed and "reviews/s" in printed  # the table and the ratios
