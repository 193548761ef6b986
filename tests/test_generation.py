"""Greedy decoding and label log-likelihoods on the tiny pre-trained causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reviewtune.evaluation.generation import generate_answers, label_loglik, loglik_probs

PROMPTS = [
    "###입력: 배송이 빨라요\n###명령어: 리뷰를 분석해줘\n###출력:",
    "###입력: 색상이 별로예요 그리고 사이즈는 딱 맞아요 소재는 아쉬워요\n###명령어: 리뷰를 분석해줘\n###출력:",
    "디자인이",
    "###입력: 품질\n###출력:",
    "###입력: 가격이 좋아요 근데 착용감은 실망이에요 ㅠㅠ\n###명령어: 리뷰의 감정을 분류해줘\n###출력:",
]


@pytest.fixture(scope="module")
def causal(tiny_causal_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    return model, tokenizer


def _greedy_ids(model, tokenizer, prompt: str, n: int) -> list[int]:
    """Reference greedy continuation token by token, no cache, no padding, no stopping."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_left_padded_batches_match_batch_of_one_and_reference(causal):
    model, tokenizer = causal
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    single = [
        generate_answers(model, tokenizer, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in PROMPTS
    ]
    assert batched == single
    eos = tokenizer.eos_token_id
    for prompt, answer in zip(PROMPTS, single, strict=True):
        ref = _greedy_ids(model, tokenizer, prompt, 6)
        ref = ref[: ref.index(eos)] if eos in ref else ref
        assert answer == tokenizer.decode(ref, skip_special_tokens=True)


def test_generation_stops_at_end_of_sequence(causal):
    model, tokenizer = causal
    prompts = [*PROMPTS, "배송이", "가격이 좋아요 근데"]
    free = {p: _greedy_ids(model, tokenizer, p, 8) for p in prompts}
    # Declare a token of the free greedy continuation an end-of-sequence token: decoding stops before it,
    # and nothing after it is returned. Prefer a prompt whose continuation changes token, to cut mid-way.
    prompt = max(prompts, key=lambda p: len(set(free[p])))
    ids = free[prompt]
    stop_token = next((t for t in ids if t != ids[0]), ids[0])
    cut = ids.index(stop_token)
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_token]
    try:
        answers = generate_answers(
            model, tokenizer, [prompt, PROMPTS[0]], max_new_tokens=8, batch_size=2, progress=False
        )
    finally:
        model.generation_config.eos_token_id = old
    assert answers[0] == tokenizer.decode(ids[:cut], skip_special_tokens=True)
    assert len(answers[0]) < len(tokenizer.decode(ids, skip_special_tokens=True))
    # The tokenizer's own EOS, where the model emits it, ends the answer too (the batch/reference test
    # covers the same prompts; here the text after the EOS must be non-empty to make it a real check).
    for p in prompts:
        eos = tokenizer.eos_token_id
        if eos in free[p] and tokenizer.decode(free[p][free[p].index(eos) + 1 :], skip_special_tokens=True):
            (answer,) = generate_answers(model, tokenizer, [p], max_new_tokens=8, progress=False)
            assert answer == tokenizer.decode(free[p][: free[p].index(eos)], skip_special_tokens=True)


def test_label_loglik_matches_a_direct_computation_and_batching(causal):
    model, tokenizer = causal
    completions = [" 부정", " 긍정", " 매우긍정"]
    scores = label_loglik(model, tokenizer, PROMPTS, completions, batch_size=7, progress=False)
    assert scores.shape == (len(PROMPTS), len(completions))
    assert np.all(scores < 0)
    one = label_loglik(model, tokenizer, PROMPTS, completions, batch_size=1, progress=False)
    np.testing.assert_allclose(scores, one, atol=1e-4)
    # Direct: log p(prompt + completion) - log p(prompt) over the same token ids.
    for i, prompt in enumerate(PROMPTS):
        for j, completion in enumerate(completions):
            p_ids = tokenizer(prompt)["input_ids"]
            full = tokenizer(prompt + completion)["input_ids"]
            assert full[: len(p_ids)] == p_ids, "this tokenizer should not merge across the ':' / ' ' boundary"
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            direct = sum(float(lp[t - 1, full[t]]) for t in range(len(p_ids), len(full)))
            assert scores[i, j] == pytest.approx(direct, abs=1e-4)


def test_loglik_probs_sum_to_one(causal):
    model, tokenizer = causal
    scores = label_loglik(model, tokenizer, PROMPTS, [" 부정", " 긍정"], progress=False)
    probs = loglik_probs(scores)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((probs > 0) & (probs < 1))
    np.testing.assert_array_equal(probs.argmax(1), scores.argmax(1))
    # Extreme log-likelihoods must not overflow.
    np.testing.assert_allclose(loglik_probs(np.array([[-1e4, -1e4 - 1.0]])).sum(), 1.0)


def test_empty_inputs(causal):
    model, tokenizer = causal
    assert generate_answers(model, tokenizer, [], progress=False) == []
    assert label_loglik(model, tokenizer, [], [" 긍정"], progress=False).shape == (0, 1)
