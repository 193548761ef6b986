"""Greedy decoding and label log-likelihoods on the tiny pre-trained causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reviewtune.evaluation import generation
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
    # Without end tokens: the completion's own tokens only.
    scores = label_loglik(model, tokenizer, PROMPTS, completions, end_ids=(), batch_size=7, progress=False)
    assert scores.shape == (len(PROMPTS), len(completions))
    assert np.all(scores < 0)
    one = label_loglik(model, tokenizer, PROMPTS, completions, end_ids=(), batch_size=1, progress=False)
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


# ------------------------------------------------------------------- label log-likelihood: prompt read once


def _reference_loglik(model, tokenizer, prompt: str, completion: str, end_ids: list[int]) -> float:
    """The pre-issue-17 rule, one full unpadded sequence per pair, plus the end tokens: the completion's tokens
    from where prompt and prompt+completion ids diverge, then ``end_ids``, each given everything before it."""
    p_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    start = max(1, next((k for k, (a, b) in enumerate(zip(p_ids, full, strict=False)) if a != b), len(p_ids)))
    seq = full + list(end_ids)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
    return sum(float(lp[t - 1, seq[t]]) for t in range(start, len(seq)))


# A prompt whose last token merges with a completion's first ("가격이 좋" + "아요" -> "좋아요"), multi-token
# labels, and a label that is a token-level prefix of another (" 긍정" / " 긍정아님").
MERGE_PROMPTS = [*PROMPTS, "가격이 좋", "배송"]
LABELS = [" 부정", " 긍정", " 매우긍정", " 긍정아님", "아요", "이 빨라요"]


def _token_facts(tokenizer):
    ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in LABELS}
    merges = []
    for p in MERGE_PROMPTS:
        p_ids = tokenizer(p)["input_ids"]
        merges += [(p, c) for c in LABELS if tokenizer(p + c)["input_ids"][: len(p_ids)] != p_ids]
    return ids, merges


def test_label_loglik_equals_the_pairwise_rule_plus_the_end_token(causal):
    model, tokenizer = causal
    ids, merges = _token_facts(tokenizer)
    assert merges, "the test needs a prompt whose last token merges with a completion"
    assert any(len(v) >= 3 for v in ids.values()), "the test needs multi-token labels"
    assert ids[" 긍정아님"][: len(ids[" 긍정"])] == ids[" 긍정"], "the test needs a label that prefixes another"
    eos = tokenizer.eos_token_id
    for end in ([eos], [], [tokenizer.convert_tokens_to_ids("<unk>"), eos]):
        scores = label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, end_ids=end, batch_size=3, progress=False)
        ref = [[_reference_loglik(model, tokenizer, p, c, end) for c in LABELS] for p in MERGE_PROMPTS]
        np.testing.assert_allclose(scores, ref, atol=1e-4)
    # Default end token: the tokenizer's end-of-sequence token, what training appends to every answer.
    default = label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=4, progress=False)
    np.testing.assert_allclose(default, label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, end_ids=[eos],
                                                     batch_size=4, progress=False), atol=1e-6)  # fmt: skip


def test_padded_batches_equal_one_at_a_time_and_both_attention_paths(causal, monkeypatch):
    model, tokenizer = causal
    single = np.concatenate(
        [label_loglik(model, tokenizer, [p], LABELS, batch_size=1, progress=False) for p in MERGE_PROMPTS]
    )
    for batch_size in (2, 5, 16):  # prompts of very different lengths share a left-padded batch
        batched = label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(batched, single, atol=1e-5)
    old = model.config._attn_implementation
    try:
        model.config._attn_implementation = "eager"  # the 4D mask as an additive float mask
        np.testing.assert_allclose(
            label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=4, progress=False), single, atol=1e-5
        )
    finally:
        model.config._attn_implementation = old
    # Attention without custom 4D masks (flash attention): one right-padded sequence per pair, same scores.
    monkeypatch.setattr(generation, "TREE_ATTENTION", ())
    np.testing.assert_allclose(
        label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=5, progress=False), single, atol=1e-5
    )


def test_sliding_window_models_score_as_one_sequence_per_pair(tiny_causal_dir, tiny_corpus_file, tiny_model_config,
                                                              tmp_path):  # fmt: skip
    """A label tree's 4D mask cannot carry a sliding window (transformers uses a custom mask as-is in every layer),
    so sequences longer than a sliding-window model's window (the embedded causal base, Gemma 2/3, Mistral) are
    scored one per pair: the same scores as the reference rule, in any batch; shorter ones read as a tree."""
    from reviewtune.models.pretraining import pretrain
    from reviewtune.training.arguments import PretrainArguments

    args = PretrainArguments(kind="causal", corpus_file=str(tiny_corpus_file), **{**tiny_model_config,
                             "sliding_window_layers": 1, "sliding_window": 3})  # fmt: skip
    pretrain(args, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    eos = tokenizer.eos_token_id
    ref = [[_reference_loglik(model, tokenizer, p, c, [eos]) for c in LABELS] for p in MERGE_PROMPTS]
    for batch_size in (1, 4):
        scores = label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(scores, ref, atol=1e-4)
    # A window no sequence reaches past: the tree (one forward pass per batch) gives the reference scores too.
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, sliding_window=512).eval()
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(1), with_kwargs=True)
    try:
        scores = label_loglik(model, tokenizer, MERGE_PROMPTS, LABELS, batch_size=len(MERGE_PROMPTS), progress=False)
    finally:
        hook.remove()
    assert len(calls) == 1
    ref = [[_reference_loglik(model, tokenizer, p, c, [eos]) for c in LABELS] for p in MERGE_PROMPTS]
    np.testing.assert_allclose(scores, ref, atol=1e-4)


def test_each_prompt_is_read_once_and_only_scored_positions_are_projected(causal):
    model, tokenizer = causal
    calls, projected = [], []
    hooks = [
        model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                        with_kwargs=True),
        model.lm_head.register_forward_hook(lambda m, args, out: projected.append(args[0].shape[:-1].numel())),
    ]  # fmt: skip
    labels = [" 부정", " 긍정", " 매우긍정", " 매우부정"]
    try:
        label_loglik(model, tokenizer, PROMPTS, labels, batch_size=4, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 2  # 5 prompts, batches of 4: two forward passes, no per-label sequences
    longest_prompt = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)  # alone in the second batch
    label_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in labels]
    # The tree reads each distinct label prefix once (" 매우" is shared), never the end token.
    read = len({tuple(ids[:k]) for ids in label_ids for k in range(1, len(ids) + 1)})
    assert calls[1] == (1, longest_prompt + read)
    assert read < sum(map(len, label_ids))
    # Projected: the last prompt position and every read label token; nothing else of the prompt.
    assert projected[1] == 1 + read


def test_a_label_that_prefixes_another_can_lose(tiny_causal_dir):
    """Trained to answer " 긍정아님" (then the end token), the model ranks it first only with the end token
    scored; without it, the label's prefix " 긍정" wins every prompt, whatever the model learnt."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    prompts = [f"###입력: {t}\n###출력:" for t in ("배송이 빨라요", "디자인이 예뻐요", "품질", "색상이 별로예요")]
    batch = [tokenizer(p + " 긍정아님")["input_ids"] + [tokenizer.eos_token_id] for p in prompts[:2]]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        for ids in batch:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    labels = [" 긍정", " 긍정아님"]
    with_end = label_loglik(model, tokenizer, prompts, labels, progress=False)
    without = label_loglik(model, tokenizer, prompts, labels, end_ids=(), progress=False)
    assert (without[:, 0] >= without[:, 1]).all()
    assert (with_end.argmax(1) == 1).all()
