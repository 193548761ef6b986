"""Choose which unlabelled reviews to label next (active learning) with a trained run.

    python data_prep/select_for_labeling.py --run runs/classify_roberta_default --pool pool.jsonl --k 200 \
        --out to_label.jsonl --strategy keyword_uncertainty,outliers --exclude data/train/records.jsonl
    python data_prep/select_for_labeling.py --run runs/sft_nsmc --pool pool.jsonl --k 100 --out to_label.jsonl \
        --strategy least_confidence --group-by shop

Strategies (comma-separated ones take turns; see ``reviewtune.analysis.selection``): ``keyword_uncertainty``
(aspect classifier), ``least_confidence`` / ``margin`` / ``entropy`` (single-label sentiment: classifiers,
generative runs through loglik), ``rare`` (share of tokens rare in the run's training text), ``outliers``
(k-means on the model's sentence embeddings), ``proportional`` (stratified random; needs ``--group-by``).
``--group-by FIELD`` gives each value of ``meta[FIELD]`` a share of ``k`` proportional to its size.

The pool is a records.jsonl (labels may be null) or a text file with one review per line (``.txt``,
``.txt.gz``; ids ``<file stem>-<line>``); ``--max_pool N`` scores a seeded random sample of N of its records.
Writes ``--out`` (JSONL, best first): each chosen record with ``selection`` = ``{rank, strategy, scores,
details, group}``; fill in its label(s) and merge it back with ``data_prep/merge_labels.py``. Also writes
``<out>.report.json`` (counts, arguments, provenance).
Exit status 2 when a strategy has no meaning for the run (one line says why) or on bad input.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import logging
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from reviewtune.analysis.highlights import peek_system
from reviewtune.analysis.selection import (
    STRATEGIES,
    default_strategy,
    group_of,
    load_pool,
    score_pool,
    select,
    unavailable,
)
from reviewtune.atomic import atomic_write_json, atomic_write_jsonl
from reviewtune.cli import argument_parser, run_cli
from reviewtune.evaluation.systems import load_system
from reviewtune.provenance import provenance


@dataclass
class SelectArguments:
    run: str = field(metadata={"help": "Run directory (recipes/sft_qlora.py or recipes/classify_roberta.py)."})
    pool: str = field(metadata={"help": "Unlabelled records.jsonl, or text with one review per line (.txt[.gz])."})
    k: int = field(metadata={"help": "How many records to choose."})
    out: str = field(metadata={"help": "Output JSONL of the chosen records, ranked."})
    strategy: str | None = field(
        default=None,
        metadata={
            "help": f"Comma-separated, taking turns: {', '.join(STRATEGIES)}. Default: keyword_uncertainty "
            "(aspect classifier), least_confidence (sentiment runs), rare (other runs)."
        },
    )
    group_by: str | None = field(default=None, metadata={"help": "meta field to sample proportionally across."})
    exclude: list[str] = field(default_factory=list, metadata={"help": "Records files whose ids are left out."})
    scoring: str | None = field(
        default=None, metadata={"help": "loglik (generative) or classifier; default: the run's."}
    )
    rare_max_count: int = field(default=2, metadata={"help": "rare: tokens seen at most this often in training."})
    n_clusters: int = field(default=8, metadata={"help": "outliers: k-means clusters."})
    max_pool: int | None = field(default=None, metadata={"help": "Score a seeded random sample of this many."})
    batch_size: int = field(default=32, metadata={"help": "Inputs per forward pass."})
    merged: bool = field(default=False, metadata={"help": "Load a generative run's merged/ model."})
    seed: int = field(default=0, metadata={"help": "Seed for k-means and proportional sampling."})
    encoding: str = field(default="utf-8", metadata={"help": "Pool encoding: utf-8 (BOM accepted), cp949, euc-kr."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    usage = "python data_prep/select_for_labeling.py --run RUN --pool FILE --k N --out FILE [--OPTION VALUE ...]"
    (args,) = argument_parser(HfArgumentParser, SelectArguments, usage).parse_args_into_dataclasses(args=argv)
    if args.k < 1:
        print("error: --k must be at least 1", file=sys.stderr)
        return 2
    peek = peek_system(args.run)  # checked before loading the model, so a refusal is one line
    pool, dropped, n_read = load_pool(args.pool, args.exclude, encoding=args.encoding)
    strategy = args.strategy or default_strategy(peek, args.scoring)
    strategies = [s.strip() for s in strategy.split(",") if s.strip()]
    if not strategies or len(set(strategies)) != len(strategies) or not set(strategies) <= set(STRATEGIES):
        print(f"error: --strategy {strategy!r}: give distinct strategies from {', '.join(STRATEGIES)}",
              file=sys.stderr)  # fmt: skip
        return 2
    for s in strategies:
        reason = unavailable(peek, s, args.scoring, args.group_by)
        if reason:
            print(f"error: {reason}", file=sys.stderr)
            return 2
    system = load_system(args.run, merged=args.merged)
    print(f"strategy: {', '.join(strategies)}" + ("" if args.strategy else " (the default for this run)"))
    print(f"{args.pool}: read {n_read}, kept {len(pool)}, dropped {sum(dropped.values())} {dropped or ''}".rstrip())
    n_kept = len(pool)
    if args.max_pool is not None and args.max_pool < len(pool):
        keep = sorted(random.Random(args.seed).sample(range(len(pool)), args.max_pool))
        pool = [pool[i] for i in keep]
        print(f"scoring a random sample of {len(pool)} of the {n_kept} kept records (--max_pool, seed {args.seed})")
    texts = [r["text"] for r in pool]
    scores, details = score_pool(system, texts, strategies, args.scoring, args.batch_size, args.rare_max_count,
                                 args.n_clusters, args.seed)  # fmt: skip
    groups = [group_of(r, args.group_by) for r in pool] if args.group_by else None
    picks = select(scores, args.k, groups)
    rows = []
    for rank, (i, picked_by) in enumerate(picks, 1):
        selection = {
            "rank": rank,
            "strategy": picked_by,
            "scores": {s: round(float(v[i]), 6) for s, v in scores.items()},
            "details": details[i],
            "group": groups[i] if groups else None,
        }
        rows.append({**{k: v for k, v in pool[i].items() if k != "selection"}, "selection": selection})
    out = Path(args.out)
    atomic_write_jsonl(out, rows)
    by_strategy = {s: sum(1 for _, p in picks if p == s) for s in strategies}
    by_group = {g: sum(1 for i, _ in picks if groups[i] == g) for g in sorted(set(groups))} if groups else None
    report = {
        "run": args.run,
        "pool": {"read": n_read, "kept": n_kept, "dropped": dropped, "scored": len(pool)},
        "chosen": len(rows),
        "by_strategy": by_strategy,
        "by_group": by_group,
        "strategies": strategies,
        "arguments": asdict(args),
        "provenance": provenance(seed=args.seed, data_files={"pool": args.pool}),
    }
    report_path = atomic_write_json(out.with_name(out.stem + ".report.json"), report)
    if len(rows) < args.k:
        print(f"warning: the pool holds only {len(rows)} records, fewer than --k {args.k}", file=sys.stderr)
    print(f"{out}: {len(rows)} chosen ({', '.join(f'{s} {n}' for s, n in by_strategy.items())}); report {report_path}")
    for r in rows[:5]:
        sel = r["selection"]
        group = f", {args.group_by} {sel['group']}" if groups else ""
        score = sel["scores"][sel["strategy"]]
        print(f"  {sel['rank']:>3}. [{sel['strategy']} {score:.3f}{group}] {r['id']}: {r['text'][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
