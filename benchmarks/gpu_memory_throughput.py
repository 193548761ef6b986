"""GPU memory and throughput of recipes/sft_qlora.py on a from-scratch ~200M-parameter Llama (issue 7, item 4).

    python benchmarks/gpu_memory_throughput.py --output_dir outputs/bench_gpu

Needs one CUDA GPU with bf16 (Ampere or newer) and bitsandbytes' CUDA kernels; it refuses to start
without them (``--dry_run`` prints the commands instead, on any machine). Nothing is downloaded: the
base model is a randomly initialised Llama (hidden 1024, 16 layers, intermediate 2816: about 208M
parameters) with a byte-level BPE tokenizer trained on the embedded default's training text (at most 8000
tokens; the embedded default's text gives about 2,460, padded to a multiple of 64 in the model), written
once to ``OUTPUT_DIR/base_model``. Every measurement is a real recipe run on its own config
(``recipes/configs/sft_qlora_gpu_benchmark.yaml``: adapters only, no module trained in full), launched
exactly as a user launches it:

    accelerate launch --config_file accelerate_configs/<config>.yaml --num_processes 1 recipes/sft_qlora.py \
        --config recipes/configs/sft_qlora_gpu_benchmark.yaml ...

1. memory: QLoRA (NF4 base, bf16) vs 16-bit LoRA (bf16 base) vs full fine-tuning (fp32 weights, bf16
   autocast), single GPU, same data, batch and steps -> peak CUDA memory (``run_summary.json``
   ``peak_memory_bytes`` = ``torch.cuda.max_memory_allocated``);
2. distributed modes with one process: QLoRA under single_gpu, deepspeed_zero2, deepspeed_zero3_qlora
   and fsdp_qlora -> completes or not, peak memory, time;
3. throughput: one epoch over the same examples padded vs packed (trl BFD) vs padding-free -> tokens/s,
   where tokens = the padded run's count of real (non-padding) tokens, the same work in all three.

Prints a table and the ratios, and writes ``OUTPUT_DIR/results.json``. A run that fails is reported
with the tail of its log (``OUTPUT_DIR/<run>/launch.log``); the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from reviewtune.atomic import atomic_write_json, read_json  # noqa: E402

RECIPE = ROOT / "recipes" / "sft_qlora.py"
RECIPE_CONFIG = ROOT / "recipes" / "configs" / "sft_qlora_gpu_benchmark.yaml"
CONFIGS = ROOT / "accelerate_configs"

# Model size: ~208M parameters (16 x 12.85M per layer + tied embeddings of the learnt vocabulary).
MODEL = dict(hidden_size=1024, num_layers=16, num_heads=16, intermediate_size=2816, max_position_embeddings=1024)
VOCAB_SIZE = 8000

QLORA = ["--load_in_4bit", "true", "--use_peft", "true", "--dtype", "bfloat16"]
LORA = ["--load_in_4bit", "false", "--use_peft", "true", "--dtype", "bfloat16"]
FULL = ["--load_in_4bit", "false", "--use_peft", "false", "--dtype", "float32", "--learning_rate", "1e-4"]

# name -> (accelerate config, recipe arguments, group)
RUNS: dict[str, tuple[str, list[str], str]] = {
    "qlora": ("single_gpu", QLORA, "memory"),
    "lora_bf16": ("single_gpu", LORA, "memory"),
    "full": ("single_gpu", FULL, "memory"),
    "zero2_qlora": ("deepspeed_zero2", QLORA, "modes"),
    "zero3_qlora": ("deepspeed_zero3_qlora", QLORA, "modes"),
    "fsdp_qlora": ("fsdp_qlora", QLORA, "modes"),
    "padded": ("single_gpu", QLORA, "throughput"),
    "packed": ("single_gpu", [*QLORA, "--packing", "true"], "throughput"),
    "padding_free": ("single_gpu", [*QLORA, "--padding_free", "true"], "throughput"),
}


def check_gpu() -> str:
    """Refuse clearly unless a bf16 CUDA GPU and bitsandbytes' CUDA NF4 kernels work; returns the GPU name."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/gpu_memory_throughput.py measures GPU memory and throughput and needs a CUDA GPU; "
            "none is visible here (torch.cuda.is_available() is False). Use --dry_run to print the commands."
        )
    if not torch.cuda.is_bf16_supported():
        sys.exit(f"{torch.cuda.get_device_name(0)} has no bf16 support; this benchmark needs an Ampere or newer GPU.")
    try:
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(torch.randn(64, 64, device="cuda", dtype=torch.bfloat16), quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as e:  # noqa: BLE001 - any failure here means no usable CUDA kernels
        sys.exit(f"bitsandbytes cannot run NF4 on this GPU ({type(e).__name__}: {e}); QLoRA runs would fail.")
    return torch.cuda.get_device_name(0)


def build_base_model(out: Path, train_file: str) -> tuple[Path, int]:
    """A randomly initialised Llama of ``MODEL``'s size + a BPE tokenizer of the training text (built once)."""
    base = out / "base_model"
    if (base / "bench_model.json").is_file():
        return base, read_json(base / "bench_model.json")["parameters"]
    import torch

    from reviewtune.models.pretraining import build_model, train_tokenizer
    from reviewtune.training.arguments import PretrainArguments

    texts = [json.loads(line)["text"] for line in Path(train_file).read_text(encoding="utf-8").splitlines() if line]
    tokenizer = train_tokenizer(texts, "causal", vocab_size=VOCAB_SIZE)
    torch.manual_seed(0)
    model = build_model("causal", tokenizer, PretrainArguments(kind="causal", **MODEL))
    params = sum(p.numel() for p in model.parameters())
    tmp = out / "base_model.tmp"
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "bench_model.json", {"parameters": params, **MODEL, "vocab_size": len(tokenizer)})
    os.replace(tmp, base)
    return base, params


