"""Model cards: a Hugging Face ``README.md`` (YAML front matter + what was trained, on what, how well, how to
reproduce and load it) in every directory of a run, replacing the boilerplate cards PEFT and trl leave there.

Everything is read from the run directory's own files (``run_summary.json``, ``task_spec.json``,
``sample_predictions.json``, ``generation_config.json``, ``merge_info.json``), so a card says what the run holds.
The front matter goes through ``huggingface_hub.ModelCardData`` / ``ModelCard``; the body is markdown built here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from reviewtune.atomic import atomic_write_text, read_json
from reviewtune.evaluation.keyword_attention import KEYWORD_ATTENTION
from reviewtune.tasks import TaskSpec
from reviewtune.training.serving import ADAPTER_DIR, GENERATION_CONFIG

CARD = "README.md"
_TEMPLATE = "---\n{{ card_data }}\n---\n\n# {{ title }}\n\n{{ body }}\n"
_TASK_TAGS = {
    "sentiment": ["sentiment-analysis"],
    "sentiment5": ["sentiment-analysis"],
    "aspects": ["aspect-based-sentiment-analysis"],
    "regression": ["review-rating"],
}
_HUB_DATASETS = {"nsmc": "e9t/nsmc", "nsmc-raw": "e9t/nsmc"}


def recipe_command(recipe_file: str, argv: list[str] | None) -> str:
    """The command that ran the recipe (``argv``: its arguments, ``sys.argv[1:]`` when None)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["accelerate", "launch", f"recipes/{Path(recipe_file).name}", *args])


def write_model_cards(run_dir: str | Path, command: str | None = None) -> list[Path]:
    """``README.md`` in the run directory and in each model directory under it (``merged/``, an aspect run's
    ``keywords/`` and ``keyword_sentiment/``, a LoRA classifier's ``adapter/``); returns the cards written."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "run_summary.json")
    written = [_write(run_dir, run_card(run_dir, summary, command))]
    if summary["kind"] == "generative" and (run_dir / "merged" / "config.json").is_file():
        written.append(_write(run_dir / "merged", run_card(run_dir / "merged", summary, command, part="merged")))
    model_dirs = [run_dir / sub for sub in (summary.get("components") or {}).values()]
    for model_dir in model_dirs:
        sub_summary = {**summary, **read_json(model_dir / "run_summary.json")}
        written.append(_write(model_dir, run_card(model_dir, sub_summary, command, part="component")))
    for model_dir in [run_dir, *model_dirs] if summary["kind"] == "classifier" else []:
        if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
            sub_summary = {**summary, **read_json(model_dir / "run_summary.json")}
            written.append(_write(model_dir / ADAPTER_DIR, adapter_card(model_dir, sub_summary)))
    return written


def _write(directory: Path, card: ModelCard) -> Path:
    return atomic_write_text(directory / CARD, str(card))


def _card_data(summary: dict, library_name: str, extra_tags: list[str]) -> ModelCardData:
    base = str(summary.get("base_model") or "")
    on_hub = str(summary.get("base_model_hash") or "").startswith("hub:")  # a hub id, not a local directory
    generative = summary["kind"] == "generative"
    tags = ["reviewtune", "korean", *_TASK_TAGS.get(summary["task"], []), *extra_tags]
    return ModelCardData(
        base_model=base if on_hub else None,
        library_name=library_name,
        pipeline_tag="text-generation" if generative else _classifier_pipeline(summary),
        language=["ko"],
        datasets=_hub_datasets(summary) or None,
        tags=list(dict.fromkeys(tags)),
    )


def _classifier_pipeline(summary: dict) -> str:
    """The hub's pipeline tag: a keyword-attention model is a token classifier (its per-token outputs are what a
    hub widget shows); every other classifier a text classifier."""
    return "token-classification" if summary.get("head") == KEYWORD_ATTENTION else "text-classification"


def _hub_datasets(summary: dict) -> list[str]:
    """Hub datasets the records came from, where ``data_prep/prepare.py``'s report beside them names one."""
    found = []
    for entry in ((summary.get("provenance") or {}).get("data_files") or {}).values():
        path = Path(entry["path"])
        for report in (path.parent / "prep_report.json", path.parent.parent / "prep_report.json"):
            if report.is_file():
                prep = read_json(report)
                source, name = prep.get("source"), prep.get("input")
                if source in _HUB_DATASETS:
                    found.append(_HUB_DATASETS[source])
                elif source == "hf" and name and not Path(name).exists():
                    found.append(name)
                break
    return list(dict.fromkeys(found))


