"""The usual user mistakes, across the CLIs: each gives a correct result or one line on stderr and exit code 2.

Every case runs the script's ``main`` as its ``__main__`` does (``reviewtune.cli.run_cli``), in this process; the
recipes' argument errors also run as a user's command line (a subprocess) once.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reviewtune.cli import run_cli
from reviewtune.records import read_records

ROOT = Path(__file__).resolve().parents[1]
LONG = "배송이 빨라요 " * 30_000  # ~210,000 characters: over csv's default field limit of 131,072


def _script(relative: str):
    spec = importlib.util.spec_from_file_location(f"cli_{Path(relative).stem}", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the CLI's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return {
        "prepare": _script("data_prep/prepare.py").main,
        "predict": _script("eval/predict.py").main,
        "compare": _script("eval/compare.py").main,
        "select": _script("data_prep/select_for_labeling.py").main,
        "sft": _script("recipes/sft_qlora.py").main,
        "classify": _script("recipes/classify_roberta.py").main,
    }


def run(cli, name: str, *argv, capsys) -> tuple[int, str, str]:
    try:
        code = run_cli(cli[name], [str(a) for a in argv])
    except SystemExit as e:  # argument errors end the process, as argparse does
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *words: str) -> None:
    """Exit code 2 and one error line, the last thing on stderr (progress bars before it are fine), no traceback."""
    lines = [line.split("\r")[-1] for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in errors[0], (word, errors[0])


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def stars_csv(path: Path, stars: list[int]) -> Path:
    rows = [f"{i},{'좋아요' if s >= 4 else '별로예요'} {i},{s}" for i, s in enumerate(stars)]
    return write(path, "id,리뷰,평점\n" + "\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------- prepare: labels


def test_readme_csv_example_reads_star_ratings_by_a_stated_scheme(cli, tmp_path, capsys):
    src = stars_csv(tmp_path / "reviews.csv", [1, 2, 3, 4, 5] * 4)
    common = ("--source", "csv", "--input", src, "--text-column", "리뷰", "--label-column", "평점")
    code, out, err = run(cli, "prepare", *common, "--task", "sentiment", "--out", tmp_path / "bin", capsys=capsys)
    assert code == 0, err
    assert "1-5 stars: 1-2 부정, 4-5 긍정, 3 dropped" in out and "detected" in out
    records = read_records(tmp_path / "bin" / "records.jsonl")
    assert [r["sentiment"] for r in records[:4]] == [0, 0, 1, 1] and len(records) == 16
    report = json.loads((tmp_path / "bin" / "prep_report.json").read_text())
    assert report["dropped"] == {"rating_out_of_scheme": 4} and report["read"] == 20
    code, _, err = run(cli, "prepare", *common, "--task", "sentiment5", "--out", tmp_path / "five", capsys=capsys)
    assert code == 0, err
    assert [r["sentiment"] for r in read_records(tmp_path / "five" / "records.jsonl")][:5] == [0, 1, 2, 3, 4]


def test_label_scheme_can_be_named_and_ambiguity_is_one_line(cli, tmp_path, capsys):
    ten = stars_csv(tmp_path / "ten.csv", [1, 4, 5, 8, 9, 10])
    code, out, _ = run(cli, "prepare", "--source", "csv", "--input", ten, "--text_column", "리뷰", "--label_column",
                       "평점", "--task", "sentiment", "--out", tmp_path / "t", capsys=capsys)  # fmt: skip
    assert code == 0 and "NSMC's rule" in out
    assert [r["sentiment"] for r in read_records(tmp_path / "t" / "records.jsonl")] == [0, 0, 1, 1]
    ambiguous = stars_csv(tmp_path / "amb.csv", [1, 2, 3, 4])  # 1..4: five-level classes without 0, or stars?
    code, _, err = run(cli, "prepare", "--source", "csv", "--input", ambiguous, "--text_column", "리뷰",
                       "--label_column", "평점", "--task", "sentiment5", "--out", tmp_path / "a",
                       capsys=capsys)  # fmt: skip
    one_line_error(code, err, "amb.csv", "--label_scheme")
    code, _, err = run(cli, "prepare", "--source", "csv", "--input", ambiguous, "--text_column", "리뷰",
                       "--label_column", "평점", "--task", "sentiment5", "--label_scheme", "stars5", "--out",
                       tmp_path / "a", capsys=capsys)  # fmt: skip
    assert code == 0, err


# ----------------------------------------------------------------------------------------- prepare: the rest


@pytest.mark.parametrize("source", ["csv", "nsmc", "jsonl"])
def test_a_very_long_review_is_kept_whole(cli, tmp_path, capsys, source):
    text = {
        "csv": f"id,text,label\n1,{LONG},1\n2,짧아요,0\n",
        "nsmc": f"id\tdocument\tlabel\n1\t{LONG}\t1\n2\t짧아요\t0\n",
        "jsonl": json.dumps({"id": "1", "text": LONG, "label": 1}, ensure_ascii=False) + "\n"
        + json.dumps({"id": "2", "text": "짧아요", "label": 0}, ensure_ascii=False) + "\n",
    }[source]  # fmt: skip
    src = write(tmp_path / f"long.{source}", text)
    code, _, err = run(cli, "prepare", "--source", source, "--input", src, "--task", "sentiment", "--out",
                       tmp_path / "o", capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert [r["text"] for r in read_records(tmp_path / "o" / "records.jsonl")] == [LONG, "짧아요"]


@pytest.mark.parametrize(
    "source, content",
    [("jsonl", ""), ("csv", "id,text,label\n"), ("nsmc", "id\tdocument\tlabel\n"), ("csv", "")],
    ids=["empty-jsonl", "header-only-csv", "header-only-nsmc", "empty-csv"],
)
def test_an_input_with_no_records_is_an_error(cli, tmp_path, capsys, source, content):
    src = write(tmp_path / f"in.{source}", content)
    code, _, err = run(cli, "prepare", "--source", source, "--input", src, "--task", "sentiment", "--out",
                       tmp_path / "o", capsys=capsys)  # fmt: skip
    one_line_error(code, err, str(src))


def test_paths_that_are_not_what_they_should_be(cli, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", json.dumps({"id": "1", "text": "좋아요", "label": 1}) + "\n")
    code, _, err = run(cli, "prepare", "--source", "jsonl", "--input", tmp_path, "--task", "sentiment", "--out",
                       tmp_path / "o", capsys=capsys)  # fmt: skip
    one_line_error(code, err, "is a directory")
    code, _, err = run(cli, "prepare", "--source", "jsonl", "--input", tmp_path / "nope.jsonl", "--task",
                       "sentiment", "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    one_line_error(code, err, "nope.jsonl", "no such file")
    code, _, err = run(cli, "prepare", "--source", "jsonl", "--input", src, "--task", "sentiment", "--out",
                       src / "out", capsys=capsys)  # fmt: skip  (a file where a folder should be)
    one_line_error(code, err, "in.jsonl")


def test_prepare_into_an_old_output_folder_leaves_no_stale_splits(cli, tmp_path, capsys):
    rows = [json.dumps({"id": str(i), "text": f"리뷰 {i}", "label": i % 2}) for i in range(40)]
    src = write(tmp_path / "in.jsonl", "\n".join(rows) + "\n")
    out = tmp_path / "o"
    common = ("--source", "jsonl", "--input", src, "--task", "sentiment", "--out", out)
    assert run(cli, "prepare", *common, "--split", "train=0.5,validation=0.25,test=0.25", capsys=capsys)[0] == 0
    assert (out / "train" / "records.jsonl").is_file()
    assert run(cli, "prepare", *common, capsys=capsys)[0] == 0
    assert not (out / "train").exists() and not (out / "validation").exists() and not (out / "test").exists()
    assert len(read_records(out / "records.jsonl")) == 40


def test_encodings_and_byte_order_marks_are_read_the_same_by_every_cli(cli, tmp_path, capsys):
    line = json.dumps({"id": "1", "text": "배송 좋아요", "label": 1}, ensure_ascii=False) + "\n"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + line.encode())
    cp949 = write(tmp_path / "cp949.jsonl", line, encoding="cp949")
    for path, extra in ((bom, ()), (cp949, ("--encoding", "cp949"))):
        code, _, err = run(cli, "prepare", "--source", "jsonl", "--input", path, "--task", "sentiment", "--out",
                           tmp_path / path.stem, *extra, capsys=capsys)  # fmt: skip
        assert code == 0, err
    code, _, err = run(cli, "predict", "--run", tmp_path / "no-run", "--input", cp949, "--out", tmp_path / "p.jsonl",
                       capsys=capsys)  # fmt: skip
    one_line_error(code, err, "cp949.jsonl", "--encoding cp949")


# ------------------------------------------------------------------------------------ predict, compare, select


@pytest.fixture(scope="module")
def clf_run(cli, tiny_roberta_dir, tmp_path_factory) -> Path:
    """A two-step sentiment classifier: enough to predict with."""
    d = tmp_path_factory.mktemp("user_errors_run")
    rows = [{"id": str(i), "text": f"{'좋아요' if i % 2 else '별로예요'} {i}", "sentiment": i % 2} for i in range(24)]
    train = write(d / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cli["classify"]([
        "--task", "sentiment", "--train_file", str(train), "--model_name_or_path", str(tiny_roberta_dir),
        "--output_dir", str(d / "run"), "--max_steps", "2", "--use_peft", "false", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "0",
        "--num_sample_predictions", "0", "--max_length", "32",
    ])  # fmt: skip
    return d / "run"


def test_predict_counts_repeated_ids_and_flags_cut_reviews(cli, clf_run, tmp_path, capsys):
    rows = [{"id": "a", "text": "좋아요"}, {"id": "a", "text": "또 a"}, {"id": "b", "text": LONG},
            {"id": "c", "text": ""}]  # fmt: skip
    src = write(tmp_path / "in.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    code, out, err = run(cli, "predict", "--run", clf_run, "--input", src, "--out", tmp_path / "p.jsonl", capsys=capsys)
    assert code == 0, err
    assert "read 4 = kept 2 + dropped 2 (duplicate_id 1, empty_text 1)" in out
    predictions = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["a", "b"]
    assert [p["shortened"] for p in predictions] == [False, True] and "input limit: 1" in out


def test_predict_input_mistakes_are_one_line(cli, clf_run, tmp_path, capsys):
    good = write(tmp_path / "in.jsonl", json.dumps({"id": "1", "text": "좋아요"}, ensure_ascii=False) + "\n")
    cases = [
        (("--input", tmp_path, "--out", tmp_path / "p.jsonl"), "is a directory"),
        (("--input", write(tmp_path / "empty.jsonl", ""), "--out", tmp_path / "p.jsonl"), "no records"),
        (("--input", write(tmp_path / "bad.jsonl", "{not json\n"), "--out", tmp_path / "p.jsonl"), "bad.jsonl:1"),
        (("--input", good, "--out", good / "p.jsonl"), "in.jsonl"),  # the output's folder is a file
        (("--input", good, "--out", tmp_path / "p.jsonl", "--batch_size", "x"), "--batch_size"),
    ]
    for argv, word in cases:
        code, _, err = run(cli, "predict", "--run", clf_run, *argv, capsys=capsys)
        one_line_error(code, err, word)


def test_compare_help_and_repeated_test_ids(cli, clf_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli["compare"](["--help"])
    assert exit_info.value.code == 0 and "--generative_runs" in capsys.readouterr().out
    rows = [{"id": str(i % 10), "text": f"리뷰 {i} {'좋아요' if i % 2 else '별로'}", "sentiment": i % 2}
            for i in range(12)]  # fmt: skip
    test = write(tmp_path / "test.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    config = write(tmp_path / "compare.yaml", "task: sentiment\n")  # no runs but the one given below
    code, _, err = run(cli, "compare", "--config", config, "--test_file", test, "--train_file", test,
                       "--classifier_runs", clf_run, "--baselines", "majority", "--isolate", "false",
                       "--n_resamples", "0", "--latency_sample", "1", "--out_dir", tmp_path / "r",
                       capsys=capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["test_records_dropped"] == {"duplicate_id": 2} and report["n_examples"] == 10


def test_select_with_an_empty_pool_is_one_line(cli, clf_run, tmp_path, capsys):
    pool = write(tmp_path / "pool.txt", "")
    code, _, err = run(cli, "select", "--run", clf_run, "--pool", pool, "--k", "3", "--out", tmp_path / "s.jsonl",
                       capsys=capsys)  # fmt: skip
    one_line_error(code, err, "pool.txt", "no records")


# ---------------------------------------------------------------------------------------------------- recipes


def test_recipe_argument_mistakes_are_one_line(cli, tmp_path, capsys):
    for name in ("sft", "classify"):
        code, _, err = run(cli, name, "--model_name_or_path", tmp_path / "nonexistent", "--output_dir", tmp_path / "o",
                           capsys=capsys)  # fmt: skip
        one_line_error(code, err, "nonexistent", "no such directory")
        code, _, err = run(cli, name, "--config", tmp_path / "nope.yaml", capsys=capsys)
        one_line_error(code, err, "nope.yaml", "no such file")
    proc = subprocess.run([sys.executable, "recipes/sft_qlora.py", "--learning_rate", "abc"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    one_line_error(proc.returncode, proc.stderr, "--learning_rate", "abc")
    proc = subprocess.run([sys.executable, "recipes/classify_roberta.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    options = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  --")]
    assert options[:3] == ["--task", "--train_file", "--validation_file"], options[:5]  # the suite's own first
