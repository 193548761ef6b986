"""Learning curves for every run: losses and the task metric against optimizer steps and training seconds.

:class:`LearningCurves` is a ``TrainerCallback``. It plots what the Trainer logs (its ``log_history``: training
loss, learning rate, evaluation loss and ``compute_metrics`` results such as ``eval_micro_f1``), times each
step, can run an extra task metric of its own at each evaluation (``metric_fn``, e.g. :func:`generative_metric`:
greedy answers to validation reviews, scored exactly as ``eval/compare.py``'s ``generate`` scoring scores them),
and writes
``learning_curves.json`` and ``learning_curves.png`` into the run directory when training ends.

Seconds are *training* seconds: wall time since training began, less the time spent evaluating, in the
extra metric and saving checkpoints (the gap between a step that triggers them and the next step), so curves
of runs with different evaluation schedules share one time axis. After a resume they count from the resume,
and the steps before it come from the checkpoint's log history, with losses but no seconds. The extra metric
runs with every random generator saved and restored (``rng_preserved``): looking at the model never changes
what is trained.

Why a callback of our own: the Trainer keeps ``log_history`` but neither plots it nor puts evaluation-free
training time on it, and SFT's ``compute_metrics`` sees teacher-forced logits, not the answers a user gets.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from reviewtune.atomic import atomic_write_bytes, atomic_write_json, read_json
from reviewtune.provenance import provenance
from reviewtune.training.callbacks import rng_preserved

logger = logging.getLogger(__name__)

CURVES_JSON = "learning_curves.json"
CURVES_PNG = "learning_curves.png"
SCHEMA_VERSION = 1
# Logged keys that are bookkeeping, not curves.
_NOT_CURVES = {"epoch", "step", "seconds", "total_flos", "train_runtime", "train_samples_per_second",
               "train_steps_per_second", "train_loss", "eval_runtime", "eval_samples_per_second",
               "eval_steps_per_second", "num_input_tokens_seen", "train_tokens_per_second"}  # fmt: skip
# Headline task metrics, plotted in this order when present (eval_ prefix added by the Trainer).
TASK_METRICS = ("micro_f1", "polarity_accuracy", "exact_match", "invalid_rate", "accuracy", "macro_f1", "mae")

MetricFn = Callable[[Any], dict[str, float]]


class LearningCurves(TrainerCallback):
    """Record losses and task metrics per step and per training second; write JSON + PNG at the end of training.

    ``metric_fn(model) -> {name: value}`` runs at every evaluation (and after the last step when no evaluation
    falls there), its values logged as ``eval_<name>``; ``None`` records only what the Trainer logs.
    ``title`` heads the plot.
    """

    def __init__(self, metric_fn: MetricFn | None = None, title: str | None = None) -> None:
        self.metric_fn = metric_fn
        self.title = title
        self.points: dict[int, dict[str, float]] = {}
        self._start = 0.0
        self._excluded = 0.0
        self._paused_at: float | None = None
        self._step_seconds: list[float] = []
        self._step_begin = 0.0
        self._metric_done_at: int | None = None
        self._metric_seconds = 0.0

    # -- timing
    def _now(self) -> float:
        return time.perf_counter()

    def train_seconds(self) -> float:
        """Training seconds so far (evaluation, metric and checkpoint time excluded)."""
        return self._now() - self._start - self._excluded

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._now()
        self._excluded = 0.0
        self._paused_at = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._paused_at is not None:
            self._excluded += self._now() - self._paused_at
            self._paused_at = None
        self._step_begin = self._now()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        now = self._now()
        self._step_seconds.append(now - self._step_begin)  # forward, backward and update of this step
        point = self._point(state)
        point["seconds"] = round(now - self._start - self._excluded, 4)
        if control.should_evaluate or control.should_save or control.should_log:
            self._paused_at = now
        last = state.max_steps and state.global_step >= state.max_steps
        if self.metric_fn is not None and last and not control.should_evaluate:
            self._run_metric(state, model)  # the final point always has the task metric

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if self.metric_fn is not None and model is not None:
            values = self._run_metric(state, model)
            if metrics is not None:  # also visible to the Trainer's best-model logic and log_history
                metrics.update({f"eval_{k}": v for k, v in values.items() if f"eval_{k}" not in metrics})

    def on_train_end(self, args, state, control, **kwargs):
        if self._paused_at is not None:
            self._excluded += self._now() - self._paused_at
            self._paused_at = None
        if state.is_world_process_zero:
            self.write(args.output_dir, state)

    # -- metric
    def _run_metric(self, state, model) -> dict[str, float]:
        if self._metric_done_at == state.global_step:
            return {}
        start = self._now()
        with rng_preserved():
            was_training = model.training
            try:
                values = self.metric_fn(model)
            finally:
                model.train(was_training)
        elapsed = self._now() - start
        self._metric_seconds += elapsed
        if self._paused_at is None:  # on_step_end path: the metric's time is not training time either
            self._excluded += elapsed
        self._metric_done_at = state.global_step
        point = self._point(state)
        point.update({f"eval_{k}": float(v) for k, v in values.items() if v is not None})
        logger.info("step %d task metric: %s (%.1f s)", state.global_step, values, elapsed)
        return values

    def _point(self, state) -> dict[str, float]:
        point = self.points.setdefault(int(state.global_step), {"step": int(state.global_step)})
        if state.epoch is not None:
            point["epoch"] = round(float(state.epoch), 4)
        return point

    # -- output
    def summary(self, state=None) -> dict[str, Any]:
        """The JSON written to ``learning_curves.json``."""
        # What the Trainer logged (its log history: after a resume, also the steps before it, without seconds),
        # with this callback's seconds and task metric; steps where something was logged or measured.
        merged = {step: dict(point) for step, point in self.points.items()}
        for logged in getattr(state, "log_history", None) or []:
            if "step" in logged:
                point = merged.setdefault(int(logged["step"]), {"step": int(logged["step"])})
                point.update({k: float(v) for k, v in logged.items()
                              if k not in _NOT_CURVES and isinstance(v, int | float) and math.isfinite(v)})  # fmt: skip
                if logged.get("epoch") is not None:
                    point.setdefault("epoch", round(float(logged["epoch"]), 4))
        points = [p for _, p in sorted(merged.items()) if p.keys() - {"step", "epoch", "seconds"}]
        steps = self._step_seconds
        return {
            "schema_version": SCHEMA_VERSION,
            "title": self.title,
            "points": points,
            "steps": len(steps),
            "train_seconds": round(self.train_seconds(), 3),
            "excluded_seconds": round(self._excluded, 3),
            "metric_seconds": round(self._metric_seconds, 3),
            "seconds_per_step": _percentiles(steps),
            "step_seconds": [round(x, 4) for x in steps],
            "max_steps": getattr(state, "max_steps", None),
            "provenance": provenance(),
        }

    def write(self, output_dir: str | Path, state=None) -> dict[str, Any]:
        """Write ``learning_curves.json`` and ``learning_curves.png`` into ``output_dir``; returns the JSON."""
        data = self.summary(state)
        atomic_write_json(Path(output_dir) / CURVES_JSON, data)
        plot_curves({self.title or Path(output_dir).name: data}, Path(output_dir) / CURVES_PNG)
        return data


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p90 = np.percentile(values, [50, 90])
    return {"mean": round(float(np.mean(values)), 4), "p50": round(float(p50), 4), "p90": round(float(p90), 4)}


def read_curves(run_dir: str | Path) -> dict[str, Any]:
    """``learning_curves.json`` of a run directory."""
    return read_json(Path(run_dir) / CURVES_JSON)


def _series(points: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    pairs = [(p[x], p[key]) for p in points if key in p and x in p]
    return [a for a, _ in pairs], [b for _, b in pairs]


def plot_curves(curves: dict[str, dict], path: str | Path) -> Path:
    """One PNG: losses (top) and task metrics (bottom), against steps (left) and training seconds (right).

    ``curves`` maps a label (a run or a component of one, ASCII) to its ``learning_curves.json`` content.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any process

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for label, data in curves.items():
        prefix = f"{label}: " if len(curves) > 1 else ""
        for col, x in enumerate(("step", "seconds")):
            for key, style, name in (("loss", "-", "train loss"), ("eval_loss", "o-", "validation loss")):
                xs, ys = _series(data["points"], key, x)
                if xs:
                    axes[0, col].plot(xs, ys, style, ms=3, label=prefix + name)
            for name in TASK_METRICS:
                xs, ys = _series(data["points"], f"eval_{name}", x)
                if xs:
                    axes[1, col].plot(xs, ys, "o-", ms=3, label=prefix + name)
    for col, xlabel in enumerate(("optimizer step", "training seconds (evaluation excluded)")):
        axes[0, col].set_ylabel("loss")
        axes[1, col].set_ylabel("validation metric")
        axes[1, col].set_ylim(-0.02, 1.02)
        for ax in axes[:, col]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(" / ".join(f"{k}: {v.get('steps', 0)} steps, {v.get('train_seconds', 0):.0f} s"
                            for k, v in curves.items()), fontsize=10)  # fmt: skip
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return atomic_write_bytes(path, buf.getvalue())