def run_card(model_dir: Path, summary: dict, command: str | None, part: str = "run") -> ModelCard:
    """The card of a run directory (``part="run"``), its ``merged/`` model, or one model of an aspect system."""
    generative = summary["kind"] == "generative"
    method = summary["method"]
    adapter_only = generative and part == "run" and method != "full"
    library = "peft" if adapter_only else "transformers"
    extra = ["trl", "sft", method] if generative else ["text-classification", method]
    extra += ["merged"] if part == "merged" else []
    task = TaskSpec.load(model_dir if (model_dir / "task_spec.json").is_file() else model_dir.parent)
    what = {"run": "run", "merged": "merged model", "component": f"`{summary.get('component')}` model"}[part]
    intro = (
        f"A {_method_name(summary)} of {_base_name(summary)} for the reviewtune task **{task.name}**, trained with "
        f"`recipes/{summary['recipe']}.py`. This directory is the {what}"
        + (": the LoRA adapter (the base model is loaded from where it was recorded)." if adapter_only else ".")
    )
    sections = [intro, _task_section(task, summary), _data_section(summary), _training_section(summary),
                _results_section(model_dir, summary, part), _reproduce_section(summary, command),
                _loading_section(model_dir, summary, task, part)]  # fmt: skip
    return ModelCard.from_template(_card_data(summary, library, extra), template_str=_TEMPLATE,
                                   title=f"{_name(model_dir, part)} (reviewtune {summary['task']})",
                                   body="\n\n".join(s for s in sections if s))  # fmt: skip


def adapter_card(model_dir: Path, summary: dict) -> ModelCard:
    """The card of a LoRA classifier's ``adapter/``: the loadable model is the directory above."""
    token_level = summary.get("head") == KEYWORD_ATTENTION
    auto = "AutoModelForTokenClassification" if token_level else "AutoModelForSequenceClassification"
    above = ("holds the merged model that the harness scores (`load_as_scored`, a token classifier read by keyword "
             "attention)" if token_level else
             "holds the merged model that `pipeline(\"text-classification\", model=...)` loads with its label names")
    body = (
        f"The LoRA adapter (PEFT) of the classifier in `{model_dir.name}/`, kept here so that the directory above "
        f"{above}. Loading this adapter onto its base needs the classifier's `config.json` (head size and label "
        "names):\n\n"
        f"```python\nfrom peft import PeftModel\nfrom transformers import AutoConfig, {auto}\n\n"
        f"config = AutoConfig.from_pretrained(\"{model_dir}\")\n"
        f"base = {auto}.from_pretrained(\"{summary['base_model']}\", config=config)\n"
        f"model = PeftModel.from_pretrained(base, \"{model_dir / ADAPTER_DIR}\")\n```\n\n"
        f"`AutoPeftModelFor{auto.removeprefix('AutoModelFor')}` on this directory alone builds the head from the base "
        "model's config instead (wrong label names, or a size mismatch). See the card one level up for the run."
    )  # fmt: skip
    return ModelCard.from_template(_card_data(summary, "peft", ["lora"]), template_str=_TEMPLATE,
                                   title=f"{_name(model_dir, 'run')} LoRA adapter", body=body)  # fmt: skip


def _name(model_dir: Path, part: str) -> str:
    model_dir = model_dir.resolve()
    return model_dir.name if part == "run" else f"{model_dir.parent.name}/{model_dir.name}"


def _method_name(summary: dict) -> str:
    config = summary.get("config") or {}
    if summary["method"] == "full":
        return "full fine-tune"
    lora = f"r={config.get('lora_r')}, alpha={config.get('lora_alpha')}"
    if summary["method"] == "qlora":
        return f"QLoRA fine-tune (4-bit NF4 base, LoRA {lora})"
    return f"LoRA fine-tune ({lora})"


def _base_name(summary: dict) -> str:
    base = str(summary.get("base_model"))
    if str(summary.get("base_model_hash") or "").startswith("hub:"):
        return f"[{base}](https://huggingface.co/{base}) (commit {summary['base_model_hash'][4:16]})"
    return f"the local base model `{base}` (sha256 {str(summary.get('base_model_hash'))[:12]})"


