"""Instruction text, answers and their inverse parser; the canonical record; the task definitions."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewtune.prompts import build_prompt, format_answer, keyword_input, parse_answer, to_instruction
from reviewtune.records import drop_reason, make_record, read_records, sort_aspects, write_records
from reviewtune.tasks import DEFAULT_KEYWORDS, SENTIMENT5_LABELS, TaskSpec, get_task

REVIEW = "배송은 빨랐는데 사이즈가 좀 작아요 ㅠㅠ"


# --- instruction text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_name", "record", "answer"),
    [
        ("sentiment", {"sentiment": 1}, "긍정"),
        ("sentiment", {"sentiment": 0}, "부정"),
        ("sentiment5", {"sentiment": 0}, "매우부정"),
        ("sentiment5", {"sentiment": 4}, "매우긍정"),
        ("aspects", {"aspects": [{"keyword": "배송", "polarity": -1}, {"keyword": "디자인", "polarity": 1}]},
         "디자인1, 배송-1"),
        ("aspects", {"aspects": []}, "없음"),
        ("regression", {"score": 4.0}, "4"),
        ("regression", {"score": 3.5}, "3.5"),
    ],
)  # fmt: skip
def test_instruction_text_is_exact(task_name, record, answer):
    task = get_task(task_name)
    pair = to_instruction({"text": REVIEW, **record}, task)
    assert pair["prompt"].endswith("###출력:")
    assert pair["completion"] == " " + answer
    assert pair["prompt"] + pair["completion"] == f"###입력: {REVIEW}\n###명령어: {task.instruction}\n###출력: {answer}"
    assert pair["shortened"] is False
    assert build_prompt(REVIEW, task) == pair["prompt"]


def test_default_instructions_and_overrides():
    assert get_task("aspects").instruction == "리뷰를 분석해줘"
    task = get_task("sentiment", instruction="감정은?", label_names=["나쁨", "좋음"])
    pair = to_instruction({"text": "좋다", "sentiment": 1}, task)
    assert pair["prompt"] + pair["completion"] == "###입력: 좋다\n###명령어: 감정은?\n###출력: 좋음"


def test_keyword_input():
    assert keyword_input(REVIEW, "배송") == f"###입력: {REVIEW}\n###키워드: 배송"
    assert keyword_input(REVIEW, "배송", get_task("aspects")) == f"###입력: {REVIEW}\n###키워드: 배송"


def test_braces_in_review_are_kept_verbatim():
    text = "가격 {instruction} {0} 좋아요"
    pair = to_instruction({"text": text, "sentiment": 1}, get_task("sentiment"))
    assert pair["prompt"].startswith(f"###입력: {text}\n")


def test_answers_in_keyword_list_order():
    task = get_task("aspects")
    shuffled = [{"keyword": k, "polarity": 1} for k in reversed(DEFAULT_KEYWORDS)]
    assert format_answer({"aspects": shuffled}, task) == ", ".join(f"{k}1" for k in DEFAULT_KEYWORDS)


def test_regression_answer_round_trips_where_g_would_round():
    task = get_task("regression")
    for score in (3.14159265, 1e-7, 123456789.0, -0.5, 10.0):
        answer = format_answer({"score": score}, task)
        assert parse_answer(answer, task).score == score
    assert format_answer({"score": 7}, task) == "7"


def _char_tokenizer():
    """A tiny character-level fast tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(REVIEW + "###입력:명령어출력리뷰의감정을긍정또는부정으로분류해줘\n "))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_to_instruction_cuts_the_review_never_the_answer():
    tokenizer = _char_tokenizer()
    task = get_task("sentiment")
    record = {"text": REVIEW * 5, "sentiment": 1}
    full = to_instruction(record, task)
    n_full = len(tokenizer(full["prompt"] + full["completion"])["input_ids"]) + 1
    max_length = n_full - 30
    cut = to_instruction(record, task, tokenizer=tokenizer, max_length=max_length)
    assert cut["shortened"] is True
    assert cut["completion"] == " 긍정"
    assert cut["prompt"].endswith(f"\n###명령어: {task.instruction}\n###출력:")
    assert len(tokenizer(cut["prompt"] + cut["completion"])["input_ids"]) + 1 <= max_length
    review_cut = cut["prompt"].removeprefix("###입력: ").split("\n###명령어:")[0]
    assert REVIEW.startswith(review_cut[:10]) and len(review_cut) < len(record["text"])
    same = to_instruction(record, task, tokenizer=tokenizer, max_length=n_full)
    assert same["shortened"] is False and same["prompt"] == full["prompt"]


