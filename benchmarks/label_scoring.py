"""Throughput and peak memory of a generative run's scoring modes on the same reviews (issue 17, item 3).

    python benchmarks/label_scoring.py --run RUN_DIR --records test/records.jsonl --n 2000

Trains nothing. Each mode runs in its own fresh Python process (peak resident memory never falls within a
process, so modes measured one after another would inherit each other's peak), loads the run the way the
harness does (``reviewtune.evaluation.systems.load_system``), predicts one untimed warm-up batch, then times
every review:

- ``generate``: greedy decoding, parsed (``predict(..., scoring="generate")``);
- ``loglik``: every label's log-likelihood with the end token (closed label sets only);
- ``constrained``: greedy decoding restricted to the task's answer language;
- ``prompt``: one left-padded forward pass over each prompt projecting only its last position, the floor of
  any label log-likelihood (it reads the same prompts and nothing else).

Prints reviews/s, peak RSS (CPU; CUDA peak allocated on a GPU) and invalid rates per mode, and the ratios
``loglik / generate`` (throughput), ``loglik / prompt`` (time), ``constrained / generate`` (throughput) and
``loglik / generate`` (peak memory). On a shared machine the load moves between processes, so the modes are
also timed in one process, taking turns chunk by chunk (``--chunk``), and the time ratios printed from that.
``--repeats`` runs each mode that many times, interleaved, and reports medians. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MODES = ("generate", "loglik", "constrained", "prompt")


def _rss_now() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_memory() -> tuple[int, str]:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "peak_rss"


def _prompt_pass(system, records: list[dict], batch_size: int) -> list[list[float]]:
    """The floor: the prompts loglik reads, one forward pass each (left-padded batches by length, position
    ids from the mask), only the last position projected; returns each label's first-token log-probability."""
    import torch

    from reviewtune.evaluation.generation import left_padded_batches
    from reviewtune.evaluation.predict import _prompt_budget
    from reviewtune.prompts import fit_prompt
    from reviewtune.tasks import EMPTY_ASPECTS_ANSWER

    task, tok, model = system.task, system.tokenizer, system.model
    labels = [" " + name for name in task.label_names] or [" " + EMPTY_ASPECTS_ANSWER]
    first = [tok(label, add_special_tokens=False)["input_ids"][0] for label in labels]
    longest = max(len(tok(label, add_special_tokens=False)["input_ids"]) for label in labels) + 1
    budget = _prompt_budget(system, longest)
    encoded = tok([fit_prompt(r["text"], task, tok, budget)[0] for r in records])["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    out: list[list[float]] = [[]] * len(records)
    with torch.inference_mode():
        for idx, input_ids, mask in left_padded_batches(encoded, batch_size, pad):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), logits_to_keep=1,
                           use_cache=False).logits[:, -1]  # fmt: skip
            lp = torch.log_softmax(logits.float(), dim=-1)[:, first].cpu().tolist()
            for row, i in enumerate(idx):
                out[i] = lp[row]
    return out


def child(args: argparse.Namespace) -> None:
    """One mode in this process: load, warm up on one batch, time all reviews, write the result."""
    import torch

    from reviewtune.evaluation.systems import load_system
    from reviewtune.records import read_records

    torch.manual_seed(0)
    records = read_records(args.subset)  # the parent's selection only: nothing else held in memory
    start = time.perf_counter()
    system = load_system(args.run)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_now()

    def run(batch: list[dict]):
        return _run_mode(system, args.child, batch, args.batch_size)

    if args.child == "interleaved":
        return _interleaved(args, system, records)
    run(records[: args.batch_size])  # warm-up: first-call allocation, lazy initialisation
    start = time.perf_counter()
    predictions = run(records)
    elapsed = time.perf_counter() - start
    peak, measure = _peak_memory()
    result = {
        "mode": args.child,
        "n": len(records),
        "seconds": elapsed,
        "reviews_per_s": len(records) / elapsed,
        "peak_memory_bytes": peak,
        "memory_measure": measure,
        "rss_after_load_bytes": rss_loaded,
        "load_s": load_s,
        "threads": torch.get_num_threads(),
        "weights": getattr(system, "weights", None),
        "predictions": predictions if args.child != "prompt" else None,
    }
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