def _task_section(task: TaskSpec, summary: dict) -> str:
    lines = ["## Task", "", f"- task: `{task.name}`"]
    if task.name in ("sentiment", "sentiment5"):
        lines.append(f"- labels: {', '.join(task.label_names)}")
    if task.name == "aspects":
        lines.append(f"- keywords: {', '.join(task.keywords)}; polarities {task.polarity_names}")
    if summary["kind"] == "generative":
        example = task.template.format(review="{review}", instruction=task.instruction)
        fmt = "plain text: the answer follows after a space, then EOS"
        if task.prompt_format == "chat":
            fmt = "the tokenizer's chat template: this text is the user turn, the answer the assistant turn"
        lines += [f"- prompt format: `{task.prompt_format}` ({fmt})", "", "```text", example, "```"]
    elif summary.get("component") == "keyword_sentiment":
        lines.append(f"- input: `{task.keyword_template.encode('unicode_escape').decode()}`")
    return "\n".join(lines)


def _data_section(summary: dict) -> str:
    files = (summary.get("provenance") or {}).get("data_files") or {}
    rows = [[split, f"`{f['path']}`", f["sha256"][:12]] for split, f in files.items()]
    lines = ["## Data", "", _table(["split", "records file", "sha256"], rows), ""]
    lines.append(f"Examples: train {summary.get('train_examples')}, validation {summary.get('eval_examples')}"
                 + (f", test {summary['examples']['test']}" if "test" in (summary.get("examples") or {}) else "")
                 + f"; reviews shortened to fit: {summary.get('shortened_examples')}.")  # fmt: skip
    split = summary.get("split") or {}
    if split:
        lines.append(f"Records before max_train_samples / max_eval_samples: train {split.get('train')}, validation "
                     f"{split.get('validation')} (ids sha256 {str(split.get('validation_ids_sha256'))[:12]}).")
    return "\n".join(lines)


def _training_section(summary: dict) -> str:
    config = summary.get("config") or {}
    hardware = ((summary.get("provenance") or {}).get("hardware")) or {}
    devices = ", ".join(hardware.get("gpus") or []) or f"CPU ({hardware.get('cpu_count')} cores)"
    rows = [["method", _method_name(summary)]]
    if summary["method"] != "full":
        full = list(dict.fromkeys(str(m).split(".")[-1] for m in config.get("lora_modules_to_save") or []))
        full = [*full, "the classification head"] if summary["kind"] == "classifier" else full
        rows.append(["LoRA", f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout "
                             f"{config.get('lora_dropout')}, target modules {config.get('lora_target_modules')}"
                             + (f"; trained in full: {', '.join(map(str, full))}" if full else "")])  # fmt: skip
    if summary["method"] == "qlora":
        rows.append(["quantisation", f"NF4, double quantisation {config.get('use_bnb_nested_quant')}"])
    steps = f"{summary.get('global_step') or config.get('max_steps')} steps" if (config.get("max_steps") or -1) > 0 \
        else f"{config.get('num_train_epochs')} epoch(s)"
    rows += [
        ["parameters", f"{summary.get('trainable_params'):,} trained of {summary.get('total_params'):,}"],
        ["optimisation", f"lr {config.get('learning_rate')} ({config.get('lr_scheduler_type')}), {steps}, batch "
                         f"{config.get('per_device_train_batch_size')} x {config.get('gradient_accumulation_steps')} "
                         f"accumulation x {summary.get('world_size', 1)} process(es), seed {config.get('seed')}"],
        ["max length", f"{config.get('max_length')} tokens"],
        ["training time", _seconds(summary.get("train_runtime_s"))
         + (f", {summary['train_tokens_per_s']:.0f} tokens/s" if summary.get("train_tokens_per_s") else "")],
        ["peak memory", f"{(summary.get('peak_memory_bytes') or 0) / 2**30:.2f} GiB"],
        ["hardware", f"{devices}; {hardware.get('platform')}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in ((summary.get("provenance") or {}).get("versions") or {}).items()
                               if v)],
    ]  # fmt: skip
    return "## Training\n\n" + _table(["", ""], rows)


