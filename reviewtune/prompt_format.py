"""How the instruction text reaches the model: the design's plain ``###입력`` text, or the tokenizer's chat template.

``plain`` (the default): trl's standard prompt/completion pair, ``prompt`` the instruction text and ``completion``
``" " + answer``; trl appends the end-of-sequence token. ``chat`` (``use_chat_template: true``): trl's
conversational prompt/completion pair, the instruction text as the user turn and the answer as the assistant turn,
rendered by the tokenizer's own chat template (a system prompt the template adds by default included), so that a
chat API or ``pipeline(messages)`` sends the model what it was trained on. The run's ``task_spec.json`` records
which (``TaskSpec.prompt_format``); training, sample predictions, every scoring mode and ``eval/predict.py`` read
the text through this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reviewtune.tasks import TaskSpec

PLAIN, CHAT = "plain", "chat"
PROMPT_FORMATS = (PLAIN, CHAT)
_PROBE_ANSWER = "긍정"  # any answer text: finds what the chat template puts after an assistant turn


def check_prompt_format(fmt: str, tokenizer=None) -> str:
    """``fmt`` if known (and, for ``chat``, the tokenizer has a chat template); a clear error otherwise."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {fmt!r}")
    if fmt == CHAT and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "use_chat_template: true needs a tokenizer with a chat template (an instruct model's); this tokenizer "
            "has none: use the plain ###입력 format (use_chat_template: false) or set tokenizer.chat_template"
        )
    return fmt


def with_prompt_format(task: TaskSpec, use_chat_template: bool, tokenizer) -> TaskSpec:
    """``task`` with the run's prompt format (checked against the tokenizer); saved with it in ``task_spec.json``."""
    fmt = check_prompt_format(CHAT if use_chat_template else PLAIN, tokenizer)
    return dataclasses.replace(task, prompt_format=fmt)


def user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def trainer_example(prompt: str, answer: str, fmt: str) -> dict:
    """The prompt/completion pair ``SFTTrainer`` trains on: strings (plain) or trl's conversational messages."""
    if fmt == CHAT:
        return {"prompt": user_turn(prompt), "completion": [{"role": "assistant", "content": answer}]}
    return {"prompt": prompt, "completion": " " + answer}


def example_ids(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + completion ids) of a trainer example, tokenised as trl's ``SFTTrainer`` tokenises it:
    chats through ``apply_chat_template`` (with the generation prompt for the prompt alone), text with the
    tokenizer's special tokens and the end-of-sequence token trl appends to the completion.

    Written out because trl's tokenisation is a closure inside ``SFTTrainer._prepare_dataset``; the tests check
    it against the trainer's own tokenised dataset.
    """
    from trl.data_utils import is_conversational

    if is_conversational(example):
        prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]  # fmt: skip
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                             return_dict=True)["input_ids"]  # fmt: skip
        return list(prompt), list(full)
    prompt = tokenizer(example["prompt"])["input_ids"]
    return prompt, tokenizer(example["prompt"] + example["completion"] + tokenizer.eos_token)["input_ids"]


def model_input(prompt: str, tokenizer, fmt: str) -> str:
    """The text the model reads before its answer: the prompt itself (plain), or the chat rendered with the
    generation prompt. Tokenise it with ``add_special_tokens=add_special_tokens(fmt)``."""
    if fmt == CHAT:
        return tokenizer.apply_chat_template(user_turn(prompt), add_generation_prompt=True, tokenize=False)
    return prompt


def add_special_tokens(fmt: str) -> bool:
    """Whether the tokenizer adds its special tokens to :func:`model_input` (a rendered chat carries its own)."""
    return fmt != CHAT


def pipeline_input(prompt: str, fmt: str) -> str | list[dict]:
    """What ``pipeline("text-generation")`` takes for this prompt: the text (plain) or the user turn (chat)."""
    return user_turn(prompt) if fmt == CHAT else prompt


def prompt_tokens(prompt: str, tokenizer, fmt: str, answer: str | None = None) -> int:
    """Tokens of the model input for ``prompt``; with ``answer``, of the whole training sequence (answer and the
    tokens training puts after it included)."""
    if answer is None:
        return len(tokenizer(model_input(prompt, tokenizer, fmt), add_special_tokens=add_special_tokens(fmt))
                   ["input_ids"])  # fmt: skip
    return len(example_ids(tokenizer, trainer_example(prompt, answer, fmt))[1])


def completion_text(answer: str, tokenizer, fmt: str) -> str:
    """The text after :func:`model_input` that training supervises for ``answer``, without the end tokens in plain
    format (``" " + answer``) and with them in chat format (e.g. ``"부정<|im_end|>\\n"``)."""
    if fmt != CHAT:
        return " " + answer
    prompt_text = model_input("", tokenizer, fmt)
    example = trainer_example("", answer, fmt)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently before an answer than alone; "
                         "label log-likelihoods cannot be scored on it")  # fmt: skip
    return full[len(prompt_text) :]


def answer_end_ids(tokenizer, fmt: str) -> list[int]:
    """The token ids training puts right after the answer: the end-of-sequence token trl appends (plain), or what
    the chat template closes the assistant turn with (e.g. ``<|im_end|>``, ``\\n``; ``<|eot_id|>``). Scoring a
    label's log-likelihood the way it was trained means scoring these after the label."""
    if fmt != CHAT:
        return [tokenizer.eos_token_id]
    prompt, full = example_ids(tokenizer, trainer_example("", _PROBE_ANSWER, fmt))
    answer = tokenizer(_PROBE_ANSWER, add_special_tokens=False)["input_ids"]
    start = len(prompt)
    if full[:start] != prompt or full[start : start + len(answer)] != answer:
        raise ValueError("cannot find where the chat template's assistant turn ends: "
                         f"{tokenizer.decode(full[start:])!r}")  # fmt: skip
    return full[start + len(answer) :]


def stop_ids(tokenizer, fmt: str, model=None) -> list[int]:
    """Token ids that end a generated answer: the tokenizer's end-of-sequence, the model's generation-config ones,
    and in chat format the end-of-turn token training puts after the answer (the first special one of
    :func:`answer_end_ids`; a newline the template adds after it is not a stop)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(_as_list(config_eos))
    if fmt == CHAT:
        end = answer_end_ids(tokenizer, fmt)
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ids.add(next((i for i in end if i in special), end[0]))
    return sorted(ids)


def _as_list(ids: int | Sequence[int] | None) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
