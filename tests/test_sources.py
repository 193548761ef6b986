"""Every source on files the tests write themselves: malformed rows, encodings, strict mode, the count identity."""

from __future__ import annotations

import gzip
import json
import unicodedata

import pytest

from reviewtune.data.decoding import DataError, decode_file
from reviewtune.data.readers import read_source
from reviewtune.data.record_builder import PrepReport
from reviewtune.tasks import get_task

NSMC_HEADER = "id\tdocument\tlabel\n"
NFD = unicodedata.normalize("NFD", "재밌어요")  # decomposed Hangul (as macOS file names / some crawls give)


def read(source, path, task="sentiment", **kw):
    splits, report = read_source(source, path, get_task(task), **kw)
    assert report.read == report.kept + sum(report.dropped.values())
    assert report.kept == sum(len(v) for v in splits.values())
    return splits, report


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# --- nsmc TSV ---------------------------------------------------------------------------------------------------


@pytest.fixture
def nsmc_file(tmp_path):
    rows = [
        "1\t정말 재미있는 영화\t1",
        "2\t\t0",  # empty document (as in NSMC)
        '3\t"따옴표" 그대로\t0',  # unquoted: the quotes are text
        "4\t라벨이 이상함\t2",  # not a binary label
        "5\t라벨이 없음\t",
        "6\t칸이 모자람",
        "7\t칸이\t너무\t많음",
        "1\t아이디 중복\t1",
        f"8\t{NFD}\t1",
        "",  # blank line: not a row
        "9\t  \t1",  # whitespace only
        "10\t마지막 줄 CRLF\t0\r",
        "11\t줄 중간의\r캐리지 리턴\t1",  # malformed: the next row keeps its line number
        "12\t끝\t1",
    ]
    return write(tmp_path / "ratings.txt", NSMC_HEADER + "\n".join(rows) + "\n")


def test_nsmc_counts_every_row(nsmc_file):
    splits, report = read("nsmc", nsmc_file)
    records = splits[None]
    assert report.read == 13
    assert report.kept == 5
    assert report.dropped == {
        "empty_text": 2,
        "unknown_label": 1,
        "missing_label": 1,
        "malformed_row": 3,
        "duplicate_id": 1,
    }
    assert [r["id"] for r in records] == ["1", "3", "8", "10", "12"]
    assert records[1]["text"] == '"따옴표" 그대로'
    assert records[2]["text"] == "재밌어요" and records[2]["text"] != NFD
    assert records[3] == {
        "id": "10",
        "text": "마지막 줄 CRLF",
        "sentiment": 0,
        "aspects": None,
        "score": None,
        "meta": {},
    }
    assert report.info["nfc_normalised"] == 1
    assert report.info["blank_lines"] == 1
    examples = report.info["drop_examples"]
    assert examples["empty_text"][0] == f"{nsmc_file}:3: field 'document': empty_text"
    assert examples["malformed_row"][0] == f"{nsmc_file}:7: malformed_row (2 fields, expected 3)"
    assert "id '1' seen before" in examples["duplicate_id"][0]
    assert examples["malformed_row"][2].startswith(f"{nsmc_file}:14: malformed_row (csv: new-line character")


def test_nsmc_five_level(tmp_path):
    path = write(tmp_path / "five.txt", NSMC_HEADER + "".join(f"{i}\t리뷰 {i}\t{i}\n" for i in range(6)))
    splits, report = read("nsmc", path, task="sentiment5")
    assert [r["sentiment"] for r in splits[None]] == [0, 1, 2, 3, 4]
    assert report.dropped == {"unknown_label": 1}


def test_nsmc_rejects_wrong_header_and_task(tmp_path):
    path = write(tmp_path / "noheader.txt", "1\t좋아요\t1\n")
    with pytest.raises(DataError, match=r"noheader.txt:1: expected the NSMC header"):
        read("nsmc", path)
    with pytest.raises(DataError, match="use --task sentiment or sentiment5"):
        read("nsmc", write(tmp_path / "ok.txt", NSMC_HEADER + "1\t좋아요\t1\n"), task="aspects")


def test_strict_mode_names_file_line_and_field(nsmc_file):
    with pytest.raises(DataError) as e:
        read("nsmc", nsmc_file, strict=True)
    message = str(e.value)
    assert message.startswith(f"{nsmc_file}:3: field 'document': empty_text")
    assert "strict" in message


def test_strict_mode_label_field(tmp_path):
    path = write(tmp_path / "r.txt", NSMC_HEADER + "1\t좋아요\t1\n2\t별로\t긍정적\n")
    with pytest.raises(DataError, match=r"r.txt:3: field 'label': unknown_label \('긍정적'\)"):
        read("nsmc", path, strict=True)
    _, report = read("nsmc", write(tmp_path / "clean.txt", NSMC_HEADER + "1\t좋아요\t1\n"), strict=True)
    assert report.kept == 1 and report.dropped == {}


