"""The head-to-head harness: every system scored on the same test examples, one report.

The embedded default (after ``quickstart.py`` or the two recipes have written their default runs):

    python eval/compare.py --config eval/configs/compare_default.yaml

Any runs, any records file (YAML keys and command-line flags are the fields of ``CompareArguments``):

    python eval/compare.py --config eval/configs/compare_nsmc_sentiment.yaml \\
        --generative_runs runs/sft_nsmc --classifier_runs runs/roberta_nsmc --max_test_samples 2000

Systems: each generative run once per scoring mode in ``generative_scoring`` (``generate``, ``loglik`` only for
the closed label sets ``sentiment``/``sentiment5``, ``constrained``: greedy decoding restricted to the task's
answer language), each classifier run (one model or the two-model aspect
system), and the built-in baselines fitted on ``train_file``. Every system sees the same examples in the
same order and is scored in its own process (cost measured there). Writes ``report.json``, ``report.md``,
``report.html`` and ``predictions/<system>.jsonl`` into ``out_dir`` and prints the report's path.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from trl import TrlParser

from reviewtune.atomic import atomic_write_jsonl, read_json
from reviewtune.cli import argument_parser, run_cli
from reviewtune.records import load_task_records, read_records
from reviewtune.tasks import TaskSpec, get_task

logger = logging.getLogger("reviewtune.compare")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "compare_default.yaml"


@dataclass
class CompareArguments:
    """What to compare, on which examples, and how cost is measured."""

    # Data
    test_file: str | None = field(
        default=None, metadata={"help": "records.jsonl every system is scored on (default: embedded test split)."}
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "records.jsonl the baselines are fitted on (default: the runs' own train file from their "
            "run_summary.json provenance, else the embedded train split)."
        },
    )
    task: str | None = field(
        default=None, metadata={"help": "sentiment, sentiment5, aspects or regression (default: the runs' task)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Score a seeded random subsample of this many test records (stated)."}
    )
    subsample_seed: int = field(default=0, metadata={"help": "Seed of the test subsample and of the bootstrap."})
    encoding: str = field(default="utf-8", metadata={"help": "Encoding of test_file and train_file (BOM accepted)."})
    # Systems
    generative_runs: list[str] = field(
        default_factory=list, metadata={"help": "Run directories of recipes/sft_qlora.py."}
    )
    generative_scoring: list[str] = field(
        default_factory=lambda: ["generate", "loglik"],
        metadata={
            "help": "Scoring modes for each generative run: generate, loglik (skipped where the task has no label "
            "set), constrained."
        },
    )
    merged: bool = field(default=False, metadata={"help": "Score generative runs' merged/ model, not base + adapter."})
    classifier_runs: list[str] = field(
        default_factory=list, metadata={"help": "Run directories of recipes/classify_roberta.py."}
    )
    baselines: list[str] = field(
        default_factory=lambda: ["majority", "tfidf_lr"],
        metadata={"help": "Built-in baselines (majority, tfidf_lr), or 'none'."},
    )
    # Measurement
    batch_size: int = field(default=16, metadata={"help": "Batch size of the throughput pass (all systems)."})
    latency_sample: int = field(default=50, metadata={"help": "Reviews timed one at a time for p50/p95 latency."})
    isolate: bool = field(
        default=True, metadata={"help": "Score each system in its own process (peak memory per system)."}
    )
    n_resamples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples of the 95 percent intervals (0: none)."}
    )
    # Output
    out_dir: str = field(default="outputs/compare", metadata={"help": "Where the report is written."})

    def __post_init__(self) -> None:
        bad = set(self.generative_scoring) - {"generate", "loglik", "constrained"}
        if bad:
            raise ValueError(f"generative_scoring: unknown mode(s) {sorted(bad)}; use generate, loglik, constrained")
        self.baselines = [b for b in self.baselines if b != "none"]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_test_samples is not None and self.max_test_samples < 1:
            raise ValueError(f"max_test_samples must be >= 1, got {self.max_test_samples}")


def parse_args(argv: list[str] | None = None) -> CompareArguments:
    """``--config FILE`` (default: the embedded default config) plus command-line overrides; unknown keys fail."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    config_path = argv[argv.index("--config") + 1]
    try:
        usage = "python eval/compare.py [--config FILE] [--OPTION VALUE ...]"
        (args,) = argument_parser(TrlParser, CompareArguments, usage, allow_abbrev=False).parse_args_and_config(argv)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from e
    return args


def _run_task(run_dir: str) -> TaskSpec:
    path = Path(run_dir) / "task_spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no task_spec.json; is this a run directory written by a recipe?")
    return TaskSpec.load(run_dir)


