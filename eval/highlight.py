"""Which words decided a prediction: word-occlusion highlights for one review.

    python eval/highlight.py --run runs/classify_roberta_default --keyword 사이즈 \
        --text "배송은 빠른데 사이즈가 너무 작아요"
    python eval/highlight.py --run runs/sft_nsmc --text "배우 연기는 좋은데 스토리가 지루하다" --label 부정

Each whitespace-separated word is hidden in turn (classifiers: the tokenizer's mask token; generative
sentiment runs: "_" in the prompt, scored by loglik label probabilities) and the drop in the target's
probability is the word's score. Prints the review with its decisive words in [brackets], the most
decisive span and every word's score; ``--json`` prints the scores as JSON instead. Without
``--label`` / ``--keyword`` the target is the model's own prediction (the most probable keyword for the
aspect classifier). Exit status 2 when the run has no probability to occlude (generative aspects or
regression runs) or the target does not fit the run.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from reviewtune.analysis.highlights import MIN_DROP, NotApplicable, occlude, peek_system, target_kind
from reviewtune.cli import argument_parser, run_cli
from reviewtune.evaluation.systems import load_system


@dataclass
class HighlightArguments:
    run: str = field(metadata={"help": "Run directory (recipes/sft_qlora.py or recipes/classify_roberta.py)."})
    text: str = field(metadata={"help": "The review to explain."})
    label: str | None = field(
        default=None, metadata={"help": "Label name or index (sentiment runs); default: predicted."}
    )
    keyword: str | None = field(default=None, metadata={"help": "Keyword (aspect classifier); default: most probable."})
    scoring: str | None = field(
        default=None, metadata={"help": "loglik (generative) or classifier; default: the run's."}
    )
    replacement: str | None = field(
        default=None, metadata={"help": "Word put in place of each word; default: mask token / '_'; '' deletes."}
    )
    merged: bool = field(default=False, metadata={"help": "Load a generative run's merged/ model."})
    batch_size: int = field(default=64, metadata={"help": "Inputs per forward pass."})
    json: bool = field(default=False, metadata={"help": "Print the highlight as JSON."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    usage = "python eval/highlight.py --run RUN --text TEXT [--label N | --keyword K] [--OPTION VALUE ...]"
    (args,) = argument_parser(HfArgumentParser, HighlightArguments, usage).parse_args_into_dataclasses(args=argv)
    if args.label is not None and args.keyword is not None:
        print("error: give --label or --keyword, not both", file=sys.stderr)
        return 2
    try:
        peek = peek_system(args.run)  # checked before loading the model, so a refusal is one line
        kind = target_kind(peek, args.scoring)
        given = "--keyword" if args.keyword is not None else "--label" if args.label is not None else None
        if given and given != f"--{kind}":
            raise NotApplicable(f"{given} does not fit a {peek.kind} {peek.task.name} run; it takes --{kind}")
        system = load_system(args.run, merged=args.merged)
        target = args.keyword if kind == "keyword" else args.label
        (h,) = occlude(system, [args.text], [target], args.scoring, args.replacement, args.batch_size)
    except (NotApplicable, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(h.to_dict(), ensure_ascii=False, indent=2))
        return 0
    what = "keyword" if kind == "keyword" else "label"
    print(f"{args.run} ({system.kind}, {system.task.name}): {what} {h.target} p={h.base_prob:.3f}; "
          f"each word replaced by {h.replacement!r}")  # fmt: skip
    print(h.marked())
    if h.span:
        drop = sum(h.scores[h.span[0] : h.span[1]])
        print(f"decisive span: {h.span_text!r} (words {h.span[0]}-{h.span[1] - 1}, summed drop {drop:+.3f})")
    else:
        print(f"decisive span: none (hiding any one word lowers the probability by less than {MIN_DROP})")
    print("word scores: " + ", ".join(f"{w} {s:+.3f}" for w, s in zip(h.words, h.scores, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
