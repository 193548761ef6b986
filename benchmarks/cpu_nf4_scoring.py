"""CPU scoring of a QLoRA run three ways: NF4 de-quantised once to fp32 (the harness's CPU default), NF4 kept
4-bit (bitsandbytes de-quantises on every matmul), and NF4 on bitsandbytes' packed AVX512-BF16 kernel.

    python benchmarks/cpu_nf4_scoring.py --run RUN_DIR --records records.jsonl [--n 200] [--threads 2]

Trains nothing. For each way it prints reviews/s of ``generate`` scoring (and of ``loglik`` for sentiment
tasks), the largest difference of next-token log-probabilities at the answer position from the fp32 way,
and how many predictions differ from it. The packed way runs only on a CPU with AVX512-BF16, and only on
the layers the kernel takes (out_features % 32 == 0 and in_features % 64 == 0); the suite itself never
packs (``reviewtune.models.quantization``), so this measures what enabling it would give and cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from reviewtune.evaluation.predict import predict  # noqa: E402
from reviewtune.evaluation.systems import LOGLIK_TASKS, load_system  # noqa: E402
from reviewtune.prompts import fit_prompt  # noqa: E402
from reviewtune.records import read_records  # noqa: E402


def has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16 as bnb_has

    return bool(bnb_has())


def enable_packed_kernel(model) -> tuple[int, int]:
    """Let the eligible 4-bit layers take bitsandbytes' packed CPU path; returns (enabled, 4-bit layers)."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    eligible = [m for m in layers if m.out_features % 32 == 0 and m.in_features % 64 == 0]
    for layer in eligible:
        layer.support_avx512bf16_for_cpu = True
    return len(eligible), len(layers)


@torch.inference_mode()
def answer_logprobs(system, records: list[dict]) -> torch.Tensor:
    """Log-probabilities of the first answer token after each prompt (one review at a time: no padding)."""
    tok = system.tokenizer
    rows = []
    for r in records:
        prompt, _ = fit_prompt(r["text"], system.task, tok, system.max_length)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        logits = system.model(input_ids=ids).logits[0, -1].float()
        rows.append(torch.log_softmax(logits, dim=-1))
    return torch.stack(rows)


def measure(system, records: list[dict], modes: list[str], batch_size: int) -> dict:
    out = {}
    for mode in modes:
        predict(system, records[:batch_size], scoring=mode, batch_size=batch_size, progress=False)  # warm-up
        start = time.perf_counter()
        preds = predict(system, records, scoring=mode, batch_size=batch_size, progress=False)
        out[mode] = {"per_s": len(records) / (time.perf_counter() - start), "preds": preds}
    out["logprobs"] = answer_logprobs(system, records[:50])
    return out


def _decision(prediction: dict) -> tuple:
    """What a prediction decides (not its probabilities)."""
    return prediction["label"], str(prediction["aspects"]), prediction["score"], prediction["invalid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="A QLoRA run directory (recipes/sft_qlora.py).")
    parser.add_argument("--records", required=True, help="records.jsonl to score (only id and text are read).")
    parser.add_argument("--n", type=int, default=200, help="Reviews to score.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = read_records(args.records)[: args.n]
    ways = {"fp32 (dequantized once)": dict(dequantize_nf4=True), "nf4 (unpacked)": dict(dequantize_nf4=False)}
    if has_avx512bf16():
        ways["nf4 (packed AVX512-BF16)"] = dict(dequantize_nf4=False)
    else:
        print("This CPU has no AVX512-BF16: bitsandbytes' packed kernel cannot run here; two ways measured.")
    results = {}
    for name, kwargs in ways.items():
        system = load_system(args.run, **kwargs)
        if system.summary.get("quantization") != "nf4":
            sys.exit(f"{args.run} is not a QLoRA (NF4) run")
        if "AVX512" in name:
            enabled, total = enable_packed_kernel(system.model)
            name = f"{name} [{enabled}/{total} layers]"
        modes = ["generate", "loglik"] if system.task.name in LOGLIK_TASKS else ["generate"]
        results[name] = measure(system, records, modes, args.batch_size)
        del system
    print(f"\n{len(records)} reviews of {args.records}, batch {args.batch_size}, {torch.get_num_threads()} thread(s)")
    fp32 = next(iter(results.values()))
    header = f"{'way':<44}" + "".join(f"{m + ' /s':>14}{'x fp32':>8}" for m in fp32 if m != "logprobs")
    print(header + f"{'max |dlogp|':>13}{'preds differ':>14}")
    for name, r in results.items():
        cells = ""
        for mode in (m for m in r if m != "logprobs"):
            cells += f"{r[mode]['per_s']:>14.1f}{r[mode]['per_s'] / fp32[mode]['per_s']:>8.2f}"
        diff = (r["logprobs"] - fp32["logprobs"]).abs().max().item()
        differ = sum(
            sum(_decision(a) != _decision(b) for a, b in zip(r[m]["preds"], fp32[m]["preds"], strict=True))
            for m in r
            if m != "logprobs"
        )
        print(f"{name:<44}{cells}{diff:>13.2e}{differ:>14}")


if __name__ == "__main__":
    main()