# --- the inverse parser ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_name", "text", "reason"),
    [
        ("sentiment", "", "empty"),
        ("sentiment", "   ", "empty"),
        ("sentiment", "중립", "unknown_label"),
        ("sentiment5", "긍정적", "unknown_label"),
        ("aspects", "디자인", "bad_item"),
        ("aspects", "디자인1,", "bad_item"),
        ("aspects", "디자인좋음", "bad_item"),
        ("aspects", "디자인3", "bad_polarity"),
        ("aspects", "디자인+1", "bad_polarity"),
        ("aspects", "날씨1", "unknown_keyword"),
        ("aspects", "디자인1, 디자인-1", "duplicate_keyword"),
        ("aspects", "디자인" + "1" * 5000, "bad_polarity"),
        ("regression", "높음", "not_a_number"),
        ("regression", "nan", "not_a_number"),
        ("regression", "inf", "not_a_number"),
    ],
)
def test_parse_answer_invalid_reasons(task_name, text, reason):
    parsed = parse_answer(text, get_task(task_name))
    assert parsed.valid is False
    assert parsed.reason == reason


def test_parse_answer_valid_and_not_text():
    assert parse_answer(" 긍정\n", get_task("sentiment")).label == 1
    assert parse_answer("중립", get_task("sentiment5")).label == 2
    assert parse_answer("배송-1, 디자인1", get_task("aspects")).aspects == [
        {"keyword": "디자인", "polarity": 1},
        {"keyword": "배송", "polarity": -1},
    ]
    assert parse_answer("없음", get_task("aspects")).aspects == []
    assert parse_answer(None, get_task("sentiment")).reason == "not_text"
    assert parse_answer(3, get_task("aspects")).reason == "not_text"


def test_keywords_ending_in_digits_round_trip():
    task = get_task("aspects", keywords=["V", "V2", "사이즈55"])
    aspects = [
        {"keyword": "V", "polarity": 2},
        {"keyword": "V2", "polarity": 1},
        {"keyword": "사이즈55", "polarity": -2},
    ]
    answer = format_answer({"aspects": aspects}, task)
    assert answer == "V2, V21, 사이즈55-2"
    assert parse_answer(answer, task).aspects == aspects


_TASKS = [get_task(name) for name in ("sentiment", "sentiment5", "aspects", "regression")]
_answer_like = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.one_of(st.sampled_from(DEFAULT_KEYWORDS + SENTIMENT5_LABELS + ["없음", ",", " ", "-", "+"]),
                  st.integers(-10**6, 10**6).map(str), st.text(max_size=5)),
        max_size=12,
    ).map("".join),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(text=_answer_like, task=st.sampled_from(_TASKS))
def test_parse_answer_never_raises(text, task):
    parsed = parse_answer(text, task)
    assert isinstance(parsed.valid, bool)
    assert parsed.valid or parsed.reason


# Keywords a user may supply: what get_task accepts.
def _valid_keywords(kws):
    try:
        get_task("aspects", keywords=kws)
    except ValueError:
        return False
    return True


_keyword_lists = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8, unique=True).filter(_valid_keywords)


@st.composite
def _task_and_record(draw):
    name = draw(st.sampled_from(["sentiment", "sentiment5", "aspects", "regression"]))
    if name in ("sentiment", "sentiment5"):
        task = get_task(name)
        return task, {"sentiment": draw(st.integers(0, len(task.label_names) - 1))}
    if name == "regression":
        return get_task(name), {"score": draw(st.floats(allow_nan=False, allow_infinity=False))}
    kws = draw(st.one_of(st.just(list(DEFAULT_KEYWORDS)), _keyword_lists))
    task = get_task("aspects", keywords=kws)
    chosen = draw(st.lists(st.sampled_from(kws), unique=True, max_size=len(kws)))
    aspects = [{"keyword": k, "polarity": draw(st.sampled_from(task.polarities))} for k in chosen]
    return task, {"aspects": aspects}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(pair=_task_and_record(), review=st.text(max_size=40))
def test_format_then_parse_round_trips_exactly(pair, review):
    task, labels = pair
    record = make_record("1", review, **labels)
    inst = to_instruction(record, task)
    assert inst["prompt"] + inst["completion"] == task.template.format(
        review=review, instruction=task.instruction
    ) + " " + format_answer(record, task)
    parsed = parse_answer(inst["completion"], task)  # the completion, leading space included
    assert parsed.valid, (inst["completion"], parsed.reason)
    if task.name in ("sentiment", "sentiment5"):
        assert parsed.label == labels["sentiment"]
    elif task.name == "aspects":
        assert parsed.aspects == sort_aspects(labels["aspects"], task)
    else:
        assert parsed.score == labels["score"]