def _results_section(model_dir: Path, summary: dict, part: str) -> str:
    parts = ["## Results"]
    if summary.get("final_train_loss") is not None or summary.get("final_eval_loss") is not None:
        parts.append(f"Final train loss {_num(summary.get('final_train_loss'))}; final validation loss "
                     f"{_num(summary.get('final_eval_loss'))}.")  # fmt: skip
    metrics = summary.get("metrics") or {}
    if metrics:
        names = list(dict.fromkeys(k for m in metrics.values() for k in m if not isinstance(m[k], dict | list)))
        parts.append(_table(["split", *names], [[split, *(_num(m.get(n)) for n in names)]
                                                for split, m in metrics.items()]))  # fmt: skip
        if summary["task"] == "aspects":
            parts.append("Keyword thresholds are tuned on validation: validation scores are optimistic, test is not.")
    samples_file = (model_dir if part == "run" else model_dir.parent) / "sample_predictions.json"
    if summary["kind"] == "generative" and samples_file.is_file():
        s = read_json(samples_file)
        parts.append(f"Sample predictions (`sample_predictions.json`, {s['n']} held-out reviews, answered as "
                     f"`eval/compare.py`'s generate scoring): {s['valid_after']} valid, {s['correct_after']} exactly "
                     f"right after training ({s['valid_before']} valid before).")  # fmt: skip
    if (model_dir / "learning_curves.png").is_file():
        parts.append("![learning curves](learning_curves.png)\n\nLosses and the task metric on validation against "
                     "optimizer steps and training seconds (`learning_curves.json`).")  # fmt: skip
    parts.append("Head-to-head quality, speed and cost against the other systems: `python eval/compare.py`.")
    return "\n\n".join(parts)


