"""``mapo agreement``: Cohen's kappa tables, with intervals and verdicts, from stored judgements (no model call).

Two sources:

* run folders or JSONL files of ``mapo evaluate`` records (``judgements.jsonl``, or
  ``reparsed.jsonl`` after ``mapo reparse``)::

      mapo agreement runs/evaluate
      mapo agreement multirun/evaluate/* --jury-subsets      # juries formed across separate judge runs

* the original authors' judge outputs (``mapo.data.importers``: the strategy folders judge/,
  rater10/, multi-rater5/, multi-rater10/, multi-rater100/, debate/; absent ones are skipped)
  against a file of human labels (JSONL, JSON or CSV; only an id and a label are needed)::

      mapo agreement --authors ../shared/data/faireval/mapo-judgments \\
                     --humans ../shared/data/faireval/fair_eval.jsonl --jury-subsets --reference gpt-4o
      mapo agreement --authors DIR --humans pandalm.csv \\
                     --humans-columns id=idx,human=label --humans-labels 1=model_a,2=model_b,0=tie

``--jury-subsets`` adds the kappa of every jury (subset of sizes 2..n of the single judges
that judged the same items with the same setup; for --authors the combined-scoring /10 judges,
as in the paper; rule ``--rule``, default the paper's mode with a multi-way mode as a tie).

Every kappa and accuracy carries a seeded bootstrap interval over the items, and every row a
paired comparison with a reference evaluator (``--reference``; default the judge, jury or
debate that was run with the highest kappa, never a jury subset formed afterwards; that default
is itself chosen on these items, so its kappa is optimistic and the verdicts against it lean
towards "lower": the output says so and gives its selection-corrected kappa, as for the best
jury; name the reference beforehand for verdicts that are no selection): "better",
"not worse" (by more than ``--margin``), "significantly lower, within the margin",
"significantly lower (margin not excluded)", "worse", or "cannot tell" with the number of items
that would decide (:mod:`mapo.metrics.uncertainty`). With ``--recorded``
(the authors' own parsed scores, which reproduce the paper) their parse failures (-1 scores)
count as scores as they did in the paper, and are counted and reported.

Prints a table and writes JSON (``--out``). The tables are computed by :mod:`mapo.metrics.recompute`
(this module reads the arguments only).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapo.core.store import latest_records
from mapo.metrics.recompute import authors_tables, record_tables
from mapo.metrics.tables import format_table
from mapo.metrics.uncertainty import CONFIDENCE, MARGIN, N_RESAMPLES, SEED

__all__ = ["main", "parse_mapping", "run_tables"]


def _record_files(paths: Iterable[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            f = p / "judgements.jsonl"
            if not f.is_file():
                raise FileNotFoundError(f"{p}: no judgements.jsonl (is it a `mapo evaluate` run folder?)")
            files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def run_tables(paths: Iterable[str], **options: Any) -> dict[str, Any]:
    """Agreement tables of the ``mapo evaluate`` records in ``paths`` (run folders or JSONL files);
    ``options``: those of :func:`mapo.metrics.recompute.record_tables`."""
    files = _record_files(paths)
    # the last record of each key: a retried unit's failure is history
    return record_tables((r for f in files for r in latest_records(f)), [str(f) for f in files], **options)


def parse_mapping(text: str | None, what: str, *, repeatable: tuple[str, ...] = ()) -> dict[str, Any]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (for --humans-columns / --humans-labels).

    A key in ``repeatable`` may be given more than once (``human=a1,human=a2``): its value is then
    the list of them; any other repeated key is an error (never the last one silently)."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{what}: {part!r} is not KEY=VALUE (e.g. {what} id=idx,human=winner)")
        if key in out:
            if key not in repeatable:
                raise ValueError(f"{what}: {key} is given twice ({out[key]!r} and {value!r})")
            out[key] = [*([out[key]] if isinstance(out[key], str) else out[key]), value]
        else:
            out[key] = value
    return out


def _labels_of(text: Mapping[str, str]) -> dict[Any, Any]:
    """--humans-labels values are our labels; keys are the file's raw values (str; numbers also match)."""
    from mapo.core.types import LABELS

    bad = [v for v in text.values() if v not in LABELS]
    if bad:
        raise ValueError(f"--humans-labels: {bad[0]!r} is not a label; use {', '.join(LABELS)}")
    return dict(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapo agreement",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("runs", nargs="*", help="run folders (judgements.jsonl) or JSONL files of evaluate records")
    ap.add_argument(
        "--authors", metavar="DIR", help="the authors' judgments folder (judge/, multi-rater10/, debate/ ...)"
    )
    ap.add_argument(
        "--humans",
        metavar="FILE",
        help="--authors: human labels, JSONL/JSON/CSV with an id and a label per item (default: the shared FairEval copy)",
    )
    ap.add_argument(
        "--humans-columns",
        metavar="MAP",
        help="--humans: our field=their column, e.g. id=idx,human=label (default: id=id, human=winner); "
        "human=a1,human=a2,human=a3 reads several annotators: their majority is the label (a split is a tie) "
        "and their agreement with each other is the human ceiling; beside the majority kappas, each annotator "
        "as a separate human (every evaluator's kappa against each annotator alone, and the mean)",
    )
    ap.add_argument(
        "--humans-labels",
        metavar="MAP",
        help="--humans: their value=our label, e.g. 1=model_a,2=model_b,0=tie (default: values are model_a/model_b/tie)",
    )
    ap.add_argument(
        "--families",
        metavar="MAP",
        help="model=family for the judges and the candidate models, e.g. gpt-4o=openai,vicuna-13b=lmsys "
        "(families are never guessed from names; an unnamed model's family is unknown)",
    )
    ap.add_argument("--jury-subsets", action="store_true", help="kappa of every jury formed from the single judges")
    ap.add_argument("--sizes", default=None, help="jury sizes, e.g. 2,3 (default 2..n)")
    ap.add_argument("--rule", default="mode", help="jury rule: mode (paper) | majority | mean_score")
    ap.add_argument(
        "--order-combine", default="inconsistent_tie", help="inconsistent_tie | mean_score (runs judged in both orders)"
    )
    ap.add_argument(
        "--recorded", action="store_true", help="--authors: use the scores their parser recorded, not mapo's re-parse"
    )
    from mapo.data.importers import STRATEGIES

    ap.add_argument(
        "--strategy",
        choices=[*STRATEGIES, "all"],
        default="all",
        help="--authors: which outputs (all: every strategy folder present)",
    )
    ap.add_argument(
        "--reference",
        metavar="NAME",
        help="evaluator the verdicts compare with, named beforehand (default: the judge, jury or debate that was "
        "run with the highest kappa on these items; jury subsets formed by --jury-subsets are never the default; "
        "a default chosen so is a best-of: its kappa is optimistic, and the output gives its selection-corrected "
        "kappa)",
    )
    ap.add_argument("--margin", type=float, default=MARGIN, help=f"non-inferiority margin in kappa (default {MARGIN})")
    ap.add_argument("--n-resamples", type=int, default=N_RESAMPLES, help=f"bootstrap resamples (default {N_RESAMPLES})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"bootstrap seed (default {SEED})")
    ap.add_argument("--confidence", type=float, default=CONFIDENCE, help=f"interval level (default {CONFIDENCE})")
    ap.add_argument("--no-intervals", action="store_true", help="point estimates only (no bootstrap)")
    ap.add_argument("--top", type=int, default=10, help="jury subsets to print")
    ap.add_argument(
        "--out", metavar="FILE", help="JSON output (default: RUN/agreement.recomputed.json or ./agreement.authors.json)"
    )
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    if bool(args.authors) == bool(args.runs):
        ap.print_usage(sys.stderr)
        print("mapo agreement: give run folders or --authors DIR (not both)", file=sys.stderr)
        return 2
    stats = {
        "n_resamples": args.n_resamples,
        "seed": args.seed,
        "confidence": args.confidence,
        "margin": args.margin,
        "reference": args.reference,
        "intervals": not args.no_intervals,
    }
    from mapo.data.humans import HumanDataError
    from mapo.data.importers import JudgmentsFormatError

    try:
        if args.authors:
            tables = authors_tables(
                args.authors,
                args.humans,
                subsets=args.jury_subsets,
                rule=args.rule,
                sizes=sizes,
                recorded=args.recorded,
                strategies=None if args.strategy == "all" else (args.strategy,),
                columns=parse_mapping(args.humans_columns, "--humans-columns", repeatable=("human",)),
                labels=_labels_of(parse_mapping(args.humans_labels, "--humans-labels")) or None,
                **stats,
            )
            out = Path(args.out or "agreement.authors.json")
        else:
            tables = run_tables(
                args.runs,
                order_combine=args.order_combine,
                subsets=args.jury_subsets,
                rule=args.rule,
                sizes=sizes,
                **stats,
            )
            first = Path(args.runs[0])
            out = (
                Path(args.out)
                if args.out
                else (first if first.is_dir() else first.parent) / "agreement.recomputed.json"
            )
    except (FileNotFoundError, ValueError, HumanDataError, JudgmentsFormatError) as e:
        print(f"mapo agreement: {e}", file=sys.stderr)
        return 2
    if args.families:
        try:
            tables["families"] = parse_mapping(args.families, "--families")
        except ValueError as e:
            print(f"mapo agreement: {e}", file=sys.stderr)
            return 2
    print(format_table(tables, top_subsets=args.top, json_path=str(out)))
    for note in tables.get("notes", []):
        print(f"note: {note}")
    out.write_text(json.dumps(tables, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0
