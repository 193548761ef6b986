"""What a system costs to run, measured the same way for every system: latency, throughput, memory, size.

Each system is scored in its own fresh Python process (:func:`score_isolated`): peak resident memory
never falls within a process, so systems measured one after another in one process would inherit the
previous one's peak. The child loads the system, predicts every record at ``batch_size`` (timed:
throughput), then times ``latency_sample`` single-review predictions (batch 1: p50 / p95 latency), and
reports its peak memory with the predictions. The child imports only what its system needs (a baseline
process never loads torch), so the memory figures compare what each system really needs.

Cost keys: ``latency_p50_ms``, ``latency_p95_ms``, ``throughput_per_s``, ``batch_size``,
``peak_memory_bytes`` (CUDA peak allocated on a GPU, else the process's peak RSS), ``trainable_params``,
``total_params``, ``size_on_disk_bytes``, ``train_runtime_s`` (+ ``peak_rss_bytes``, ``memory_measure``,
``load_s``, ``n_latency``, ``device``, ``weights``: how the model was held, e.g. ``nf4-dequantized`` on a CPU).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reviewtune.training.run_directory import peak_rss_bytes

COST_KEYS = (
    "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "batch_size", "peak_memory_bytes",
    "trainable_params", "total_params", "size_on_disk_bytes", "train_runtime_s",
)  # fmt: skip
DEFAULT_LATENCY_SAMPLE = 50


@dataclass
class SystemSpec:
    """One system to score: a run directory with a scoring mode, or a fitted baseline."""

    name: str
    kind: str  # "generative" | "classifier" | "baseline"
    scoring: str  # "generate" | "loglik" | "constrained" | "classifier" | the baseline's name
    run_dir: str | None = None
    baseline: Any = None  # a fitted ``reviewtune.baselines.Baseline`` (pickled into the child process)
    merged: bool = False  # generative runs: score ``merged/`` instead of base + adapter


def _peak_memory() -> tuple[int, str]:
    """(bytes, what was measured). Unlike ``run_summary.peak_memory_bytes`` this never imports torch
    itself: importing it just to ask would raise the very peak RSS being measured."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    return peak_rss_bytes(), "peak_rss"


def size_on_disk(paths: list[str | os.PathLike]) -> int:
    return int(sum(Path(p).stat().st_size for p in paths))


def latency_percentiles(predict_one: Callable[[list[dict]], Any], records: list[dict], n: int) -> dict[str, Any]:
    """p50 / p95 wall time (ms) of predicting one review at a time over the first ``n`` records.

    One untimed warm-up call first (lazy initialisation, first-call allocation).
    """
    sample = records[: max(0, n)]
    if not sample:
        return {"latency_p50_ms": None, "latency_p95_ms": None, "n_latency": 0}
    predict_one([sample[0]])
    times = []
    for r in sample:
        start = time.perf_counter()
        predict_one([r])
        times.append((time.perf_counter() - start) * 1000)
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p95_ms": float(np.percentile(times, 95)),
        "n_latency": len(times),
    }


def score_and_measure(
    spec: SystemSpec, records: list[dict], batch_size: int, latency_sample: int, progress: bool = True
) -> tuple[list[dict], dict[str, Any]]:
    """Predictions for ``records`` and the cost dict, measured in this process (see :func:`score_isolated`)."""
    start = time.perf_counter()
    if spec.kind == "baseline":
        baseline = spec.baseline

        def predict_batch(batch: list[dict], progress: bool = False) -> list[dict]:
            return baseline.predict(batch)

        params = baseline.parameter_count()
        static = {
            "trainable_params": params,
            "total_params": params,
            "size_on_disk_bytes": baseline.serialized_bytes(),
            "train_runtime_s": baseline.train_runtime_s,
            "device": "cpu",
            "weights": "scikit-learn",
        }
    else:
        from reviewtune.evaluation.predict import predict
        from reviewtune.evaluation.systems import load_system
        from reviewtune.training.run_directory import count_parameters

        system = load_system(spec.run_dir, merged=spec.merged)

        def predict_batch(batch: list[dict], progress: bool = False) -> list[dict]:
            return predict(system, batch, scoring=spec.scoring, batch_size=batch_size, progress=progress)

        counted = [count_parameters(m) for m in system.models()]
        summary = system.summary
        static = {
            "trainable_params": summary.get("trainable_params", sum(c[0] for c in counted)),
            "total_params": summary.get("total_params", sum(c[1] for c in counted)),
            "size_on_disk_bytes": size_on_disk(system.weight_paths),
            "train_runtime_s": summary.get("train_runtime_s"),
            "device": str(next(system.models()[0].parameters()).device),
            "weights": system.weights or str(next(system.models()[0].parameters()).dtype).removeprefix("torch."),
        }
    load_s = time.perf_counter() - start

    # Throughput: every record, at batch_size (baselines too, so the batches are the same).
    start = time.perf_counter()
    if spec.kind == "baseline":
        predictions = []
        for i in range(0, len(records), batch_size):
            predictions += predict_batch(records[i : i + batch_size])
    else:
        predictions = predict_batch(records, progress=progress)
    elapsed = time.perf_counter() - start
    latency = latency_percentiles(predict_batch, records, latency_sample)
    peak, measure = _peak_memory()
    cost = {
        **latency,
        "throughput_per_s": len(records) / elapsed if records and elapsed > 0 else None,
        "batch_size": batch_size,
        "peak_memory_bytes": peak,
        **static,
        "peak_rss_bytes": peak_rss_bytes(),
        "memory_measure": measure,
        "load_s": load_s,
    }
    return predictions, {**{k: cost[k] for k in COST_KEYS}, **cost}


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable in the child even when not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def score_isolated(
    spec: SystemSpec, records: list[dict], batch_size: int, latency_sample: int, progress: bool = True
) -> tuple[list[dict], dict[str, Any]]:
    """:func:`score_and_measure` in a fresh Python process (``python -m reviewtune.evaluation.cost``).

    Arguments and results travel as pickles in a temporary directory; the child's progress bars and
    errors go to this process's stderr, and a failing child raises ``RuntimeError`` naming the system and
    the child's error.
    """
    with tempfile.TemporaryDirectory(prefix="reviewtune-cost-") as tmp:
        args_path, result_path = Path(tmp) / "args.pkl", Path(tmp) / "result.pkl"
        error_path = result_path.with_suffix(".error")
        with open(args_path, "wb") as f:
            pickle.dump((spec, records, batch_size, latency_sample, progress), f, protocol=pickle.HIGHEST_PROTOCOL)
        proc = subprocess.run(
            [sys.executable, "-m", "reviewtune.evaluation.cost", str(args_path), str(result_path)], env=_child_env()
        )
        if proc.returncode != 0 or not result_path.is_file():
            error = error_path.read_text(encoding="utf-8") if error_path.is_file() else f"exit code {proc.returncode}"
            raise RuntimeError(f"scoring system {spec.name!r} failed in its own process: {error}")
        with open(result_path, "rb") as f:
            return pickle.load(f)


def _main(args_path: str, result_path: str) -> None:
    with open(args_path, "rb") as f:
        spec, records, batch_size, latency_sample, progress = pickle.load(f)
    try:
        result = score_and_measure(spec, records, batch_size, latency_sample, progress)
    except Exception as e:  # the parent names the system with this line; the traceback goes to stderr
        Path(result_path).with_suffix(".error").write_text(f"{type(e).__name__}: {e}", encoding="utf-8")
        raise
    with open(result_path, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