def resolve_task(args: CompareArguments) -> TaskSpec:
    """The task every run was trained for (they must agree with each other and with ``--task``)."""
    runs = args.generative_runs + args.classifier_runs
    specs = {run: _run_task(run) for run in runs}
    if not specs:
        if not args.task:
            raise ValueError("no runs given: set task (and baselines) or pass generative_runs / classifier_runs")
        return get_task(args.task)
    first_run, task = next(iter(specs.items()))
    for run, spec in specs.items():
        for key in ("name", "label_names", "keywords", "polarities"):
            if getattr(spec, key) != getattr(task, key):
                raise ValueError(
                    f"runs {first_run} and {run} were trained for different tasks: task_spec.json field {key!r} is "
                    f"{getattr(task, key)!r} vs {getattr(spec, key)!r}"
                )
    if args.task and args.task != task.name:
        raise ValueError(f"task is {args.task!r} but the runs were trained for {task.name!r}")
    return task


def resolve_train_file(args: CompareArguments) -> str | None:
    """The baselines' train file: given, else the runs' own (from their provenance), else the embedded default."""
    if args.train_file:
        return args.train_file
    for run in args.generative_runs + args.classifier_runs:
        summary_path = Path(run) / "run_summary.json"
        files = (read_json(summary_path).get("provenance") or {}).get("data_files") or {}
        path = (files.get("train") or {}).get("path")
        if path and Path(path).is_file():
            return path
    if args.test_file is None:
        from reviewtune.defaults import default_file

        return default_file("train")
    return None


def load_test_records(
    path: str, task: TaskSpec, max_samples: int | None, seed: int, encoding: str = "utf-8"
) -> tuple[list[dict], dict[str, int], dict | None]:
    """Usable test records (in file order; a repeated id dropped and counted, as every unusable record), dropped
    counts by reason, and the subsample statement."""
    kept, report = load_task_records(path, task, encoding)
    dropped = report["dropped"]
    subsample = None
    if max_samples is not None and max_samples < len(kept):
        idx = np.sort(np.random.default_rng(seed).choice(len(kept), size=max_samples, replace=False))
        subsample = {"n": int(max_samples), "seed": int(seed), "total": len(kept)}
        kept = [kept[i] for i in idx]
    return kept, dropped, subsample


def regression_invalid_score(task: TaskSpec, train_records: list[dict] | None, test_records: list[dict]) -> dict | None:
    """What an invalid regression output is scored as: the mean score of the training records (the test records'
    when no train file is known, stated). ``None`` for the other tasks, where invalid is simply wrong."""
    if task.name != "regression":
        return None
    usable = [r for r in train_records or [] if isinstance(r.get("score"), int | float)]
    source = "train" if usable else "test (no train file)"
    scores = [float(r["score"]) for r in (usable or test_records)]
    if not usable:
        logger.warning("no train records: invalid regression outputs are scored as the test records' mean")
    return {"value": float(np.mean(scores)), "from": source}


def system_specs(args: CompareArguments, task: TaskSpec, train_records: list[dict] | None):
    """One ``SystemSpec`` per (run, scoring mode) and per baseline, with unique names."""
    from reviewtune.evaluation.cost import SystemSpec
    from reviewtune.evaluation.systems import LOGLIK_TASKS

    specs = []
    for run in args.generative_runs:
        for mode in args.generative_scoring:
            if mode == "loglik" and task.name not in LOGLIK_TASKS:
                logger.info("%s: loglik scoring skipped, task %s has no closed label set", run, task.name)
                continue
            specs.append(SystemSpec(f"{Path(run).name}/{mode}", "generative", mode, run, merged=args.merged))
    for run in args.classifier_runs:
        specs.append(SystemSpec(Path(run).name, "classifier", "classifier", run))
    if args.baselines:
        from reviewtune.evaluation.baselines import fit_baseline

        if not train_records:
            raise ValueError("baselines need train records: set train_file (or baselines: [none])")
        for name in args.baselines:
            start = time.perf_counter()
            baseline = fit_baseline(name, task, train_records, seed=args.subsample_seed)
            logger.info("baseline %s fitted in %.1f s", name, time.perf_counter() - start)
            specs.append(SystemSpec(f"baseline/{name}", "baseline", name, baseline=baseline))
    seen: dict[str, int] = {}
    for spec in specs:  # two runs in directories with the same name
        seen[spec.name] = seen.get(spec.name, 0) + 1
        if seen[spec.name] > 1:
            spec.name = f"{spec.name}#{seen[spec.name]}"
    if not specs:
        raise ValueError("nothing to compare: no runs and no baselines")
    return specs