def combine_curves(output_dir: str | Path, components: dict[str, str | Path]) -> Path | None:
    """Plot the curves of several sub-runs (e.g. the aspect system's two models) into ``output_dir`` together.

    Writes ``learning_curves.json`` (``{"components": {name: curves}}``) and ``learning_curves.png``; ``None``
    when no component has curves.
    """
    curves = {}
    for name, directory in components.items():
        if (Path(directory) / CURVES_JSON).is_file():
            curves[name] = read_curves(directory)
    if not curves:
        return None
    atomic_write_json(Path(output_dir) / CURVES_JSON, {"schema_version": SCHEMA_VERSION, "components": curves,
                                                        "provenance": provenance()})  # fmt: skip
    return plot_curves(curves, Path(output_dir) / CURVES_PNG)


def generative_metric(tokenizer, task, records: list[dict], max_length: int | None, batch_size: int = 32) -> MetricFn:
    """A ``metric_fn`` for a causal LM: greedy answers to ``records``, predicted and scored as ``eval/compare.py``
    scores a run with ``generate`` (same prompts, answer budget and parser, invalid answers counted wrong).

    Returns the task's headline metrics (aspects: ``micro_f1``, ``polarity_accuracy``, ``exact_match``,
    ``invalid_rate``; sentiment: ``accuracy``, ``macro_f1``, ``invalid_rate``; regression: ``mae``).
    """
    from reviewtune.evaluation.metrics import task_metrics
    from reviewtune.evaluation.predict import predict
    from reviewtune.evaluation.systems import System

    def metric(model) -> dict[str, float]:
        if not records:
            return {}
        summary = {"config": {"max_length": max_length}}  # what the harness reads from a run's summary
        system = System.of_model(Path("."), "generative", task, summary, model, tokenizer)
        predictions = predict(system, records, scoring="generate", batch_size=batch_size, progress=False)
        out = task_metrics(task, records, predictions, n_resamples=0)
        return {k: out[k] for k in TASK_METRICS if isinstance(out.get(k), int | float)}

    return metric