def _run_mode(system, mode: str, records: list[dict], batch_size: int):
    from reviewtune.evaluation.predict import predict

    if mode == "prompt":
        return _prompt_pass(system, records, batch_size)
    return predict(system, records, scoring=mode, batch_size=batch_size, progress=False)


def _interleaved(args: argparse.Namespace, system, records: list[dict]) -> None:
    """Every mode in this one process, chunk by chunk (``--chunk`` reviews), the order rotating per chunk:
    each mode sees the same background load, so the time ratios hold on a shared machine."""
    modes = args.modes.split(",")
    for mode in modes:  # warm-up
        _run_mode(system, mode, records[: args.batch_size], args.batch_size)
    seconds = dict.fromkeys(modes, 0.0)
    for k, start in enumerate(range(0, len(records), args.chunk)):
        chunk = records[start : start + args.chunk]
        for mode in modes[k % len(modes) :] + modes[: k % len(modes)]:
            t0 = time.perf_counter()
            _run_mode(system, mode, chunk, args.batch_size)
            seconds[mode] += time.perf_counter() - t0
    result = {"mode": "interleaved", "n": len(records), "chunk": args.chunk, "seconds": seconds,
              "reviews_per_s": {m: len(records) / t for m, t in seconds.items()}}  # fmt: skip
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


def _ratios(throughput: dict[str, float]) -> dict[str, float]:
    out = {}
    if "loglik" in throughput and "generate" in throughput:
        out["loglik/generate throughput"] = throughput["loglik"] / throughput["generate"]
    if "loglik" in throughput and "prompt" in throughput:
        out["loglik/prompt time"] = throughput["prompt"] / throughput["loglik"]
    if "constrained" in throughput and "generate" in throughput:
        out["constrained/generate throughput"] = throughput["constrained"] / throughput["generate"]
    return out


def _select(records_path: str, n: int, seed: int) -> list[dict]:
    import numpy as np

    from reviewtune.records import read_records

    records = [r for r in read_records(records_path) if isinstance(r.get("text"), str) and r["text"].strip()]
    if n and n < len(records):
        idx = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
        records = [records[i] for i in idx]
    return records