def recipe_command(name: str, base: Path, out: Path, data: dict[str, str], args: argparse.Namespace) -> list[str]:
    config, extra, group = RUNS[name]
    budget = (
        ["--num_train_epochs", "1", "--max_train_samples", str(args.epoch_samples)]
        if group == "throughput"
        else ["--max_steps", str(args.steps), "--max_train_samples", str(args.steps * args.batch_size)]
    )
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIGS / f"{config}.yaml"), "--num_processes", "1",
        str(RECIPE), "--config", str(RECIPE_CONFIG),
        "--model_name_or_path", str(base), "--output_dir", str(out / name),
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--max_eval_samples", "64", "--eval_strategy", "no", "--save_strategy", "no",
        "--per_device_train_batch_size", str(args.batch_size), "--gradient_accumulation_steps", "1",
        "--max_length", str(args.max_length), "--logging_steps", "10", "--seed", "0",
        "--use_cpu", "false", "--bf16", "true", "--report_to", "none",
        "--attn_implementation", args.attn_implementation,
        "--num_sample_predictions", "2",
        *budget, *extra,
    ]  # fmt: skip


def run_one(name: str, cmd: list[str], out: Path) -> dict:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "launch.log"
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    result: dict = {"name": name, "config": RUNS[name][0], "ok": proc.returncode == 0, "wall_s": round(wall, 1)}
    summary_file = run_dir / "run_summary.json"
    if proc.returncode == 0 and summary_file.is_file():
        s = read_json(summary_file)
        result.update({k: s.get(k) for k in ("method", "quantization", "peak_memory_bytes", "train_runtime_s",
                                              "train_tokens_per_s", "train_tokens", "global_step",
                                              "trainable_params", "total_params", "final_train_loss")})  # fmt: skip
    else:
        result["ok"] = False
        result["error_tail"] = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        print(f"--- {name} FAILED (exit {proc.returncode}); last lines of {log}:", flush=True)
        print("\n".join(result["error_tail"]), flush=True)
    print(f"=== {name}: {'ok' if result['ok'] else 'FAILED'} in {wall:.0f} s", flush=True)
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(results: dict[str, dict]) -> dict[str, float | None]:
    mem = {k: r.get("peak_memory_bytes") for k, r in results.items() if r.get("ok")}
    # Same examples once each in the three throughput runs: the padded run's real-token count is the work.
    tokens = results.get("padded", {}).get("train_tokens")
    tps = {k: tokens / results[k]["train_runtime_s"] for k in ("padded", "packed", "padding_free")
           if tokens and results.get(k, {}).get("ok") and results[k].get("train_runtime_s")}  # fmt: skip
    return {
        "memory qlora / full": ratio(mem.get("qlora"), mem.get("full")),
        "memory lora_bf16 / full": ratio(mem.get("lora_bf16"), mem.get("full")),
        "memory qlora / lora_bf16": ratio(mem.get("qlora"), mem.get("lora_bf16")),
        "memory zero2_qlora / qlora": ratio(mem.get("zero2_qlora"), mem.get("qlora")),
        "memory zero3_qlora / qlora": ratio(mem.get("zero3_qlora"), mem.get("qlora")),
        "memory fsdp_qlora / qlora": ratio(mem.get("fsdp_qlora"), mem.get("qlora")),
        "tokens/s packed / padded": ratio(tps.get("packed"), tps.get("padded")),
        "tokens/s padding_free / padded": ratio(tps.get("padding_free"), tps.get("padded")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/bench_gpu")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps of the memory and mode runs.")
    parser.add_argument("--epoch_samples", type=int, default=4000, help="Examples in the throughput runs' epoch.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument(
        "--attn_implementation",
        default=None,
        help="Default: flash_attention_2 if flash_attn is installed, else sdpa (the recipe refuses packing/"
        "padding-free where the attention lets packed examples see each other; that refusal is reported).",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing (any machine).")
    args = parser.parse_args()
    if args.attn_implementation is None:
        try:
            import flash_attn  # noqa: F401

            args.attn_implementation = "flash_attention_2"
        except ImportError:
            args.attn_implementation = "sdpa"
    out = Path(args.output_dir).resolve()
    placeholder = out / "base_model"
    if args.dry_run:
        data = {s: f"<embedded-default-{s}>" for s in ("train", "validation", "test")}
        for name in args.runs:
            print(" ".join(recipe_command(name, placeholder, out, data, args)))
        return

    gpu = check_gpu()
    from reviewtune import defaults

    data = {s: defaults.default_file(s) for s in ("train", "validation", "test")}
    out.mkdir(parents=True, exist_ok=True)
    base, params = build_base_model(out, data["train"])
    print(f"GPU: {gpu}; base model: {base} ({params / 1e6:.0f}M parameters); attention: {args.attn_implementation}")
    if "padded" not in args.runs and {"packed", "padding_free"} & set(args.runs):
        args.runs.insert(0, "padded")  # the throughput ratios are relative to it

    results = {name: run_one(name, recipe_command(name, base, out, data, args), out) for name in args.runs}
    summary = {"gpu": gpu, "base_model_parameters": params, "attn_implementation": args.attn_implementation,
               "settings": {k: getattr(args, k) for k in ("steps", "epoch_samples", "batch_size", "max_length")},
               "runs": results, "ratios": ratios(results)}  # fmt: skip
    atomic_write_json(out / "results.json", summary)

    print(f"\n{'run':<14}{'config':<24}{'ok':<5}{'peak GiB':>9}{'runtime s':>11}{'tokens/s':>11}")
    for name, r in results.items():
        gib = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r.get("peak_memory_bytes") else "-"
        rt = f"{r['train_runtime_s']:.1f}" if r.get("train_runtime_s") else "-"
        tps = f"{r['train_tokens_per_s']:.0f}" if r.get("train_tokens_per_s") else "-"
        print(f"{name:<14}{r['config']:<24}{'yes' if r['ok'] else 'NO':<5}{gib:>9}{rt:>11}{tps:>11}")
    print("\nRatios:")
    for k, v in summary["ratios"].items():
        print(f"  {k:<34} {v if v is not None else 'n/a (a run failed or was not selected)'}")
    print(f"\nResults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
