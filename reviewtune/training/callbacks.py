"""The recipes' Trainer callbacks. What is trained stays independent of what is looked at: evaluations and sample
predictions leave the RNGs as they found them. And a run's training time is kept across interruptions.

An evaluation during training draws from torch's global generator (every ``DataLoader`` iterator takes a
base seed from it, sequential or not), so dropout masks after an evaluation differ from a run without one:
a different loss curve because somebody looked. transformers has no switch for this, hence the callback.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


def rng_state() -> dict:
    """Python's, numpy's and torch's (CPU and every CUDA device) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the block, then put every generator back where it was."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class EvaluationKeepsRng(TrainerCallback):
    """Saves the generators when the Trainer decides to evaluate (after ``DefaultFlowCallback`` set
    ``should_evaluate``) and restores them when the evaluation ends, so training continues as without it."""

    def __init__(self) -> None:
        self._saved: dict | None = None

    def _save_if_evaluating(self, control) -> None:
        if control.should_evaluate:
            self._saved = rng_state()

    def on_step_end(self, args, state, control, **kwargs):
        self._save_if_evaluating(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._save_if_evaluating(control)

    def on_evaluate(self, args, state, control, **kwargs):
        if self._saved is not None:
            set_rng_state(self._saved)
            self._saved = None


class TrainingClock(TrainerCallback, ExportableState):
    """Training time across interruptions: kept in every checkpoint (trainer_state.json's ``stateful_callbacks``)
    and taken up again when a run resumes, so a resumed run reports its whole training time."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.earlier_seconds = seconds
        self._started: float | None = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.earlier_seconds + running

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)  # restored from the checkpoint, if any
        if isinstance(saved, dict):
            self.earlier_seconds = float(saved.get("attributes", {}).get("seconds", 0.0))
        self._started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.earlier_seconds, self._started = self.seconds, None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": self.seconds}}