def _quality(task, records: list[dict], predictions: list[dict] | None) -> dict:
    if not predictions:
        return {}
    from reviewtune.evaluation.metrics import task_metrics

    try:
        m = task_metrics(task, records, predictions, n_resamples=0)
    except Exception as e:  # records without gold labels: invalid rate only
        invalid = sum(p["invalid"] for p in predictions) / len(predictions)
        return {"invalid_rate": invalid, "quality": {"error": f"{type(e).__name__}: {e}"}}
    return {"invalid_rate": m["invalid_rate"], "quality": {m["primary_metric"]: m.get(m["primary_metric"])}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="generative run directory (recipes/sft_qlora.py)")
    parser.add_argument("--records", required=True, help="records.jsonl whose reviews are scored")
    parser.add_argument("--n", type=int, default=2000, help="seeded subsample of this many reviews (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=1, help="processes per mode (interleaved); medians reported")
    parser.add_argument("--out", default=None, help="results JSON")
    parser.add_argument(
        "--interleaved",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time all modes in one process, chunk by chunk (ratios under the same load)",
    )
    parser.add_argument("--chunk", type=int, default=128, help="reviews per mode per turn when interleaved")
    parser.add_argument("--child", choices=(*MODES, "interleaved"), help=argparse.SUPPRESS)
    parser.add_argument("--subset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}

    from reviewtune.records import write_records
    from reviewtune.tasks import TaskSpec

    task = TaskSpec.load(args.run)
    modes = [m for m in args.modes.split(",") if m]
    bad = set(modes) - set(MODES)
    if bad:
        raise SystemExit(f"unknown mode(s) {sorted(bad)}; choose from {', '.join(MODES)}")
    if task.name not in ("sentiment", "sentiment5") and "loglik" in modes:
        modes.remove("loglik")
        print(f"loglik skipped: task {task.name} has no closed label set")
    records = _select(args.records, args.n, args.seed)
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "records.jsonl"
        write_records(subset, records)
        for rep in range(args.repeats):
            for mode in modes:
                result_file = Path(tmp) / f"{mode}-{rep}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--run", args.run, "--records", args.records,
                       "--batch_size", str(args.batch_size), "--child", mode, "--subset", str(subset),
                       "--result", str(result_file)]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(result_file.read_text(encoding="utf-8"))
                print(f"  [{rep + 1}/{args.repeats}] {mode}: {result['reviews_per_s']:.1f} reviews/s, "
                      f"peak {result['peak_memory_bytes'] / 2**20:.0f} MiB", flush=True)  # fmt: skip
                runs[mode].append(result)
    summary = {}
    for mode, results in runs.items():
        summary[mode] = {
            "reviews_per_s": statistics.median(r["reviews_per_s"] for r in results),
            "seconds": statistics.median(r["seconds"] for r in results),
            "peak_memory_bytes": int(statistics.median(r["peak_memory_bytes"] for r in results)),
            "rss_after_load_bytes": int(statistics.median(r["rss_after_load_bytes"] for r in results)),
            "memory_measure": results[0]["memory_measure"],
            "threads": results[0]["threads"],
            "weights": results[0]["weights"],
            "all_reviews_per_s": [round(r["reviews_per_s"], 2) for r in results],
            **_quality(task, records, results[-1]["predictions"]),
        }
    s = summary
    ratios = _ratios({m: r["reviews_per_s"] for m, r in s.items()})
    for mode in ("loglik", "constrained"):
        if mode in s and "generate" in s:
            ratios[f"{mode}/generate peak memory"] = s[mode]["peak_memory_bytes"] / s["generate"]["peak_memory_bytes"]
    interleaved = None
    if args.interleaved and len(modes) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            subset, result_file = Path(tmp) / "records.jsonl", Path(tmp) / "interleaved.json"
            write_records(subset, records)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run", args.run, "--records", args.records,
                   "--batch_size", str(args.batch_size), "--child", "interleaved", "--modes", ",".join(modes),
                   "--chunk", str(args.chunk), "--subset", str(subset), "--result", str(result_file)]  # fmt: skip
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"interleaved run failed:\n{proc.stderr[-3000:]}")
            interleaved = json.loads(result_file.read_text(encoding="utf-8"))
        interleaved["ratios"] = _ratios(interleaved["reviews_per_s"])
    print(f"\n{args.run}: task {task.name}, {len(records)} reviews from {args.records}, batch {args.batch_size}, "
          f"{next(iter(s.values()))['threads']} thread(s)")  # fmt: skip
    print(f"Each mode in its own process (median of {args.repeats}):")
    print(f"{'mode':<12} {'reviews/s':>10} {'seconds':>8} {'peak MiB':>9} {'invalid':>8}  quality")
    for mode, r in s.items():
        quality = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.get("quality", {}).items()}
        invalid = f"{100 * r['invalid_rate']:.1f}%" if "invalid_rate" in r else "-"
        print(f"{mode:<12} {r['reviews_per_s']:>10.1f} {r['seconds']:>8.1f} {r['peak_memory_bytes'] / 2**20:>9.0f} "
              f"{invalid:>8}  {quality or ''}")  # fmt: skip
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")
    if interleaved:
        print(f"All modes in one process, {args.chunk} reviews per mode per turn (the same background load):")
        print("  " + ", ".join(f"{m} {v:.1f} reviews/s" for m, v in interleaved["reviews_per_s"].items()))
        for name, value in interleaved["ratios"].items():
            print(f"  {name}: {value:.2f}")
    report = {"run": args.run, "records": args.records, "n": len(records), "task": task.name,
              "batch_size": args.batch_size, "repeats": args.repeats,
              "modes": summary, "ratios": ratios, "interleaved": interleaved}  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