def highlight_disagreements(
    task: TaskSpec, records: list[dict], specs: list, predictions_by_system: dict[str, list[dict]], first: list[str]
) -> tuple[list[dict], int]:
    """The report's disagreement examples, with occlusion highlights (``reviewtune.analysis.highlights``) from every
    system that has probabilities to occlude: classifiers, and generative runs scored by ``loglik``. Each
    highlight explains the system's own prediction (its label, or for the aspect classifier its most
    probable keyword). Baselines and ``generate`` scoring have none and are left out, not failed."""
    from reviewtune.analysis.highlights import NotApplicable, highlight_scores, peek_system, target_kind
    from reviewtune.evaluation.systems import load_system
    from reviewtune.report.comparisons import disagreement_examples

    examples, total = disagreement_examples(task, records, predictions_by_system, first=first)
    texts = [ex["text"] for ex in examples]
    loaded: dict[tuple[str, bool], object] = {}  # a run scored two ways is loaded once
    for spec in specs:
        if not texts or spec.run_dir is None:
            continue
        scoring = spec.scoring if spec.kind == "generative" else None
        try:
            target_kind(peek_system(spec.run_dir), scoring)
        except NotApplicable as e:
            logger.info("no highlights for %s: %s", spec.name, e)
            continue
        key = (spec.run_dir, spec.merged)
        if key not in loaded:
            try:
                loaded[key] = load_system(spec.run_dir, merged=spec.merged)
            except Exception as e:  # scored in its own process, but not loadable here: no highlights, no crash
                logger.warning("no highlights for %s: %s: %s", spec.name, type(e).__name__, e)
                continue
        start = time.perf_counter()
        for ex, scores in zip(examples, highlight_scores(loaded[key], texts, scoring=scoring), strict=True):
            ex["highlights"] = {**(ex["highlights"] or {}), spec.name: scores}
        logger.info("highlights for %s: %d examples in %.1f s", spec.name, len(texts), time.perf_counter() - start)
    return examples, total


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#-]+", "_", name).strip("_") or "system"


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from reviewtune.evaluation.cost import score_and_measure, score_isolated
    from reviewtune.evaluation.metrics import task_metrics
    from reviewtune.report.write import write_report

    wall = time.perf_counter()

    # Task and data: every system sees exactly these records, in this order
    task = resolve_task(args)
    if args.test_file is None:
        from reviewtune.defaults import default_file

        args.test_file = default_file("test")
    records, dropped, subsample = load_test_records(args.test_file, task, args.max_test_samples, args.subsample_seed,
                                                    args.encoding)  # fmt: skip
    logger.info("task %s: %d test records (%d dropped: %s)%s", task.name, len(records), sum(dropped.values()),
                dropped, f", subsample {subsample}" if subsample else "")  # fmt: skip
    needs_train = args.baselines or task.name == "regression"
    train_file = resolve_train_file(args) if needs_train else None
    train_records = read_records(train_file, args.encoding) if train_file else None
    invalid_score = regression_invalid_score(task, train_records, records)

    # Systems: score each (in its own process) and measure its cost
    specs = system_specs(args, task, train_records)
    predictions_by_system, systems, failed = {}, [], []
    score = score_isolated if args.isolate else score_and_measure
    for i, spec in enumerate(specs, 1):
        logger.info("[%d/%d] scoring %s (%s, %s)", i, len(specs), spec.name, spec.kind, spec.scoring)
        start = time.perf_counter()
        try:
            predictions, cost = score(spec, records, args.batch_size, args.latency_sample)
        except Exception as e:  # one system that cannot be loaded or scored must not sink the others' report
            error = f"{type(e).__name__}: {e}"
            logger.error("[%d/%d] %s could not be scored: %s", i, len(specs), spec.name, error)
            failed.append({"name": spec.name, "kind": spec.kind, "scoring": spec.scoring, "run_dir": spec.run_dir,
                           "error": error})  # fmt: skip
            continue
        metrics = task_metrics(task, records, predictions, n_resamples=args.n_resamples, seed=args.subsample_seed,
                               invalid_score=invalid_score and invalid_score["value"])  # fmt: skip
        logger.info("[%d/%d] %s done in %.1f s: %s = %s, invalid %.1f%%", i, len(specs), spec.name,
                    time.perf_counter() - start, metrics["primary_metric"], metrics.get(metrics["primary_metric"]),
                    100 * metrics["invalid_rate"])  # fmt: skip
        predictions_by_system[spec.name] = predictions
        systems.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "scoring": spec.scoring,
                "run_dir": spec.run_dir,
                "metrics": metrics,
                "cost": cost,
            }
        )

    # Report
    if not systems:
        raise RuntimeError(f"no system could be scored: {'; '.join(f['name'] + ': ' + f['error'] for f in failed)}")
    specs = [spec for spec in specs if spec.name in predictions_by_system]
    out = Path(args.out_dir)
    for name, predictions in predictions_by_system.items():
        atomic_write_jsonl(out / "predictions" / f"{_file_name(name)}.jsonl", predictions)
    report = {
        "task": task,
        "test_file": str(args.test_file),
        "train_file": str(train_file) if train_file else None,
        "invalid_score": invalid_score,
        "subsample": subsample,
        "test_records_dropped": dropped,
        "systems": systems,
        "failed_systems": failed,
        "config": {k: v for k, v in vars(args).items()},
    }
    models = [spec.name for spec in specs if spec.kind != "baseline"]
    report["disagreements"], report["n_disagreements"] = highlight_disagreements(
        task, records, specs, predictions_by_system, first=models
    )
    report["wall_time_s"] = round(time.perf_counter() - wall, 1)
    paths = write_report(out, report, records, predictions_by_system)
    print(f"\nReport: {paths['md']} (also {paths['html'].name}, {paths['json'].name}) in {report['wall_time_s']:.0f} s")
    for f in failed:
        print(f"Not scored: {f['name']}: {f['error']}")
    return paths["md"]


if __name__ == "__main__":
    sys.exit(run_cli(main))
