"""Constrained decoding: the answer languages, the tokenizer's bytes, and greedy decoding restricted to them."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reviewtune.evaluation.answer_languages import AspectLanguage, ChoiceLanguage, NumberLanguage, task_language
from reviewtune.evaluation.constrained_decoding import TokenConstraint, constrained_answers, token_bytes
from reviewtune.evaluation.generation import generate_answers
from reviewtune.evaluation.predict import answer_token_budget
from reviewtune.prompts import build_prompt, format_answer, parse_answer
from reviewtune.tasks import TASKS, get_task

TEXTS = [
    "배송이 빨라요",
    "색상이 별로예요 그리고 사이즈는 딱 맞아요 소재는 아쉬워요",
    "디자인이 예뻐요",
    "품질",
    "가격이 좋아요 근데 착용감은 실망이에요 ㅠㅠ",
    "길이는 딱 좋아요!! 마감처리도 괜찮네요",
]


@pytest.fixture(scope="module")
def causal(tiny_causal_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_causal_dir)


def _walk(language, text: str):
    state = language.start
    for byte in text.encode("utf-8"):
        state = language.step(state, byte)
        if state is None:
            return None
    return state


def _accepts(language, text: str) -> bool:
    state = _walk(language, text)
    return state is not None and language.accepts(state)


def _record(task_name: str, value) -> dict:
    key = {"aspects": "aspects", "regression": "score"}.get(task_name, "sentiment")
    return {"id": "x", "text": "t", "sentiment": None, "aspects": None, "score": None, key: value}


VALID = {
    "sentiment": [0, 1],
    "sentiment5": [0, 1, 2, 3, 4],
    "aspects": [
        [],
        [{"keyword": "디자인", "polarity": 1}],
        [{"keyword": "배송", "polarity": -1}, {"keyword": "디자인", "polarity": 2}],
        [
            {"keyword": "라인(핏)", "polarity": -2},
            {"keyword": "품질", "polarity": 0},
            {"keyword": "가격", "polarity": 1},
        ],
    ],
    "regression": [4.0, 3.5, -0.25, 1e-05, 123456789.0, 0.1, 1.5e16, 10],
}
INVALID = {
    "sentiment": [" 긍정아", " 긍 정", "긍정", " ", " 중립", " 긍정 "],
    "sentiment5": [" 매우", " 매우중립", " 긍정부정"],
    "aspects": [
        " 디자인1, 디자인-1",
        " 디자인3",
        " 모양1",
        " 없음, 디자인1",
        " 디자인1,",
        " 디자인1,배송1",
        " 디자인",
        " 디자인1 배송1",
        " 디자인1, 없음",
        "디자인1",
        " 없음1",
    ],  # fmt: skip
    "regression": [
        " 1.",
        " -",
        " 1e",
        " nan",
        " 1.5.2",
        " +1",
        " inf",
        " 1,5",
        " .5",
        " 1e5e5",
        " 1e999",
        " " + "9" * 400,
    ],
}


@pytest.mark.parametrize("task_name", TASKS)
def test_languages_accept_every_formatted_answer_and_only_what_the_parser_reads(task_name):
    task = get_task(task_name)
    language = task_language(task)
    for value in VALID[task_name]:
        answer = format_answer(_record(task_name, value), task)
        assert _accepts(language, " " + answer), answer
    for text in INVALID[task_name]:
        assert not _accepts(language, text), text
    # Random walks through the language: every answer it accepts parses, and min_bytes is reachable.
    rng = random.Random(0)
    for _ in range(300):
        state, text = language.start, b""
        for _ in range(200):
            if language.accepts(state) and rng.random() < 0.3:
                break
            options = [b for b in range(256) if (s := language.step(state, b)) is not None
                       and language.min_bytes(s) < float("inf")]  # fmt: skip
            if not options:  # a complete answer with no continuation
                assert language.accepts(state), (text, state)
                break
            byte = rng.choice(options)
            state, text = language.step(state, byte), text + bytes((byte,))
        if not language.accepts(state):  # finish along a shortest completion
            while not language.accepts(state):
                need = language.min_bytes(state)
                byte = next(b for b in range(256) if (s := language.step(state, b)) and language.min_bytes(s) < need)
                state, text = language.step(state, byte), text + bytes((byte,))
        parsed = parse_answer(text.decode("utf-8"), task)
        assert parsed.valid, (text.decode("utf-8"), parsed.reason)


def test_aspect_items_are_read_as_the_parser_reads_them():
    """Keywords that end in a digit or prefix another: the language agrees with ``parse_answer`` item by item."""
    task = get_task("aspects", keywords=["V", "V2", "라인", "라인(핏)"])
    language = task_language(task)
    cases = [" V21", " V2", " V2, V21", " V1, V2", " 라인1, 라인(핏)-1", " 라인(핏)0, 라인(핏)1", " V2-1, V-1", " 없음"]
    for text in cases:
        assert _accepts(language, text) == parse_answer(text, task).valid, text
    assert not _accepts(language, " V1, V2")  # V2 reads as V + 2: V twice
    # Shortest answers: " V0" (3 bytes) before " 없음" (7 bytes).
    assert language.min_bytes(language.start) == 3


def test_choice_and_number_languages():
    choice = ChoiceLanguage((" 긍정", " 긍정아님"))
    assert _accepts(choice, " 긍정") and _accepts(choice, " 긍정아님") and not _accepts(choice, " 긍정아")
    assert choice.min_bytes(_walk(choice, " 긍정아")) == len("님".encode())
    number = NumberLanguage()
    assert number.min_bytes(number.start) == 2 and number.min_bytes(_walk(number, " -1.")) == 1
    assert not _accepts(number, " 1d") and not _accepts(number, " ²")  # the letter d, a non-ASCII digit
    with pytest.raises(ValueError):
        AspectLanguage(("없", "가격"), (0,), empty="없0")


def test_token_bytes_spell_what_the_tokenizer_encodes(causal):
    _, tokenizer = causal
    table = token_bytes(tokenizer)
    for text in [" 긍정, 디자인1", " 라인(핏)-2, 없음", " 3.5e-05", "ㅋㅋ 배송은 별로예요!!", " \n\t~"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode("utf-8"), text
    assert all(table[i] is None for i in tokenizer.all_special_ids)


def _prompts(task) -> list[str]:
    return [build_prompt(t, task) for t in TEXTS]


def test_constrained_answers_are_valid_on_every_task(causal):
    model, tokenizer = causal
    free_invalid = 0
    for task_name in TASKS:
        task = get_task(task_name)
        budget = answer_token_budget(task, tokenizer)
        prompts = _prompts(task)
        answers = constrained_answers(model, tokenizer, prompts, task_language(task), budget, batch_size=4,
                                      progress=False)  # fmt: skip
        assert all(parse_answer(a, task).valid for a in answers), (task_name, answers)
        assert all(a.startswith(" ") for a in answers)  # the completion's leading space, as trained
        one = [constrained_answers(model, tokenizer, [p], task_language(task), budget, progress=False)[0]
               for p in prompts]  # fmt: skip
        assert one == answers  # left-padded batches decode as one at a time
        free = generate_answers(model, tokenizer, prompts, max_new_tokens=budget, batch_size=4, progress=False)
        free_invalid += sum(not parse_answer(a, task).valid for a in free)
    assert free_invalid > 0  # the untrained model does not answer in the task's language by itself


def _reference(model, tokenizer, constraint: TokenConstraint, prompt: str, max_new: int) -> str:
    """Greedy over the allowed tokens, one token at a time, no cache, no padding."""
    ids = tokenizer(prompt)["input_ids"]
    state, new = constraint.language.start, []
    with torch.no_grad():
        while len(new) < max_new:
            scores = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            allowed = constraint.allowed(state, max_new - len(new))
            token = int(allowed[scores[allowed].argmax()])
            new.append(token)
            if token == constraint.end_ids[0]:
                break
            state = constraint.transitions(state)[token]
    return constraint.answer_text(new)


@pytest.mark.parametrize("task_name", ["sentiment5", "aspects"])
def test_constrained_decoding_is_greedy_over_the_allowed_tokens(causal, task_name):
    model, tokenizer = causal
    task = get_task(task_name)
    budget = answer_token_budget(task, tokenizer)
    language = task_language(task)
    answers = constrained_answers(model, tokenizer, _prompts(task), language, budget, batch_size=3, progress=False)
    constraint = TokenConstraint(tokenizer, language)
    assert answers == [_reference(model, tokenizer, constraint, p, budget) for p in _prompts(task)]


def _spy_generate(model, monkeypatch) -> list[torch.Tensor]:
    outputs = []
    original = model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        outputs.append((kwargs["input_ids"].shape[1], out))
        return out

    monkeypatch.setattr(model, "generate", spy)
    return outputs


def test_the_budget_forces_the_close(causal, monkeypatch):
    model, tokenizer = causal
    eos = tokenizer.eos_token_id
    for task_name, budget in (("regression", 4), ("aspects", 6), ("sentiment5", 13)):
        task = get_task(task_name)
        constraint = TokenConstraint(tokenizer, task_language(task))
        budget = max(budget, int(constraint.min_tokens(constraint.language.start, 64)) + 1)
        outputs = _spy_generate(model, monkeypatch)
        answers = constrained_answers(model, tokenizer, _prompts(task), task_language(task), budget, progress=False)
        monkeypatch.undo()
        assert all(parse_answer(a, task).valid for a in answers), answers
        for width, out in outputs:
            for row in out[:, width:].tolist():
                assert eos in row and row.index(eos) < budget  # closed by the end token, never cut
    task = get_task("regression")
    with pytest.raises(ValueError, match="no valid answer fits"):
        constrained_answers(model, tokenizer, _prompts(task), task_language(task), 2, progress=False)


def test_a_multi_token_end_sequence(causal, monkeypatch):
    """A chat template's end of turn may be several tokens: all are emitted, in order, then the row stops."""
    model, tokenizer = causal
    task = get_task("sentiment5")
    end = (tokenizer.convert_tokens_to_ids("<unk>"), tokenizer.eos_token_id)
    outputs = _spy_generate(model, monkeypatch)
    answers = constrained_answers(model, tokenizer, _prompts(task), task_language(task), 16, end_ids=end,
                                  progress=False)  # fmt: skip
    assert all(parse_answer(a, task).valid for a in answers)
    ((width, out),) = outputs
    for row in out[:, width:].tolist():
        k = row.index(end[0])
        assert row[k : k + 2] == list(end)
    assert out.shape[1] - width < 16  # every row finished: generation stopped before the budget


def test_token_bytes_of_a_sentencepiece_style_vocabulary():
    """``▁`` for a space and ``<0xAB>`` byte-fallback tokens (Llama 2, Gemma): the bytes, not the spelling."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁긍정", "▁부", "정", "▁", *[f"<0x{b:02X}>" for b in range(256)]]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>",
                                   byte_fallback=True))  # fmt: skip
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    table = token_bytes(tokenizer)
    assert table[3] == " 긍정".encode() and table[6] == b" " and table[7 + 0xEC] == b"\xec"
    assert table[0] is table[1] is table[2] is None
    language = ChoiceLanguage((" 긍정", " 부정", " 중립"))
    constraint = TokenConstraint(tokenizer, language)
    start = constraint.transitions(language.start)
    assert {3, 4, 6} <= set(start) and 7 + ord(" ") in start  # whole pieces, "▁" and the raw space byte
    # " 중립" has no piece of its own: reachable byte by byte through the fallback tokens.
    state = language.step(language.start, ord(" "))
    assert 7 + " 중립".encode()[1] in constraint.transitions(state)
