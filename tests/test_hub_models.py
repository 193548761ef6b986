"""Hub ids and remote code, as a user's download would be: tiny models placed in a temporary HF cache.

The models are the tiny test models wrapped as repositories with their own code (``auto_map``), so one chain
covers what users do with hub models: train by hub id (``trust_remote_code`` needed and honoured), score the
adapter with ``eval/predict.py`` and ``eval/compare.py`` from the cache offline, and get a report that names a
system whose base cannot be loaded instead of no report at all. Every step runs as a user runs it, in its own
process with ``HF_HOME`` set, so the cache and the dynamic-module folder are the temporary ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CAUSAL_ID, ROBERTA_ID = "reviewtune-test/tiny-remote-llama", "reviewtune-test/tiny-remote-roberta"

CAUSAL_CODE = {
    "configuration_rt.py": "from transformers import LlamaConfig\n\n\nclass RtLlamaConfig(LlamaConfig):\n"
    "    model_type = 'rt-llama'\n",
    "modeling_rt.py": "from transformers import LlamaForCausalLM\n\nfrom .configuration_rt import RtLlamaConfig\n\n\n"
    "class RtLlamaForCausalLM(LlamaForCausalLM):\n    config_class = RtLlamaConfig\n",
}
ROBERTA_CODE = {
    "configuration_rt.py": "from transformers import RobertaConfig\n\n\nclass RtRobertaConfig(RobertaConfig):\n"
    "    model_type = 'rt-roberta'\n",
    "modeling_rt.py": "from transformers import RobertaForSequenceClassification\n\n"
    "from .configuration_rt import RtRobertaConfig\n\n\n"
    "class RtRobertaForSequenceClassification(RobertaForSequenceClassification):\n"
    "    config_class = RtRobertaConfig\n",
}


def place_in_hf_cache(hf_home: Path, repo_id: str, model_dir: Path, code: dict[str, str], auto_map: dict) -> Path:
    """Lay ``model_dir`` out as ``from_pretrained(repo_id)`` finds a download, with remote code added."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot, ignore=shutil.ignore_patterns("pretrain_*"))
    config = json.loads((snapshot / "config.json").read_text())
    model_type = code["configuration_rt.py"].split("model_type = '")[1].split("'")[0]
    architecture = auto_map[next(k for k in auto_map if k != "AutoConfig")].split(".")[1]
    config.update(model_type=model_type, auto_map=auto_map, architectures=[architecture])
    (snapshot / "config.json").write_text(json.dumps(config))
    for name, text in code.items():
        (snapshot / name).write_text(text)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def _sentiment_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good, bad = ["배송이 빠르고 좋아요", "디자인이 예뻐요 만족해요"], ["품질이 별로예요", "사이즈가 안 맞아 실망이에요"]
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        text = rng.choice(good if label else bad)
        rows.append({"id": f"{seed}-{i}", "text": text, "sentiment": label, "aspects": None, "score": None})
    return rows


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_causal_dir, tiny_roberta_dir):
    """(environment with HF_HOME set and offline, data folder) for the user's commands."""
    root = tmp_path_factory.mktemp("hub")
    hf_home = root / "hf_home"
    place_in_hf_cache(hf_home, CAUSAL_ID, tiny_causal_dir, CAUSAL_CODE, {
        "AutoConfig": "configuration_rt.RtLlamaConfig", "AutoModelForCausalLM": "modeling_rt.RtLlamaForCausalLM"})
    place_in_hf_cache(hf_home, ROBERTA_ID, tiny_roberta_dir, ROBERTA_CODE, {
        "AutoConfig": "configuration_rt.RtRobertaConfig",
        "AutoModelForSequenceClassification": "modeling_rt.RtRobertaForSequenceClassification"})  # fmt: skip
    data = root / "data"
    data.mkdir()
    for split, n, seed in (("train", 48, 1), ("test", 12, 3)):
        rows = _sentiment_records(n, seed)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    return env, data


