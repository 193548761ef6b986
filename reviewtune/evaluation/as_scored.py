"""Exactly what the report scored, as plain transformers objects: the one documented way to load a run for serving.

    from transformers import pipeline
    from reviewtune.evaluation.as_scored import load_as_scored, pipeline_inputs

    system = load_as_scored("runs/sft_qlora_default")  # as eval/compare.py scores it (merged=True: merged/)
    generator = pipeline("text-generation", model=system.model, tokenizer=system.tokenizer)
    outputs = generator(pipeline_inputs(system, ["배송이 빨라요"]), return_full_text=False)

``outputs`` hold the answers of ``generate`` scoring (``eval/predict.py``), word for word: the model is the one the
harness loads (the NF4 base + adapter as trained, or ``merged/``), its ``generation_config`` the harness's greedy
decoding (:func:`harness_generation_config`, the one every merged model is saved with), and the inputs are the
harness's prompts, cut to the same budget, as text or as a chat turn in the run's prompt format. Classifier runs load
as scored too: ``pipeline("text-classification", model=system.model, tokenizer=system.tokenizer)`` (two-model aspect
runs: ``system.components["keywords"]`` / ``["keyword_sentiment"]``; a keyword-attention aspect run is a token
classifier whose outputs ``reviewtune.evaluation.keyword_attention`` pools: score it with ``predict``).
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import GenerationConfig

from reviewtune.evaluation.predict import answer_token_budget, generation_prompts
from reviewtune.evaluation.systems import System, load_system
from reviewtune.prompt_format import pipeline_input, stop_ids
from reviewtune.tasks import TaskSpec

# Sampling settings an instruct model's generation_config carries (Qwen: temperature 0.7, top_p 0.8, top_k 20);
# greedy decoding ignores them, and unsetting them keeps generate() from warning that they are unused.
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "typical_p")


def harness_generation_config(model, tokenizer, task: TaskSpec) -> GenerationConfig:
    """The generation config under which ``generate()`` and ``pipeline("text-generation")`` answer as ``generate``
    scoring does: greedy, the task's answer-token budget (``answer_token_budget``), stopping at the end-of-sequence
    ids training used (a chat template's end of turn included). The model's other settings (e.g. a repetition
    penalty), which ``generate()`` applies during scoring as well, are kept."""
    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    eos = stop_ids(tokenizer, task.prompt_format, model)
    config.update(
        do_sample=False,
        num_beams=1,
        max_new_tokens=answer_token_budget(task, tokenizer),
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        **dict.fromkeys(_SAMPLING),
    )
    config.validate()
    return config


def load_as_scored(run_dir: str | Path, merged: bool = False) -> System:
    """The run loaded exactly as ``eval/compare.py`` and ``eval/predict.py`` score it (``load_system``), with a
    generative model's ``generation_config`` set to the harness's greedy decoding. ``system.model`` and
    ``system.tokenizer`` are plain transformers (or PEFT) objects for ``pipeline`` or ``generate``."""
    system = load_system(run_dir, merged=merged)
    if system.kind == "generative":
        system.model.generation_config = harness_generation_config(system.model, system.tokenizer, system.task)
    return system


def pipeline_inputs(system: System, reviews: list[str]) -> list[str | list[dict]]:
    """What ``pipeline("text-generation")`` takes for ``reviews``: the harness's prompts (cut to its budget), as
    text (plain format) or as the user turn of a chat (chat format)."""
    return [pipeline_input(p, system.task.prompt_format) for p in generation_prompts(system, reviews)]