def test_max_chars(tmp_path):
    path = write(tmp_path / "r.txt", NSMC_HEADER + "1\t짧다\t1\n2\t" + "길" * 50 + "\t0\n")
    splits, report = read("nsmc", path, max_chars=10)
    assert report.dropped == {"over_length": 1} and len(splits[None]) == 1


# --- encodings --------------------------------------------------------------------------------------------------

KOREAN_ROWS = [f"{i}\t한국어 리뷰 {i}번 정말 좋아요\t{i % 2}" for i in range(1, 41)]


def test_cp949_file_reads_with_encoding_option(tmp_path):
    path = write(tmp_path / "cp949.txt", NSMC_HEADER + "\n".join(KOREAN_ROWS) + "\n", encoding="cp949")
    splits, report = read("nsmc", path, encoding="cp949")
    assert report.read == report.kept == 40
    assert splits[None][0]["text"] == "한국어 리뷰 1번 정말 좋아요"
    splits, report = read("nsmc", path, encoding="euc-kr")
    assert report.kept == 40


def test_cp949_file_read_as_utf8_is_one_clear_error(tmp_path):
    path = write(tmp_path / "cp949.txt", NSMC_HEADER + "\n".join(KOREAN_ROWS) + "\n", encoding="cp949")
    with pytest.raises(DataError) as e:
        read("nsmc", path)  # utf-8 by default
    message = str(e.value)
    offset = len(NSMC_HEADER) + len("1\t")
    assert message.startswith(f"{path}: not valid utf-8: byte {offset} (line 2)")
    assert "40 of 41 lines fail" in message
    assert "--encoding cp949" in message


def test_utf8_file_read_as_cp949_is_an_error(tmp_path):
    path = write(tmp_path / "utf8.txt", NSMC_HEADER + "\n".join(KOREAN_ROWS) + "\n")
    with pytest.raises(DataError, match=r"utf8.txt: is valid UTF-8 but --encoding cp949 was given"):
        read("nsmc", path, encoding="cp949")


def test_a_few_undecodable_rows_are_dropped_not_fatal(tmp_path):
    good = (NSMC_HEADER + "\n".join(KOREAN_ROWS * 3) + "\n").replace("\t1\n", "\t1\n", 1)
    lines = good.encode("utf-8").split(b"\n")
    lines[5] = b"999\t" + "깨진 줄".encode("cp949") + b"\t1"  # one row in another encoding
    # unique ids so that only the broken row drops
    text = b"\n".join(lines)
    path = tmp_path / "mixed.txt"
    path.write_bytes(text)
    splits, report = read("nsmc", path)
    assert report.dropped["undecodable_row"] == 1
    assert report.info["undecodable_lines"] == 1
    assert report.info["drop_examples"]["undecodable_row"][0].startswith(f"{path}:6: field 'document': undecodable_row")


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + (NSMC_HEADER + "1\t좋아요\t1\n").encode("utf-8"))
    splits, report = read("nsmc", path)
    assert report.kept == 1 and report.info["bom"] is True
    with pytest.raises(DataError, match="byte-order mark"):
        read("nsmc", path, encoding="cp949")


def test_gzip_input_and_unknown_encoding(tmp_path):
    path = tmp_path / "r.txt.gz"
    path.write_bytes(gzip.compress((NSMC_HEADER + "1\t좋아요\t1\n").encode()))
    assert read("nsmc", path)[1].kept == 1
    with pytest.raises(DataError, match="unknown --encoding"):
        decode_file(path, "klingon")
    with pytest.raises(DataError, match="no such file"):
        decode_file(tmp_path / "missing.txt")


# --- nsmc raw crawl JSON ----------------------------------------------------------------------------------------

RAW = [
    {"movie_id": "1", "review": "최고의 영화", "rating": 10},
    {"movie_id": "1", "review": "그럭저럭", "rating": 6},
    {"movie_id": "1", "review": "별로", "rating": "2"},
    {"movie_id": "2", "review": "보통 이상", "rating": 8},
    {"movie_id": "2", "review": "좋았다", "rating": 9},
    {"movie_id": "2", "review": "이상한 별점", "rating": 11},
    {"movie_id": "2", "review": "", "rating": 1},
    {"movie_id": "3", "review": "별점 없음"},
    ["not", "an", "object"],
    {"movie_id": "3", "review": "최악", "rating": 1},
]


@pytest.fixture
def raw_array(tmp_path):
    return write(tmp_path / "raw.json", json.dumps(RAW, ensure_ascii=False, indent=2))