def _run(env: dict, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train_args(data: Path, out: Path, model_id: str) -> list[str]:
    return [
        *("--model_name_or_path", model_id, "--output_dir", str(out), "--task", "sentiment"),
        *("--train_file", str(data / "train.jsonl"), "--test_file", str(data / "test.jsonl")),
        *("--max_steps", "3", "--per_device_train_batch_size", "8", "--logging_steps", "1"),
    ]


@pytest.fixture(scope="module")
def hub_runs(hub, tmp_path_factory):
    env, data = hub
    out = tmp_path_factory.mktemp("hub_runs")
    sft = _run(env, "recipes/sft_qlora.py", *_train_args(data, out / "sft", CAUSAL_ID), "--max_length", "128",
               "--save_steps", "100", "--num_sample_predictions", "2",
               "--trust_remote_code", "true")  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-3000:]
    clf = _run(env, "recipes/classify_roberta.py", *_train_args(data, out / "clf", ROBERTA_ID), "--use_peft", "true",
               "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
               "--early_stopping_patience", "0", "--num_sample_predictions", "0",
               "--trust_remote_code", "true")  # fmt: skip
    assert clf.returncode == 0, clf.stderr[-3000:]
    return out / "sft", out / "clf"


@pytest.mark.parametrize("recipe_name, repo_id", [("sft_qlora", CAUSAL_ID), ("classify_roberta", ROBERTA_ID)])
def test_remote_code_is_refused_unless_asked(hub, tmp_path, recipe_name, repo_id):
    env, data = hub
    snapshot = Path(env["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
    local_copy = shutil.copytree(snapshot, tmp_path / "model")  # a local path: no cache involved, in this process
    spec = importlib.util.spec_from_file_location(f"{recipe_name}_remote", ROOT / "recipes" / f"{recipe_name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    with pytest.raises(ValueError, match="trust_remote_code"):
        recipe.main(_train_args(data, tmp_path / "run", str(local_copy)))


def test_hub_runs_record_the_commit_and_the_remote_code_setting(hub_runs):
    for run in hub_runs:
        summary = json.loads((run / "run_summary.json").read_text())
        assert summary["base_model"] in (CAUSAL_ID, ROBERTA_ID)
        assert summary["base_model_hash"] == f"hub:{COMMIT}"
        assert summary["config"]["trust_remote_code"] is True


def test_predict_scores_adapters_on_hub_bases_offline(hub, hub_runs, tmp_path):
    env, data = hub
    for run, scoring in ((hub_runs[0], "loglik"), (hub_runs[1], None)):
        out = tmp_path / f"{run.name}-{scoring}.jsonl"
        extra = ("--scoring", scoring) if scoring else ()
        proc = _run(env, "eval/predict.py", "--run", str(run), "--input", str(data / "test.jsonl"), "--out", str(out),
                    *extra)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        predictions = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(predictions) == 12
        assert all(p["label"] in (0, 1) and abs(sum(p["probs"]) - 1) < 1e-6 for p in predictions)


def _compare(env: dict, data: Path, runs, out: Path) -> subprocess.CompletedProcess:
    return _run(env, "eval/compare.py", "--task", "sentiment", "--test_file", str(data / "test.jsonl"),
                "--train_file", str(data / "train.jsonl"), "--generative_runs", str(runs[0]),
                "--classifier_runs", str(runs[1]), "--out_dir", str(out), "--n_resamples", "0",
                "--latency_sample", "2", "--baselines", "majority", "--isolate", "false")  # fmt: skip


def test_compare_scores_hub_runs_and_names_the_ones_it_cannot_load(hub, hub_runs, tmp_path):
    env, data = hub
    proc = _compare(env, data, hub_runs, tmp_path / "report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {s["name"] for s in report["systems"]} == {"sft/generate", "sft/loglik", "sft/constrained", "clf",
                                                      "baseline/majority"}  # fmt: skip
    assert report["failed_systems"] == []

    empty_cache = {**env, "HF_HOME": str(tmp_path / "empty_hf_home")}  # the bases are gone: the runs cannot load
    proc = _compare(empty_cache, data, hub_runs, tmp_path / "report_without_bases")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report_without_bases" / "report.json").read_text())
    # The LoRA classifier is scored from its merged/ model (full weights, its own code copied beside them).
    assert {s["name"] for s in report["systems"]} == {"clf", "baseline/majority"}
    failed = {f["name"]: f["error"] for f in report["failed_systems"]}
    assert set(failed) == {"sft/generate", "sft/loglik", "sft/constrained"}
    assert all(CAUSAL_ID in error and "HF cache" in error for error in failed.values()), failed
    markdown = (tmp_path / "report_without_bases" / "report.md").read_text()
    assert "Not scored: **sft/generate**" in markdown and "Not scored: **sft/loglik**" in markdown
