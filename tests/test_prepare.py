"""The data CLI (``data_prep/prepare.py``), ``reviewtune.data.prepare`` outputs, splits, the embedded default data."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reviewtune.atomic import read_json, read_jsonl
from reviewtune.data.prepare import DataError, prepare
from reviewtune.data.splits import parse_split_spec
from reviewtune.records import read_records
from reviewtune.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_prep" / "prepare.py"


def _cli():
    spec = importlib.util.spec_from_file_location("prepare_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the CLI's annotations through sys.modules
    spec.loader.exec_module(module)
    return module.main


def nsmc_file(path: Path, n: int, positive_share: float = 0.5, extra: str = "") -> Path:
    """An NSMC-style TSV with ``n`` rows (labels in a fixed, imbalanced pattern) plus ``extra`` raw lines."""
    n_pos = round(n * positive_share)
    lines = [f"{i}\t리뷰 번호 {i} {'좋아요' if i < n_pos else '별로'}\t{int(i < n_pos)}" for i in range(n)]
    path.write_text("id\tdocument\tlabel\n" + "\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def exact_instruction(record: dict, task) -> str:
    answer = {"sentiment": lambda r: task.label_names[r["sentiment"]]}[task.name](record)
    return f"###입력: {record['text']}\n###명령어: {task.instruction}\n###출력: {answer}"


def test_cli_writes_records_instructions_and_report(tmp_path):
    src = nsmc_file(tmp_path / "r.txt", 20, extra="20\t\t1\n21\t빈 라벨\t\n")
    out = tmp_path / "out"
    assert _cli()(["--source", "nsmc", "--input", str(src), "--task", "sentiment", "--out", str(out)]) == 0
    report = read_json(out / "prep_report.json")
    assert (report["read"], report["kept"], report["dropped"]) == (22, 20, {"empty_text": 1, "missing_label": 1})
    assert report["read"] == report["kept"] + sum(report["dropped"].values())
    assert {"info", "provenance", "labels", "task"} <= set(report)
    assert report["provenance"]["data_files"]["input"]["path"] == str(src)
    assert report["provenance"]["data_files"]["records.jsonl"]["sha256"]
    records = read_records(out / "records.jsonl")
    instructions = read_jsonl(out / "instructions.jsonl")
    assert len(records) == len(instructions) == 20
    task = get_task("sentiment")
    for rec, inst in zip(records, instructions, strict=True):
        assert set(inst) == {"id", "prompt", "completion"}
        assert inst["id"] == rec["id"]
        assert inst["prompt"] + inst["completion"] == exact_instruction(rec, task)


def test_cli_options_with_dashes_and_custom_instruction(tmp_path):
    src = tmp_path / "shop.csv"
    src.write_text("body,stars,shop\n좋아요,1,무신사\n별로,0,에이블리\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--source", "csv", "--input", str(src), "--task", "sentiment", "--out", str(out), "--text-column", "body",
            "--label-column", "stars", "--meta-columns", "shop", "--instruction", "어때?", "--strict"]  # fmt: skip
    assert _cli()(argv) == 0
    assert read_records(out / "records.jsonl")[0]["meta"] == {"shop": "무신사"}
    inst = read_jsonl(out / "instructions.jsonl")[1]
    assert inst["prompt"] + inst["completion"] == "###입력: 별로\n###명령어: 어때?\n###출력: 부정"


def test_cli_script_reports_bad_encoding(tmp_path):
    """The script as a user runs it: a CP949 file read as UTF-8 is exit 2 and one message, nothing written."""
    src = nsmc_file(tmp_path / "r.txt", 5)
    bad = tmp_path / "cp949.txt"
    bad.write_bytes(src.read_text(encoding="utf-8").encode("cp949"))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(SCRIPT), "--source", "nsmc", "--task", "sentiment", "--input", str(bad), "--out"]
    err = subprocess.run([*cmd, str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert err.returncode == 2, err.stderr
    assert f"error: {bad}: not valid utf-8: byte 20 (line 2)" in err.stderr and "--encoding cp949" in err.stderr
    assert len(err.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_split_is_stratified_seeded_and_complete(tmp_path):
    src = nsmc_file(tmp_path / "r.txt", 200, positive_share=0.7)
    report = prepare("nsmc", src, "sentiment", tmp_path / "a", split="train=0.8,validation=0.1,test=0.1", seed=1)
    assert {k: v["kept"] for k, v in report["splits"].items()} == {"train": 160, "validation": 20, "test": 20}
    assert report["info"]["split_stratified"] is True
    splits = {s: read_records(tmp_path / "a" / s / "records.jsonl") for s in ("train", "validation", "test")}
    for name, records in splits.items():
        share = sum(r["sentiment"] for r in records) / len(records)
        assert share == pytest.approx(0.7, abs=0.011), name  # stratified: 112/160, 14/20, 14/20
        assert report["splits"][name]["labels"] == {
            "부정": round(len(records) * 0.3),
            "긍정": round(len(records) * 0.7),
        }
        assert [int(r["id"]) for r in records] == sorted(int(r["id"]) for r in records)  # input order kept
        assert len(read_jsonl(tmp_path / "a" / name / "instructions.jsonl")) == len(records)
    ids = [r["id"] for rs in splits.values() for r in rs]
    assert sorted(ids, key=int) == [str(i) for i in range(200)]  # nothing lost, nothing twice
    assert not (tmp_path / "a" / "records.jsonl").exists()
    prepare("nsmc", src, "sentiment", tmp_path / "b", split="train=0.8,validation=0.1,test=0.1", seed=1)
    prepare("nsmc", src, "sentiment", tmp_path / "c", split="train=0.8,validation=0.1,test=0.1", seed=2)
    same = (tmp_path / "a" / "test" / "records.jsonl").read_bytes() == (
        tmp_path / "b" / "test" / "records.jsonl"
    ).read_bytes()
    other = (tmp_path / "a" / "test" / "records.jsonl").read_bytes() == (
        tmp_path / "c" / "test" / "records.jsonl"
    ).read_bytes()
    assert same and not other


def test_split_reports_duplicates_and_overlap_without_dropping(tmp_path):
    lines = "".join(f"{i}\t같은 리뷰\t1\n" for i in range(10)) + "".join(
        f"{i}\t다른 리뷰 {i}\t0\n" for i in range(10, 20)
    )
    src = tmp_path / "dup.txt"
    src.write_text("id\tdocument\tlabel\n" + lines, encoding="utf-8")
    report = prepare("nsmc", src, "sentiment", tmp_path / "o", split="train=0.5,test=0.5", seed=0)
    assert report["kept"] == 20 and report["dropped"] == {}
    assert report["info"]["duplicate_texts"] == 9
    assert report["info"]["train_test_overlap"] == 5  # the five copies in test also occur in train
    assert report["info"]["split_overlap"] == {"train/test": 5}


def test_split_of_a_tiny_or_skewed_set_falls_back(tmp_path):
    src = nsmc_file(tmp_path / "r.txt", 6, positive_share=1 / 6)
    report = prepare("nsmc", src, "sentiment", tmp_path / "o", split="train=0.5,validation=0.25,test=0.25")
    assert sum(v["kept"] for v in report["splits"].values()) == 6
    assert report["info"]["split_stratified"] is False


@pytest.mark.parametrize("spec", ["train=0.8,test=0.1", "train=0.8,train=0.2", "train", "train=x,test=1", "=0.5,b=0.5"])
def test_bad_split_specs(spec):
    with pytest.raises(DataError, match="bad --split"):
        parse_split_spec(spec)


def test_aspects_split_and_regression_split(tmp_path):
    rows = [{"text": f"리뷰 {i}", "aspects": [{"keyword": "배송", "polarity": (i % 5) - 2}], "score": float(i % 7)}
            for i in range(50)]  # fmt: skip
    src = tmp_path / "r.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    report = prepare("jsonl", src, "aspects", tmp_path / "a", split="train=0.6,test=0.4")
    assert {k: v["kept"] for k, v in report["splits"].items()} == {"train": 30, "test": 20}
    inst = read_jsonl(tmp_path / "a" / "test" / "instructions.jsonl")[0]
    assert inst["prompt"].endswith("###명령어: 리뷰를 분석해줘\n###출력:") and inst["completion"].startswith(" 배송")
    report = prepare("jsonl", src, "regression", tmp_path / "r", split="train=0.6,test=0.4")
    assert report["splits"]["test"]["kept"] == 20 and report["labels"]["n"] == 50


def test_synthetic_always_writes_three_splits(tmp_path):
    report = prepare("synthetic", None, "aspects", tmp_path / "s", n=150, seed=0)
    assert set(report["splits"]) == {"train", "validation", "test"}
    assert report["read"] == report["kept"] == 150
    for split in ("train", "validation", "test"):
        records = read_records(tmp_path / "s" / split / "records.jsonl")
        instructions = read_jsonl(tmp_path / "s" / split / "instructions.jsonl")
        assert len(records) == len(instructions) == report["splits"][split]["kept"] > 0
    with pytest.raises(DataError, match="do not pass --split"):
        prepare("synthetic", None, "aspects", tmp_path / "x", n=150, split="train=0.5,test=0.5")


def test_default_data_dir_is_built_once(tmp_path, monkeypatch):
    from reviewtune import defaults

    monkeypatch.setenv("REVIEWTUNE_HOME", str(tmp_path / "home"))
    results, calls = [], collections.Counter()
    real_prepare = __import__("reviewtune.data.prepare", fromlist=["prepare"]).prepare

    def counting_prepare(*args, **kwargs):
        calls["prepare"] += 1
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr("reviewtune.data.prepare.prepare", counting_prepare)
    threads = [
        threading.Thread(target=lambda: results.append(defaults.default_data_dir(seed=0, n=120))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["prepare"] == 1 and len(set(results)) == 1
    d = results[0]
    assert d.parent == tmp_path / "home" / "data" and d.name.startswith("synthetic-")
    report = read_json(d / "prep_report.json")
    assert report["source"] == "synthetic" and report["task"]["name"] == "aspects" and report["read"] == 120
    for split in ("train", "validation", "test"):
        assert Path(defaults.default_file(split, n=120)).is_file()
        assert (d / split / "instructions.jsonl").is_file()
    assert calls["prepare"] == 1
    assert not [p for p in d.parent.iterdir() if ".tmp-" in p.name]
    assert defaults.default_data_dir(seed=1, n=120) != d  # another seed, another directory
    with pytest.raises(ValueError, match="unknown split"):
        defaults.default_file("dev")
