"""Selecting what to label next (each strategy on a constructed pool, the CLI on tiny runs) and merging labels back."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from reviewtune.analysis.highlights import encoder_outputs, keyword_probabilities
from reviewtune.analysis.selection import (
    entropy_uncertainty,
    keyword_uncertainty,
    least_confidence,
    load_pool,
    margin_uncertainty,
    outlier_distance,
    proportional_quotas,
    rare_share,
    rare_tokens,
    select,
)
from reviewtune.atomic import atomic_write_json, atomic_write_jsonl, read_json
from reviewtune.cli import run_cli
from reviewtune.evaluation.systems import load_system
from reviewtune.records import make_record, read_records, write_records
from reviewtune.tasks import get_task
from reviewtune.training.run_directory import save_token_frequencies
from reviewtune.training.thresholds import save_thresholds

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TEXTS = ["배송 빠르고 좋아요", "사이즈 잘 맞아요", "색상 예뻐요 만족해요", "배송 느려요 별로예요"] * 5


def _cli(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the CLI's annotations through sys.modules
    spec.loader.exec_module(module)
    return lambda argv: run_cli(module.main, argv)  # as the script's __main__ runs it: user errors exit 2


select_cli = _cli("select_for_labeling_cli", ROOT / "data_prep" / "select_for_labeling.py")
merge_cli = _cli("merge_labels_cli", ROOT / "data_prep" / "merge_labels.py")


def ranking(scores: np.ndarray) -> list[int]:
    return [i for i, _ in select({"s": np.asarray(scores)}, len(scores))]


# ---------------------------------------------------------------------------------- score functions


def test_normalised_least_confidence_known_value():
    assert least_confidence(np.array([[0.6439, 0.2, 0.1, 0.0561]]))[0] == pytest.approx(0.4748, abs=5e-5)
    np.testing.assert_allclose(least_confidence(np.array([[1.0, 0.0], [0.5, 0.5]])), [0.0, 1.0])
    assert least_confidence(np.array([[0.25] * 4]))[0] == pytest.approx(1.0)  # uniform: most uncertain


def test_single_label_strategies_rank_a_constructed_pool():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # sure
            [0.40, 0.35, 0.25],
            [0.34, 0.33, 0.33],  # nearly uniform
            [0.60, 0.40, 0.00],
            [0.50, 0.50, 0.00],  # a tie between two labels: margin's favourite, not entropy's
        ]
    )
    assert ranking(least_confidence(probs)) == [2, 1, 4, 3, 0]
    assert ranking(margin_uncertainty(probs)) == [4, 2, 1, 3, 0]
    assert ranking(entropy_uncertainty(probs)) == [2, 1, 4, 3, 0]
    np.testing.assert_allclose(entropy_uncertainty(np.array([[1 / 3] * 3, [1.0, 0, 0]])), [1.0, 0.0], atol=1e-9)


def test_keyword_uncertainty_is_closeness_to_the_threshold():
    probs = np.array([[0.02, 0.97], [0.45, 0.10], [0.90, 0.20], [0.50, 0.50]])
    scores, which = keyword_uncertainty(probs)
    assert ranking(scores) == [3, 1, 2, 0]
    assert which[1] == 0 and which[2] == 1  # the most uncertain keyword of each record
    np.testing.assert_allclose(scores, [0.06, 0.9, 0.4, 1.0])
    # A tuned threshold moves the uncertain point: 0.3 is now on the boundary, 0.5 is not.
    scores, _ = keyword_uncertainty(np.array([[0.3, 0.0], [0.5, 0.0]]), thresholds=np.array([0.3, 0.5]))
    np.testing.assert_allclose(scores, [1.0, 1 - 0.2 / 0.7])


def test_rare_share_counts_rare_absent_and_unknown_tokens():
    freqs = {"a": 100, "b": 2, "c": 50}
    shares = rare_share([["a", "c"], ["a", "b"], ["x", "y"], ["a", "<unk>"], []], freqs, max_count=2, unk="<unk>")
    np.testing.assert_allclose(shares, [0.0, 0.5, 1.0, 0.5, 0.0])
    assert ranking(shares)[0] == 2


def test_outliers_rank_the_point_far_from_every_cluster_first():
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.normal(a, 0.03, 8) for a in (0.0, 2.1, 4.2)] + [[1.05]])  # last: between clusters
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(1, 5, (len(angles), 1))  # norm is ignored
    dist, clusters = outlier_distance(emb, n_clusters=3, seed=0)
    assert ranking(dist)[0] == len(angles) - 1
    assert len(set(clusters[:8])) == 1 and len(set(clusters)) == 3


def test_proportional_quotas_and_interleaving():
    assert proportional_quotas({"A": 6, "B": 3, "C": 1}, 5) == {"A": 3, "B": 2, "C": 0}
    assert proportional_quotas({"A": 1, "B": 1}, 5) == {"A": 1, "B": 1}  # never more than a group holds
    assert sum(proportional_quotas({"A": 7, "B": 5, "C": 3, "D": 1}, 9).values()) == 9
    groups = ["A"] * 6 + ["B"] * 3 + ["C"]
    scores = np.arange(10, 0, -1, dtype=float)  # A's records score highest: without groups A would take all 5
    picks = select({"s": scores}, 5, groups)
    assert [groups[i] for i, _ in picks] == ["A", "B", "A", "B", "A"]
    assert [i for i, _ in picks] == [0, 6, 1, 7, 2]


def test_strategies_take_turns():
    s1, s2 = np.array([0.9, 0.8, 0.1, 0.0]), np.array([0.9, 0.0, 0.5, 0.4])
    assert select({"s1": s1, "s2": s2}, 3) == [(0, "s1"), (2, "s2"), (1, "s1")]


# --------------------------------------------------------------------------------------- tiny runs


def _classifier(base: Path, out: Path, num_labels: int, id2label: dict, multi: bool = False) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    problem = "multi_label_classification" if multi else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=num_labels, id2label=id2label, problem_type=problem
    )
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(base)
    tok.save_pretrained(out)
    save_token_frequencies(out, TRAIN_TEXTS, tok)
    return out


def _summary(run: Path, kind: str, task, **extra) -> Path:
    task.save(run)
    atomic_write_json(run / "run_summary.json", {"kind": kind, "task": task.name, "quantization": "none", **extra})
    return run


@pytest.fixture(scope="module")
def runs(tiny_roberta_dir, tiny_causal_dir, tmp_path_factory) -> dict[str, Path]:
    """Untrained-head classifier runs (sentiment; the two-model aspect system with shuffled keyword order)
    and generative runs (the tiny causal LM as a full model) for sentiment and aspects."""
    from transformers import AutoTokenizer

    made = {}
    sentiment = get_task("sentiment")
    run = tmp_path_factory.mktemp("clf_sentiment")
    made["clf_sentiment"] = _summary(
        _classifier(tiny_roberta_dir, run, 2, dict(enumerate(sentiment.label_names))), "classifier", sentiment
    )
    aspects = get_task("aspects")
    run = tmp_path_factory.mktemp("clf_aspects")
    shuffled = aspects.keywords[::-1]  # model label order differs from the task's keyword order
    kw = _classifier(tiny_roberta_dir, run / "keywords", len(shuffled), dict(enumerate(shuffled)), multi=True)
    save_thresholds(kw, {k: 0.5 for k in shuffled}, tuned=False)
    _classifier(tiny_roberta_dir, run / "keyword_sentiment", 5, dict(enumerate(aspects.polarity_names)))
    save_token_frequencies(run, TRAIN_TEXTS, AutoTokenizer.from_pretrained(tiny_roberta_dir))
    components = {"keywords": "keywords", "keyword_sentiment": "keyword_sentiment"}
    made["clf_aspects"] = _summary(run, "classifier", aspects, components=components)
    for name in ("sentiment", "aspects"):
        run = tmp_path_factory.mktemp(f"gen_{name}")
        shutil.copytree(tiny_causal_dir, run, dirs_exist_ok=True)
        save_token_frequencies(run, TRAIN_TEXTS, AutoTokenizer.from_pretrained(tiny_causal_dir))
        made[f"gen_{name}"] = _summary(run, "generative", get_task(name))
    return made


@pytest.fixture()
def pool_file(tmp_path) -> Path:
    texts = ["배송 빠르고 좋아요", "사이즈 잘 맞아요", "퀄리티 미쳤음 ㅋㅋ 강추합니다", "색상 예뻐요", "배송 느려요",
             "원단이 얇고 보풀 생김", "만족해요", "가격 대비 괜찮아요"]  # fmt: skip
    rows = [make_record(f"p{i}", t, meta={"shop": "A" if i < 5 else "B"}) for i, t in enumerate(texts)]
    rows.append(make_record("p0", "중복 아이디"))  # duplicate id
    rows.append(make_record("p_empty", "   "))  # empty text
    rows.append(make_record("t1", "이미 라벨 있음"))  # already labelled (in --exclude)
    write_records(tmp_path / "pool.jsonl", rows)
    write_records(tmp_path / "train.jsonl", [make_record("t1", "이미 라벨 있음", sentiment=1)])
    return tmp_path / "pool.jsonl"


def test_load_pool_counts_every_dropped_row(pool_file):
    kept, dropped, read = load_pool(pool_file, [pool_file.parent / "train.jsonl"])
    assert dropped == {"duplicate_id": 1, "empty_text": 1, "already_labelled": 1}
    assert read == len(kept) + sum(dropped.values()) == 11


def test_text_pool_one_review_per_line(tmp_path):
    path = tmp_path / "unlabelled.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("첫 리뷰\n\n셋째 리뷰\n")
    kept, dropped, read = load_pool(path)
    assert [(r["id"], r["text"], r["sentiment"]) for r in kept] == [("unlabelled-1", "첫 리뷰", None),
                                                                   ("unlabelled-3", "셋째 리뷰", None)]  # fmt: skip
    assert dropped == {"empty_text": 1} and read == 3


def test_rare_tokens_of_a_run(runs):
    system = load_system(runs["clf_sentiment"])
    shares, words = rare_tokens(system, ["배송 빠르고 좋아요", "퀄리티 미쳤음 ㅋㅋ 강추합니다"], max_count=2)
    assert shares[0] == 0.0 and shares[1] > 0.5  # training words vs words the training text never had
    assert "미쳤음" in words[1] and words[0] == []


def test_keyword_probabilities_follow_the_task_order(runs):
    system = load_system(runs["clf_aspects"])
    texts = ["배송 빠르고 좋아요", "사이즈 잘 맞아요"]
    probs, thresholds = keyword_probabilities(system, texts)
    logits, _ = encoder_outputs(system.components["keywords"], texts)
    order = [system.task.keywords[::-1].index(k) for k in system.task.keywords]
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits[:, order])))
    assert probs.shape == (2, len(system.task.keywords)) and thresholds.tolist() == [0.5] * probs.shape[1]


def test_select_cli_classifier(runs, pool_file, tmp_path, capsys):
    out = tmp_path / "chosen.jsonl"
    train = str(tmp_path / "train.jsonl")
    args = ["--run", str(runs["clf_sentiment"]), "--pool", str(pool_file), "--k", "4", "--out", str(out),
            "--strategy", "least_confidence,rare", "--group-by", "shop", "--exclude", train]  # fmt: skip
    assert select_cli(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["selection"]["rank"] for r in rows] == [1, 2, 3, 4]
    assert [r["selection"]["group"] for r in rows].count("A") == 3  # 5 of 8 kept records are shop A: 4 * 5/8
    assert {r["selection"]["strategy"] for r in rows} == {"least_confidence", "rare"}
    assert all(set(r["selection"]["scores"]) == {"least_confidence", "rare"} for r in rows)
    assert all(r["selection"]["details"]["predicted"] in ("부정", "긍정") for r in rows)
    assert len({r["id"] for r in rows}) == 4
    report = read_json(tmp_path / "chosen.report.json")
    dropped = {"duplicate_id": 1, "empty_text": 1, "already_labelled": 1}
    assert report["pool"] == {"read": 11, "kept": 8, "dropped": dropped, "scored": 8}
    assert report["by_group"] == {"A": 3, "B": 1}
    # Shop A's best "rare" record (words the training text never had) is picked, by rare or before it.
    assert "p2" in [r["id"] for r in rows if r["selection"]["group"] == "A"]
    capsys.readouterr()
    bad = [
        "--run",
        str(runs["clf_sentiment"]),
        "--pool",
        str(pool_file),
        "--k",
        "2",
        "--out",
        str(tmp_path / "x.jsonl"),
    ]
    assert select_cli([*bad, "--strategy", "keyword_uncertainty"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keyword sigmoid" in err[0] and "classifier sentiment run" in err[0]
    assert select_cli([*bad, "--strategy", "proportional"]) == 2
    assert "--group_by" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_select_cli_aspects_and_generative(runs, pool_file, tmp_path, capsys):
    out = tmp_path / "chosen.jsonl"
    common = ["--pool", str(pool_file), "--k", "3", "--out", str(out)]
    assert select_cli(["--run", str(runs["clf_aspects"]), *common, "--strategy", "keyword_uncertainty,outliers"]) == 0
    rows = read_records(out)
    assert all(r["selection"]["details"]["keyword"] in get_task("aspects").keywords for r in rows)
    scores = [r["selection"]["scores"]["keyword_uncertainty"] for r in rows if r["selection"]["strategy"] != "outliers"]
    assert scores == sorted(scores, reverse=True)
    assert select_cli(["--run", str(runs["clf_aspects"]), *common, "--strategy", "entropy"]) == 2
    assert select_cli(["--run", str(runs["gen_aspects"]), *common, "--strategy", "keyword_uncertainty"]) == 2
    assert "generative aspects run" in capsys.readouterr().err
    assert select_cli(["--run", str(runs["gen_aspects"]), *common, "--strategy", "outliers", "--n_clusters", "2"]) == 0
    assert {r["selection"]["details"]["cluster"] for r in read_records(out)} <= {0, 1}
    assert select_cli(["--run", str(runs["gen_aspects"]), *common]) == 0  # default for a generative aspects run
    assert {r["selection"]["strategy"] for r in read_records(out)} == {"rare"}
    assert select_cli(["--run", str(runs["gen_sentiment"]), *common, "--strategy", "margin"]) == 0  # loglik probs
    margins = [r["selection"]["scores"]["margin"] for r in read_records(out)]
    assert margins == sorted(margins, reverse=True) and all(0 <= m <= 1 for m in margins)


# ------------------------------------------------------------------------------------------- merging


def test_merge_refuses_duplicates_and_counts_every_row(tmp_path, capsys):
    train = [make_record(f"t{i}", f"리뷰 {i}", sentiment=i % 2) for i in range(3)]
    write_records(tmp_path / "train.jsonl", train)
    labelled = [
        {**make_record("n1", "새 리뷰 하나", sentiment=1), "selection": {"rank": 1, "strategy": "margin"}},
        make_record("n2", "새 리뷰 둘", sentiment=0),
        make_record("n3", "라벨을 안 붙임"),  # the labeller skipped it
        make_record("t0", "고친 라벨", sentiment=1),  # already in train
    ]
    atomic_write_jsonl(tmp_path / "round1.jsonl", labelled)
    atomic_write_jsonl(tmp_path / "round1b.jsonl", [make_record("n1", "같은 리뷰", sentiment=0)])
    out = tmp_path / "merged.jsonl"
    args = ["--train", str(tmp_path / "train.jsonl"), "--labelled", str(tmp_path / "round1.jsonl"),
            str(tmp_path / "round1b.jsonl"), "--task", "sentiment", "--out", str(out)]  # fmt: skip
    assert merge_cli(args) == 2
    err = capsys.readouterr().err
    assert "1 labelled id(s) already in the training records (e.g. t0)" in err
    assert "1 repeated across the labelled files (e.g. n1)" in err and not out.exists()

    assert merge_cli([*args, "--on_duplicate", "skip"]) == 0
    merged = read_records(out)
    assert [r["id"] for r in merged] == ["t0", "t1", "t2", "n1", "n2"]
    assert "selection" not in merged[3] and merged[3]["meta"]["labelled_in"] == "round1.jsonl"
    report = read_json(tmp_path / "merged.merge_report.json")
    r1, r1b = report["labelled"]["round1.jsonl"], report["labelled"]["round1b.jsonl"]
    assert r1 == {"read": 4, "added": 2, "replaced": 0, "dropped": {"missing_label": 1, "duplicate_id_in_train": 1}}
    assert r1b == {"read": 1, "added": 0, "replaced": 0, "dropped": {"duplicate_id_in_labelled": 1}}
    assert report["duplicates"] == {"in_train": 1, "in_labelled": 1} and report["out"] == 5

    assert merge_cli([*args, "--on_duplicate", "replace", "--new_first"]) == 0
    merged = read_records(out)
    assert [r["id"] for r in merged] == ["n1", "n2", "t0", "t1", "t2"]
    assert merged[2]["text"] == "고친 라벨" and merged[2]["sentiment"] == 1
    assert read_json(tmp_path / "merged.merge_report.json")["replaced"] == 1