def _reproduce_section(summary: dict, command: str | None) -> str:
    commit = (summary.get("provenance") or {}).get("git_commit")
    lines = ["## Reproduce", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(f"reviewtune commit `{commit}`; the resolved configuration is `config` in `run_summary.json` "
                 "(re-launching into the same output_dir resumes from its last checkpoint).")  # fmt: skip
    return "\n".join(lines)


def _loading_section(model_dir: Path, summary: dict, task: TaskSpec, part: str) -> str:
    section = (_classifier_loading if summary["kind"] == "classifier" else _generative_loading)(
        model_dir, summary, task, part)  # fmt: skip
    remote_code = (summary.get("config") or {}).get("trust_remote_code")
    if remote_code:  # the run's own setting, repeated for the loads above
        section += ("\n\nThe model runs code from its repository (the run set `trust_remote_code`): pass "
                    f"`trust_remote_code={remote_code!r}` to the plain transformers loads above.")  # fmt: skip
    return section


def _generative_loading(model_dir: Path, summary: dict, task: TaskSpec, part: str) -> str:
    run = model_dir if part == "run" else model_dir.parent
    gen = read_json(model_dir / GENERATION_CONFIG) if (model_dir / GENERATION_CONFIG).is_file() else {}
    args = f"do_sample=False, max_new_tokens={gen.get('max_new_tokens')}, eos_token_id={gen.get('eos_token_id')}"
    chat = task.prompt_format == "chat"
    text_input = ('send `[{"role": "user", "content": prompt}]`, the tokenizer\'s chat template adds the rest' if chat
                  else "send `prompt` as it is; the answer follows after a space, then EOS")  # fmt: skip
    lines = ["## How to load", "", "What the report scored (`eval/compare.py`, `eval/predict.py`), in one call:", "",
             "```python", "from transformers import pipeline",
             "from reviewtune.evaluation.as_scored import load_as_scored, pipeline_inputs", "",
             f'system = load_as_scored("{run}"{", merged=True" if part == "merged" else ""})',
             "generator = pipeline(\"text-generation\", model=system.model, tokenizer=system.tokenizer)",
             'generator(pipeline_inputs(system, ["배송이 빨라요"]), return_full_text=False)', "```", "",
             f"Any other tool: {text_input} (`prompt`: the text under Task; the harness cuts reviews so that the "
             f"prompt fits the trained {(summary.get('config') or {}).get('max_length')} tokens).", "",
             "Plain Hugging Face loads:", ""]  # fmt: skip
    rows = []
    merged = run / "merged"
    if summary["method"] == "full":
        rows.append([f'`pipeline("text-generation", model="{run}")`', "yes: the fine-tuned model, with the "
                     "harness's greedy decoding in its `generation_config.json`"])  # fmt: skip
    else:
        if (merged / "config.json").is_file():
            rows.append([f'`pipeline("text-generation", model="{merged}")`', "yes: the adapter merged into the "
                         + ("de-quantised NF4 base" if summary["method"] == "qlora" else "base")
                         + "; its `generation_config.json` is the harness's greedy decoding"])  # fmt: skip
        if summary["method"] == "qlora":
            double = (summary.get("config") or {}).get("use_bnb_nested_quant", True)
            rows += [
                [f'`AutoPeftModelForCausalLM.from_pretrained("{run}", quantization_config=BitsAndBytesConfig('
                 f'load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant={double}, '
                 'bnb_4bit_compute_dtype=torch.bfloat16))` (float32 on a CPU)',
                 f"yes (the NF4 base as trained + the adapter), with `{args}`; on a CPU with AVX512-BF16 only after "
                 "`reviewtune.models.quantization.keep_4bit_weights_unpacked(model)`: else bitsandbytes packs the "
                 "weights for a kernel that computes a slightly different function (measured: other answers)"],
                [f'`AutoPeftModelForCausalLM.from_pretrained("{run}")`, `pipeline("text-generation", '
                 f'model="{run}")`', "no: the base in its saved dtype, not the NF4 weights the adapter was trained "
                 "on, and the base's generation config (it may sample)"],
            ]  # fmt: skip
        else:
            rows.append([f'`AutoPeftModelForCausalLM.from_pretrained("{run}")`', f"yes, with `{args}`"])
    lines.append(_table(["load", "what the report scored?"], rows))
    if summary["method"] != "full":
        lines += ["", "An adapter directory has no generation config of its own for transformers: it takes the base "
                      "model's, which may sample. Pass the harness's decoding to `generate()`: "
                      f'`generation_config=GenerationConfig.from_pretrained("{run}")`, i.e. `{args}`.']  # fmt: skip
    return "\n".join(lines)


def _classifier_loading(model_dir: Path, summary: dict, task: TaskSpec, part: str) -> str:
    lines = ["## How to load", ""]
    aspect_system = summary.get("head") == KEYWORD_ATTENTION or (task.name == "aspects" and part == "run")
    if aspect_system:  # loaded and scored through the harness
        if summary.get("head") == KEYWORD_ATTENTION:
            what = ("One token-classification model (`AutoModelForTokenClassification`), read by keyword attention "
                    "(`reviewtune/evaluation/keyword_attention.py`): a presence score per keyword (one threshold per "
                    "keyword in `thresholds.json`) and, from the tokens that reveal the keyword, its polarity.")
            after = ("A text-classification pipeline cannot read it: its outputs are per token, pooled per keyword by "
                     "`keyword_attention`.")
        else:
            what = ("Two models: `keywords/` (multi-label, one threshold per keyword in `keywords/thresholds.json`) "
                    "and `keyword_sentiment/` (the polarity of one keyword).")
            after = ("Each model loads on its own with "
                     f'`pipeline("text-classification", model="{model_dir}/keywords")` (see its card).')
        lines += [f"{what} The system as scored:", "", "```python",
                  "from reviewtune.evaluation.as_scored import load_as_scored",
                  "from reviewtune.evaluation.predict import predict", "",
                  f'system = load_as_scored("{model_dir}")',
                  'predict(system, [{"id": "1", "text": "배송이 빨라요"}])', "```", "", after]  # fmt: skip
        return "\n".join(lines)
    names = ", ".join(f"`{n}`" for n in read_json(model_dir / "config.json").get("id2label", {}).values())
    extra = ", top_k=None" if summary.get("component") == "keywords" else ""
    lines += ["```python", "from transformers import pipeline", "",
              f'classifier = pipeline("text-classification", model="{model_dir}"{extra})', "```", "",
              f"This directory is the model the report scored, labels {names}."]  # fmt: skip
    if summary.get("component") == "keywords":
        lines.append("Scores are sigmoids; a keyword is detected at its own threshold from `thresholds.json`.")
    if summary.get("component") == "keyword_sentiment":
        lines.append("Its input is a review and one keyword: `###입력: {review}\\n###키워드: {keyword}`.")
    rows = [[f'`pipeline("text-classification", model="{model_dir}")`, '
             f'`AutoModelForSequenceClassification.from_pretrained("{model_dir}")`', "yes"]]  # fmt: skip
    if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        rows += [[f'`PeftModel.from_pretrained(base, "{model_dir}/{ADAPTER_DIR}")` on a base built with this '
                  "directory's `config.json`", "yes, up to float rounding (the adapter this model was merged from)"],
                 [f'`pipeline("text-classification", model="{model_dir}/{ADAPTER_DIR}")`, '
                  "`AutoPeftModelForSequenceClassification` on it", "no: the head is rebuilt from the base model's "
                  "config (`LABEL_0/1` names, or a size mismatch)"]]  # fmt: skip
    lines += ["", _table(["load", "what the report scored?"], rows)]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _seconds(s: float | None) -> str:
    return "unknown" if s is None else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
