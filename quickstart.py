"""The main job: the whole story on the embedded default, end to end.

    pip install -e . && python quickstart.py

1. prepare the bundled synthetic shopping reviews (train / validation / test),
2. build the suite's own small base models from the training text (cached under REVIEWTUNE_HOME),
3. QLoRA SFT of the causal LM          (accelerate launch recipes/sft_qlora.py),
4. the RoBERTa aspect classifier system (accelerate launch recipes/classify_roberta.py),
5. the head-to-head report              (python eval/compare.py --config eval/configs/compare_default.yaml).

Every step is the same command a user runs on its own; this script only runs them in order, times
them and prints where the report is. Outputs go to ``--output_dir`` (default ``outputs/quickstart``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from reviewtune.atomic import atomic_write_json
from reviewtune.base_models import ensure_base_model
from reviewtune.defaults import default_data_dir
from reviewtune.provenance import provenance

ROOT = Path(__file__).resolve().parent


class StepFailed(Exception):
    """A step's command exited with an error (its own output says why)."""


def run(step: str, cmd: list[str], timings: dict[str, float]) -> None:
    print(f"\n=== {step}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if code != 0:
        raise StepFailed(f"step {step} failed (exit code {code}); its output above says why")
    timings[step] = round(time.perf_counter() - start, 1)
    print(f"=== {step} done in {timings[step]:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    args = parser.parse_args()
    out = Path(args.output_dir)
    # accelerate's own defaults for one process, stated (else it warns that it used them); -q: a failing step's
    # one-line error is not followed by accelerate's traceback.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-q"]  # fmt: skip
    timings: dict[str, float] = {}
    total = time.perf_counter()

    print("=== data: bundled synthetic shopping reviews", flush=True)
    start = time.perf_counter()
    data = default_data_dir()
    timings["data"] = round(time.perf_counter() - start, 1)
    print(f"=== data ready in {timings['data']:.0f} s: {data}", flush=True)

    print("\n=== base models: the suite's own pre-trained causal LM and RoBERTa (built once, cached)", flush=True)
    start = time.perf_counter()
    for kind in ("causal", "roberta"):
        path, _ = ensure_base_model(kind, data / "train" / "records.jsonl")
        print(f"    {kind}: {path}", flush=True)
    timings["base_models"] = round(time.perf_counter() - start, 1)
    print(f"=== base models ready in {timings['base_models']:.0f} s", flush=True)

    run("sft_qlora", [*launch, "recipes/sft_qlora.py", "--output_dir", str(out / "sft_qlora")], timings)
    classify = [*launch, "recipes/classify_roberta.py", "--output_dir", str(out / "classify_roberta")]
    run("classify_roberta", classify, timings)
    run(
        "compare",
        [
            sys.executable, "eval/compare.py", "--config", "eval/configs/compare_default.yaml",
            "--generative_runs", str(out / "sft_qlora"), "--classifier_runs", str(out / "classify_roberta"),
            "--out_dir", str(out / "report"),
        ],
        timings,
    )  # fmt: skip
    timings["total"] = round(time.perf_counter() - total, 1)
    atomic_write_json(out / "timings.json", {"seconds": timings, "provenance": provenance()})
    print("\n=== main job done in {:.0f} s: {}".format(timings["total"], timings))
    print(f"Report: {out / 'report' / 'report.md'} (also report.html, report.json)")


if __name__ == "__main__":
    try:
        main()
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