def test_nsmc_raw_binary(raw_array):
    splits, report = read("nsmc-raw", raw_array, meta_columns=["movie_id"])
    records = splits[None]
    assert [(r["text"], r["sentiment"]) for r in records] == [
        ("최고의 영화", 1),
        ("별로", 0),
        ("좋았다", 1),
        ("최악", 0),
    ]
    assert records[0]["meta"] == {"movie_id": "1"}
    assert report.read == 10
    assert report.dropped == {
        "rating_out_of_scheme": 2,
        "unknown_label": 1,
        "empty_text": 1,
        "missing_label": 1,
        "malformed_row": 1,
    }
    # array items keep their line numbers
    assert report.info["drop_examples"]["rating_out_of_scheme"][0].startswith(f"{raw_array}, item2 (line 7)")


def test_nsmc_raw_five_level_and_regression(raw_array):
    splits, report = read("nsmc-raw", raw_array, task="sentiment5")
    assert [r["sentiment"] for r in splits[None]] == [4, 2, 0, 3, 4, 0]
    splits, _ = read("nsmc-raw", raw_array, task="regression")
    assert [r["score"] for r in splits[None]] == [10.0, 6.0, 2.0, 8.0, 9.0, 1.0]
    with pytest.raises(DataError, match="star ratings"):
        read("nsmc-raw", raw_array, task="aspects")


def test_nsmc_raw_json_lines_and_bad_json(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False) for r in RAW[:3]] + ["{not json", ""]
    splits, report = read("nsmc-raw", write(tmp_path / "raw.jsonl", "\n".join(lines)))
    assert report.read == 4 and report.kept == 2
    assert report.dropped == {"rating_out_of_scheme": 1, "malformed_row": 1}
    assert splits[None][0]["id"] == "raw-1"  # no id column: file stem and line
    compact = write(tmp_path / "compact.json", json.dumps(RAW[:5], ensure_ascii=False))  # one line, no ids
    splits, _ = read("nsmc-raw", compact)
    assert [r["id"] for r in splits[None]] == ["compact-item1", "compact-item3", "compact-item5"]
    with pytest.raises(DataError, match=r"broken.json:2: invalid JSON"):
        read("nsmc-raw", write(tmp_path / "broken.json", '[{"review": "a", "rating": 1},\n {"review": }]'))


# --- csv / jsonl with user-named columns ------------------------------------------------------------------------


def test_csv_columns_meta_and_quoting(tmp_path):
    text = (
        "review_id,body,stars,shop,category\n"
        'a1,"여러 줄\n리뷰, 쉼표도",긍정,무신사,상의\n'
        "a2,별로예요,0,에이블리,하의\n"
        "a3,칸이 많음,1,x,y,z\n"
        "a4,모르는 라벨,중립,x,y\n"
    )
    path = write(tmp_path / "shop.csv", text)
    splits, report = read(
        "csv", path, text_column="body", label_column="stars", id_column="review_id", meta_columns=["shop", "category"]
    )
    records = splits[None]
    assert records[0] == {
        "id": "a1",
        "text": "여러 줄\n리뷰, 쉼표도",
        "sentiment": 1,
        "aspects": None,
        "score": None,
        "meta": {"shop": "무신사", "category": "상의"},
    }
    assert records[1]["sentiment"] == 0
    assert report.dropped == {"malformed_row": 1, "unknown_label": 1}
    # the quoted field spans lines 2-3, so the next rows start on lines 4 and 5
    assert report.info["drop_examples"]["malformed_row"][0].startswith(f"{path}:5: malformed_row (6 fields")


def test_csv_missing_column_is_one_error(tmp_path):
    path = write(tmp_path / "shop.csv", "body,stars\n좋아요,1\n")
    with pytest.raises(
        DataError,
        match=r"shop.csv: no text column 'text', label column 'label' \(columns: body, stars\); name them with",
    ):
        read("csv", path)
    with pytest.raises(DataError, match=r"no meta column 'shop'"):
        read("csv", path, text_column="body", label_column="stars", meta_columns=["shop"])


def test_csv_aspects_answer_text_and_tab_delimiter(tmp_path):
    text = (
        "text\taspects\n"
        "예쁘고 배송 느림\t배송-1, 디자인1\n"
        "그냥 그래요\t없음\n"
        "모르는 키워드\t날씨1\n"
        "이상한 극성\t디자인7\n"
        'JSON 목록\t[{"keyword": "가격", "polarity": "2"}]\n'
    )
    path = write(tmp_path / "aspects.tsv", text)
    splits, report = read("csv", path, task="aspects")
    records = splits[None]
    assert records[0]["aspects"] == [{"keyword": "디자인", "polarity": 1}, {"keyword": "배송", "polarity": -1}]
    assert records[1]["aspects"] == []
    assert records[2]["aspects"] == [{"keyword": "가격", "polarity": 2}]
    assert report.dropped == {"unknown_keyword": 1, "unknown_label": 1}


