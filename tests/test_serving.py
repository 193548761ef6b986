"""Serving a run with the tools users know: the chat-template prompt format (trained, sampled, scored and predicted
the same way), merged models whose generation_config reproduces the harness, ``load_as_scored``, and model cards.

The instruct model is a stand-in built from the tiny causal LM (``tiny_chat_causal_dir``: ChatML tokens, a chat
template with a default system prompt, a sampling generation_config, an end-of-turn token that is not EOS).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline
from trl import SFTConfig, SFTTrainer

from reviewtune.evaluation.as_scored import load_as_scored, pipeline_inputs
from reviewtune.evaluation.predict import answer_token_budget, predict
from reviewtune.evaluation.systems import load_system
from reviewtune.prompt_format import (
    CHAT,
    answer_end_ids,
    completion_text,
    example_ids,
    model_input,
    stop_ids,
    with_prompt_format,
)
from reviewtune.prompts import build_prompt, format_answer, to_instruction
from reviewtune.tasks import TaskSpec, get_task
from reviewtune.training.sft_examples import instruction_dataset

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["배송이 빠르고 좋아요", "디자인이 예뻐요 만족해요", "품질이 최고예요"]
BAD = ["품질이 별로예요", "사이즈가 안 맞아 실망이에요", "색상이 아쉬워요"]


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        text = " 그리고 ".join(rng.sample(GOOD if label else BAD, 2))
        rows.append({"id": f"{seed}-{i}", "text": text, "sentiment": label, "aspects": None, "score": None})
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_serving_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # eval/predict.py's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _chat_task(tokenizer) -> TaskSpec:
    return with_prompt_format(get_task("sentiment"), True, tokenizer)


def test_chat_examples_are_tokenised_as_trl_trains_them(tiny_chat_causal_dir, tiny_causal_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_causal_dir)
    task = _chat_task(tokenizer)
    long = {**_records(1, 9)[0], "id": "long", "text": " ".join(GOOD * 12)}
    records = [*_records(5, 0), long]
    max_length = 176  # the template and the system prompt take ~60 of the tiny tokenizer's tokens
    dataset, stats = instruction_dataset(records, task, tokenizer, max_length)
    assert stats.shortened == 1 and stats.kept == len(records)
    first = dataset[0]
    assert first["prompt"] == [{"role": "user", "content": build_prompt(records[0]["text"], task)}]
    assert first["completion"] == [{"role": "assistant", "content": format_answer(records[0], task)}]

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = answer_end_ids(tokenizer, CHAT)
    assert end[0] == im_end and tokenizer.decode(end) == "<|im_end|>\n"  # what the template closes a turn with
    assert stop_ids(tokenizer, CHAT) == sorted({tokenizer.eos_token_id, im_end})  # the newline is no stop
    assert im_end != tokenizer.eos_token_id

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=max_length)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_chat_causal_dir), args=args,
                         train_dataset=dataset, processing_class=tokenizer)  # fmt: skip
    for source, row in zip(dataset, trainer.train_dataset, strict=True):
        prompt_ids, full_ids = example_ids(tokenizer, source)
        assert row["input_ids"] == full_ids and len(full_ids) <= max_length  # cut to fit, never by trl
        supervised = [t for t in row["labels"] if t != -100]
        answer = source["completion"][0]["content"]
        assert supervised == tokenizer(answer, add_special_tokens=False)["input_ids"] + end
        # The text the harness sends and scores is the training text: chat prompt + answer + end of turn
        prompt = source["prompt"][0]["content"]
        text = model_input(prompt, tokenizer, CHAT) + completion_text(answer, tokenizer, CHAT)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == full_ids
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert dataset[-1]["completion"][0]["content"] == "긍정"  # the long review was cut, not its answer

    with pytest.raises(ValueError, match="chat template"):  # a base model's tokenizer has none
        _chat_task(AutoTokenizer.from_pretrained(tiny_causal_dir))


LLAMA3_STYLE = (  # the BOS is part of the template: tokenising the rendered chat again must not add a second one
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA_STYLE = (
    "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else "
    "m['role']) + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@pytest.mark.parametrize("template, tokens, end", [
    (LLAMA3_STYLE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    (GEMMA_STYLE, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>\n"),
])  # fmt: skip
def test_other_chat_templates_end_their_turn_and_keep_one_bos(tiny_causal_dir, template, tokens, end):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    tokenizer.chat_template = template
    task = _chat_task(tokenizer)
    prompt = build_prompt(GOOD[0], task)
    prompt_ids, full_ids = example_ids(tokenizer, to_instruction({"text": GOOD[0], "sentiment": 1}, task))
    assert tokenizer(model_input(prompt, tokenizer, CHAT), add_special_tokens=False)["input_ids"] == prompt_ids
    assert prompt_ids.count(tokenizer.bos_token_id) == 1 and prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(answer_end_ids(tokenizer, CHAT)) == end
    assert full_ids == prompt_ids + tokenizer("긍정", add_special_tokens=False)["input_ids"] + answer_end_ids(
        tokenizer, CHAT)  # fmt: skip
    assert tokenizer.convert_tokens_to_ids(tokens[-1]) in stop_ids(tokenizer, CHAT)


@pytest.fixture(scope="module")
def chat_run(tiny_chat_causal_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("chat_data")
    out = tmp_path_factory.mktemp("chat_run")
    argv = [
        *("--model_name_or_path", str(tiny_chat_causal_dir), "--output_dir", str(out), "--task", "sentiment"),
        *("--train_file", _write(data / "train.jsonl", _records(96, 1))),
        *("--validation_file", _write(data / "validation.jsonl", _records(8, 2))),
        *("--test_file", _write(data / "test.jsonl", _records(8, 3))),
        *("--use_chat_template", "true", "--merge", "true", "--max_length", "176", "--max_steps", "48"),
        *("--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant"),
        *("--warmup_steps", "0", "--logging_steps", "4", "--save_steps", "100", "--seed", "0"),
        *("--lora_r", "8", "--lora_alpha", "16", "--lora_modules_to_save", "embed_tokens"),
        *("--num_sample_predictions", "8"),
    ]
    summary = _load_script(ROOT / "recipes" / "sft_qlora.py").main(argv)
    return out, summary, data


def test_chat_run_is_trained_sampled_and_scored_through_the_template(chat_run, tiny_chat_causal_dir):
    out, summary, data = chat_run
    task = TaskSpec.load(out)
    assert task.prompt_format == "chat" and summary["config"]["use_chat_template"] is True
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    samples = json.loads((out / "sample_predictions.json").read_text())["predictions"]

    adapter = load_system(out)  # NF4 base + adapter, as the report scores it
    generated = predict(adapter, test, scoring="generate", progress=False)
    assert [p["raw"] for p in generated] == [s["after"] for s in samples]  # the recipe's samples: the same answers
    tokenizer = adapter.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # it learnt the answers and to end its turn (measured: 8 of 8 right)
    assert sum(p["label"] == r["sentiment"] for p, r in zip(generated, test, strict=True)) >= 6

    # loglik: each label scored with what training puts after it (the end of turn), after the chat prompt
    ranked = predict(adapter, test[:3], scoring="loglik", progress=False)
    for record, pred in zip(test[:3], ranked, strict=True):
        prompt = model_input(build_prompt(record["text"], task), tokenizer, CHAT)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for label in task.label_names:
            ids = tokenizer(prompt + completion_text(label, tokenizer, CHAT), add_special_tokens=False)["input_ids"]
            assert ids[-2:] == answer_end_ids(tokenizer, CHAT) and ids[-2] == im_end
            with torch.no_grad():
                logprobs = torch.log_softmax(adapter.model(torch.tensor([ids])).logits[0].float(), -1)
            scores.append(sum(logprobs[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids))))
        np.testing.assert_allclose(pred["probs"], np.exp(scores) / np.exp(scores).sum(), atol=1e-5)

    # eval/predict.py goes through the same code
    written = out.parent / f"{out.name}_predictions.jsonl"
    _load_script(ROOT / "eval" / "predict.py").main(
        ["--run", str(out), "--input", str(data / "test.jsonl"), "--out", str(written)])  # fmt: skip
    assert [json.loads(line)["raw"] for line in written.read_text().splitlines()] == [p["raw"] for p in generated]


def test_merged_chat_model_answers_like_the_harness_in_a_plain_pipeline(chat_run, tiny_chat_causal_dir):
    out, _, data = chat_run
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    base_config = GenerationConfig.from_pretrained(tiny_chat_causal_dir)
    saved = GenerationConfig.from_pretrained(out / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    task = TaskSpec.load(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert base_config.do_sample is True  # what the merged model used to keep
    assert saved.do_sample is False and saved.num_beams == 1 and saved.temperature is None
    assert saved.max_new_tokens == answer_token_budget(task, tokenizer)
    assert im_end in saved.eos_token_id and tokenizer.eos_token_id in saved.eos_token_id
    assert saved.repetition_penalty == base_config.repetition_penalty  # applied by the harness's generate() too
    assert GenerationConfig.from_pretrained(out).to_diff_dict() == saved.to_diff_dict()  # beside the adapter

    harness = [p["raw"] for p in predict(load_system(out, merged=True), test, scoring="generate", progress=False)]
    assert harness == [p["raw"] for p in predict(load_system(out), test, scoring="generate", progress=False)]
    generator = pipeline("text-generation", model=str(out / "merged"), device="cpu")
    messages = [[{"role": "user", "content": build_prompt(r["text"], task)}] for r in test]
    answers = [o[0]["generated_text"][-1]["content"] for o in generator(messages)]  # no generation arguments
    assert answers == harness
    assert sum(a.strip() in task.label_names for a in answers) >= 6  # stopped at the end of turn
    # Negative control: greedy under the base's generation config runs past the end of turn it never stops at
    greedy_base = generator(messages, generation_config=base_config, do_sample=False)
    assert [o[0]["generated_text"][-1]["content"] for o in greedy_base] != harness


def test_load_as_scored_gives_the_report_model_to_a_pipeline(chat_run):
    out, _, data = chat_run
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    system = load_as_scored(out)  # the NF4 adapter run, not merged/
    assert system.weights.startswith("nf4") and system.model.generation_config.do_sample is False
    generator = pipeline("text-generation", model=system.model, tokenizer=system.tokenizer)
    outputs = generator(pipeline_inputs(system, [r["text"] for r in test]), return_full_text=False)
    answers = [o[0]["generated_text"] for o in outputs]
    assert answers == [p["raw"] for p in predict(system, test, scoring="generate", progress=False)]


def test_chat_run_card_says_how_to_load_it(chat_run):
    out, _, _ = chat_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"reviewtune", "trl", "sft", "qlora"} <= set(card.data.tags)
    assert "prompt format: `chat`" in card.text and '[{"role": "user", "content": prompt}]' in card.text
    assert "--use_chat_template true" in card.text
    merged = ModelCard.load(out / "merged" / "README.md")
    assert merged.data.library_name == "transformers" and "merged" in merged.data.tags
