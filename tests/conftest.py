"""Shared fixtures: offline mode, modest threads, an isolated cache, and tiny pre-trained base models.

``tiny_causal_dir`` / ``tiny_roberta_dir`` are real (tiny) models pre-trained for a few steps by
``reviewtune.models.pretraining`` on a Korean review corpus the fixture writes itself; each builds in seconds
and loads with ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` + ``AutoTokenizer``.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads: no spinning threads on a busy CPU

import pytest  # noqa: E402
import torch  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:  # an explicit setting wins (e.g. 1 on a shared machine)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

# Sizes for the tiny models: big enough for LoRA / 4-bit layers (hidden 64, head_dim 16), small enough
# to pre-train in a few seconds on one core.
TINY_MODEL = dict(
    vocab_size=600,
    min_frequency=2,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_seq_length=64,
    max_position_embeddings=512,
    max_steps=40,
    learning_rate=3e-3,
    per_device_train_batch_size=16,
    eval_blocks=8,
    logging_steps=5,
    seed=0,
)


def _fallback_reviews(n: int, seed: int = 0) -> list[str]:
    """Short shopping-review-like sentences, used when ``reviewtune.data.synthetic`` is not available."""
    rng = random.Random(seed)
    keywords = ["가격", "디자인", "배송", "사이즈", "색상", "소재", "착용감", "품질", "길이", "스타일"]
    good = ["좋아요", "만족해요", "최고예요", "예뻐요", "딱 맞아요", "괜찮네요", "마음에 들어요"]
    bad = ["별로예요", "아쉬워요", "실망이에요", "너무 느려요", "안 맞아요", "그저 그래요"]
    connectors = ["그리고", "근데", "지만", "는데", ""]
    noise = ["", "", " ㅋㅋ", " ㅠㅠ", "!!", "~"]
    out = []
    for _ in range(n):
        k1, k2 = rng.sample(keywords, 2)
        a1, a2 = rng.choice(good + bad), rng.choice(good + bad)
        out.append(f"{k1}이 {a1} {rng.choice(connectors)} {k2}은 {a2}{rng.choice(noise)}".replace("  ", " "))
    return out


def tiny_corpus_texts(n: int = 400) -> list[str]:
    """Training texts for the tiny models: the synthetic train split if the generator exists, else fallback."""
    try:
        from reviewtune.data.synthetic import synthetic_splits
    except ImportError:
        return _fallback_reviews(n)
    return [r["text"] for r in synthetic_splits(n=n, seed=0)["train"]]


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    """``PretrainArguments`` fields (all but kind and corpus) of the tiny test models."""
    return dict(TINY_MODEL)


@pytest.fixture(scope="session", autouse=True)
def isolated_reviewtune_home(tmp_path_factory):
    """Point ``REVIEWTUNE_HOME`` at a session temp dir so tests never touch the user's cache."""
    old = os.environ.get("REVIEWTUNE_HOME")
    home = tmp_path_factory.mktemp("reviewtune_home")
    os.environ["REVIEWTUNE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("REVIEWTUNE_HOME", None)
    else:
        os.environ["REVIEWTUNE_HOME"] = old


@pytest.fixture(scope="session")
def tiny_corpus_file(tmp_path_factory):
    """A small Korean review corpus, one text per line (a few hundred short reviews)."""
    path = tmp_path_factory.mktemp("tiny_corpus") / "corpus.txt"
    path.write_text("\n".join(tiny_corpus_texts()) + "\n", encoding="utf-8")
    return path


def _build_tiny(kind: str, corpus_file, tmp_path_factory):
    from reviewtune.models.pretraining import pretrain
    from reviewtune.training.arguments import PretrainArguments

    out = tmp_path_factory.mktemp(f"tiny_{kind}")
    summary = pretrain(PretrainArguments(kind=kind, corpus_file=str(corpus_file), **TINY_MODEL), out)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"], summary
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tiny_corpus_file, tmp_path_factory):
    """Directory of a tiny pre-trained Llama causal LM + byte-level BPE tokenizer (bos/eos/pad)."""
    return _build_tiny("causal", tiny_corpus_file, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tiny_corpus_file, tmp_path_factory):
    """Directory of a tiny pre-trained RobertaForMaskedLM + tokenizer (load with a new classification head)."""
    return _build_tiny("roberta", tiny_corpus_file, tmp_path_factory)


# A Qwen2.5-Instruct-style chat template (ChatML, a default system prompt when none is given).
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_causal_dir(tiny_causal_dir, tmp_path_factory):
    """The tiny causal LM dressed as an instruct model (a Qwen2.5-Instruct stand-in): ``<|im_start|>`` /
    ``<|im_end|>`` special tokens, a ChatML chat template with a default system prompt, and the sampling
    ``generation_config`` such models ship (do_sample, temperature, top_p, top_k, a repetition penalty). The
    end-of-turn token is not the tokenizer's EOS, as in Llama-3-Instruct's base tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("tiny_chat_causal")
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
    )  # fmt: skip
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