# --- records ----------------------------------------------------------------------------------------------------


def test_make_record_shape():
    r = make_record(7, "좋아요", sentiment=1, meta={"shop": "a"})
    assert r == {"id": "7", "text": "좋아요", "sentiment": 1, "aspects": None, "score": None, "meta": {"shop": "a"}}


@pytest.mark.parametrize(
    ("task_name", "fields", "reason"),
    [
        ("sentiment", {"text": "  ", "sentiment": 1}, "empty_text"),
        ("sentiment", {"text": None, "sentiment": 1}, "empty_text"),
        ("sentiment", {"text": "a", "sentiment": None}, "missing_label"),
        ("sentiment", {"text": "a", "sentiment": 2}, "unknown_label"),
        ("sentiment", {"text": "a", "sentiment": True}, "unknown_label"),
        ("sentiment5", {"text": "a", "sentiment": 4}, None),
        ("sentiment5", {"text": "a", "sentiment": -1}, "unknown_label"),
        ("aspects", {"text": "a", "aspects": None}, "missing_label"),
        ("aspects", {"text": "a", "aspects": "디자인1"}, "unknown_label"),
        ("aspects", {"text": "a", "aspects": [{"keyword": "날씨", "polarity": 1}]}, "unknown_keyword"),
        ("aspects", {"text": "a", "aspects": [{"keyword": "배송", "polarity": 3}]}, "unknown_label"),
        ("aspects", {"text": "a", "aspects": [{"keyword": "배송", "polarity": 1}] * 2}, "duplicate_keyword"),
        ("aspects", {"text": "a", "aspects": []}, None),
        ("regression", {"text": "a", "score": None}, "missing_label"),
        ("regression", {"text": "a", "score": float("nan")}, "unknown_label"),
        ("regression", {"text": "a", "score": 2}, None),
    ],
)
def test_drop_reason(task_name, fields, reason):
    assert drop_reason(fields, get_task(task_name)) == reason


def test_records_write_read_round_trip(tmp_path):
    rows = [
        make_record("a", "좋아요", sentiment=1),
        make_record("b", "별로", aspects=[{"keyword": "배송", "polarity": -1}]),
    ]
    path = write_records(tmp_path / "r.jsonl", rows)
    assert read_records(path) == rows
    (tmp_path / "partial.jsonl").write_text(json.dumps({"id": "1", "text": "x"}) + "\n", encoding="utf-8")
    assert read_records(tmp_path / "partial.jsonl")[0] == make_record("1", "x")


@pytest.mark.parametrize(("line", "message"), [('{"id": "1"}', "missing field(s) text"), ('"id text"', "not a JSON")])
def test_read_records_errors_name_the_record(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "0", "text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"bad.jsonl:2: {message}")):  # file:line, as every reader
        read_records(path)


# --- tasks ------------------------------------------------------------------------------------------------------


def test_task_specs():
    assert get_task("sentiment").label_names == ["부정", "긍정"]
    assert get_task("sentiment5").label_names == SENTIMENT5_LABELS
    assert get_task("aspects").keywords == DEFAULT_KEYWORDS and len(DEFAULT_KEYWORDS) == 14
    assert [get_task(n).num_labels for n in ("sentiment", "sentiment5", "regression")] == [2, 5, 1]
    assert get_task("aspects").polarity_names == ["-2", "-1", "0", "1", "2"]


def test_task_spec_save_load(tmp_path):
    task = get_task("aspects", keywords=["가격", "배송"], instruction="분석")
    task.save(tmp_path)
    assert TaskSpec.load(tmp_path) == task


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "topic"},
        {"name": "sentiment", "label_names": ["a", "b", "c"]},
        {"name": "sentiment", "label_names": ["a", "a"]},
        {"name": "sentiment", "label_names": ["a", " b"]},
        {"name": "aspects", "keywords": ["가격", "가격"]},
        {"name": "aspects", "keywords": ["가격, 배송"]},
        {"name": "aspects", "keywords": [" 가격"]},
        {"name": "aspects", "keywords": ["없음"]},
        {"name": "aspects", "keywords": ["V", "V-"]},
    ],
)
def test_get_task_rejects_what_would_not_round_trip(kwargs):
    name = kwargs.pop("name")
    with pytest.raises(ValueError):
        get_task(name, **kwargs)