def test_jsonl_canonical_and_regression(tmp_path):
    rows = [
        {"id": "x1", "text": "좋아요", "aspects": [{"keyword": "품질", "polarity": 2}], "meta": {"shop": "a"}},
        {
            "id": "x2",
            "text": "중복 키워드",
            "aspects": [{"keyword": "품질", "polarity": 1}, {"keyword": "품질", "polarity": 2}],
        },
        {"id": "x3", "text": "극성 범위 밖", "aspects": [{"keyword": "품질", "polarity": 5}]},
        {"id": "x4", "text": "모르는 키워드", "aspects": {"날씨": 1}},
        {"id": "x5", "text": 12345, "aspects": []},
        {"id": "x6", "text": ["목록"], "aspects": []},
        {"id": "", "text": "아이디 없음", "aspects": []},
    ]
    path = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    splits, report = read("jsonl", path, task="aspects")
    assert [r["id"] for r in splits[None]] == ["x1", "x5"]
    assert splits[None][0]["meta"] == {"shop": "a"}
    assert splits[None][1]["text"] == "12345"
    assert report.dropped == {
        "duplicate_keyword": 1,
        "unknown_label": 1,
        "unknown_keyword": 1,
        "malformed_row": 1,
        "missing_id": 1,
    }
    scored = [{"text": "a", "score": 4.5}, {"text": "b", "score": "3"}, {"text": "c", "score": "높음"}, {"text": "d"}]
    path = write(tmp_path / "s.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in scored))
    splits, report = read("jsonl", path, task="regression")
    assert [r["score"] for r in splits[None]] == [4.5, 3.0]
    assert report.dropped == {"unknown_label": 1, "missing_label": 1}


# --- datasets ---------------------------------------------------------------------------------------------------


def test_hf_load_from_disk_and_splits(tmp_path):
    import datasets

    train = datasets.Dataset.from_dict({"sentence": ["좋아요", "별로", ""], "label": [1, 0, 1]})
    test = datasets.Dataset.from_dict({"sentence": ["최고", NFD], "label": [1, 1]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    splits, report = read("hf", tmp_path / "dd", text_column="sentence")
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 2}
    assert report.dropped == {"empty_text": 1} and report.info["nfc_normalised"] == 1
    assert (
        report.info["drop_examples"]["empty_text"][0]
        == f"{tmp_path / 'dd'}[train], row 3: field 'sentence': empty_text"
    )
    splits, _ = read("hf", tmp_path / "dd", text_column="sentence", hf_split="test")
    assert list(splits) == [None] and [r["id"] for r in splits[None]] == ["row-1", "row-2"]
    train.save_to_disk(tmp_path / "single")
    assert read("hf", tmp_path / "single", text_column="sentence")[1].kept == 2
    with pytest.raises(DataError, match="no text column 'text'"):
        read("hf", tmp_path / "single")


def test_hf_load_dataset_from_a_local_data_dir(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "local").mkdir()
    write(tmp_path / "local" / "train.csv", "text,label\n좋아요,1\n별로,0\n괜찮아,3\n")
    splits, report = read("hf", tmp_path / "local")
    assert [r["sentiment"] for r in splits[None]] == [1, 0]
    assert report.dropped == {"unknown_label": 1}
    datasets.Dataset.from_dict({"text": ["좋다", "싫다"], "label": [1, 0]}).to_parquet(tmp_path / "one.parquet")
    assert read("hf", tmp_path / "one.parquet")[1].kept == 2
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": ["x"], "label": [1]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match="no split 'b'"):
        read("hf", tmp_path / "dd", hf_split="b")


# --- synthetic --------------------------------------------------------------------------------------------------


def test_synthetic_source_keeps_its_splits():
    splits, report = read("synthetic", None, task="aspects", n=200, seed=3)
    assert list(splits) == ["train", "validation", "test"]
    assert report.read == report.kept == 200 and report.dropped == {}
    again, _ = read("synthetic", None, task="aspects", n=200, seed=3)
    assert again == splits
    five, _ = read("synthetic", None, task="sentiment5", n=100, seed=3)
    assert {r["sentiment"] for rs in five.values() for r in rs} <= set(range(5))


def test_prep_report_identity_is_checked():
    report = PrepReport(read=3, kept=1, dropped={"empty_text": 1})
    with pytest.raises(AssertionError, match="count identity"):
        report.to_dict()
    assert PrepReport(read=2, kept=1, dropped={"empty_text": 1}).to_dict()["read"] == 2


def test_unknown_source_and_missing_input(tmp_path):
    with pytest.raises(DataError, match="unknown source"):
        read("xml", tmp_path / "x")
    with pytest.raises(DataError, match="--input is required"):
        read("csv", None)
