"""``mapo agreement``: Cohen's kappa tables from stored judgements, no model call.

Two sources:

* run folders or JSONL files of ``mapo evaluate`` records (``judgements.jsonl``, or
  ``reparsed.jsonl`` after ``mapo reparse``)::

      mapo agreement runs/evaluate
      mapo agreement multirun/evaluate/* --jury-subsets      # juries formed across separate judge runs

* the original authors' FairEval outputs (``mapo.data.importers``) against the human labels::

      mapo agreement --authors ../shared/data/faireval/mapo-judgments \\
                     --humans ../shared/data/faireval/fair_eval.jsonl --jury-subsets

``--jury-subsets`` adds the kappa of every jury (subset of sizes 2..n of the single judges
that judged the same items with the same setup; rule ``--rule``, default the paper's mode with
a multi-way mode as a tie). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapo.metrics.agreement import cohen_kappa, jury_subsets
from mapo.metrics.tables import agreement_tables, combine_orders, format_table
from mapo.runs.store import iter_records

__all__ = ["authors_tables", "main", "run_tables"]


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


def run_tables(
    paths: Iterable[str],
    *,
    order_combine: str = "inconsistent_tie",
    subsets: bool = False,
    rule: str = "mode",
    sizes: list[int] | None = None,
) -> dict[str, Any]:
    files = _record_files(paths)
    records = [r for f in files for r in iter_records(f) if r.get("kind") in ("judge", "juror", "jury", "debate")]
    if not records:
        raise ValueError(f"no evaluate records in {', '.join(map(str, files))}")
    tables = agreement_tables(records, order_combine=order_combine, subsets=True)
    tables["sources"] = [str(f) for f in files]
    if subsets:
        # juries of single judges (kind judge) that share a setup, e.g. from a multirun sweep
        by_setup: dict[str, dict[str, dict[str, dict[str, Mapping[str, Any]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(dict))
        )
        humans: dict[str, str] = {}
        for r in records:
            if r["kind"] == "judge":
                by_setup[r["setup"]][r["judge"]][r["item_id"]][r["order"]] = r
                humans[r["item_id"]] = r["human"]
        extra = []
        for setup, judges in by_setup.items():
            if len(judges) < 2:
                continue
            ids = sorted(set.intersection(*(set(v) for v in judges.values())), key=list(humans).index)
            verdicts = {j: {i: combine_orders(v[i].values(), order_combine) for i in ids} for j, v in judges.items()}
            labels = {j: [verdicts[j][i][0] for i in ids] for j in judges}
            scores = {
                j: [(verdicts[j][i][1], verdicts[j][i][2]) if None not in verdicts[j][i][1:] else None for i in ids]
                for j in judges
            }
            rows = jury_subsets(
                labels,
                [humans[i] for i in ids],
                sizes=sizes,
                rule=rule,
                per_judge_scores=scores if rule == "mean_score" else None,
            )
            extra.append(
                {
                    "jury": f"single judges ({len(judges)})",
                    "setup": setup,
                    "rule": rule,
                    "tie_break": "tie",
                    "subsets": [{**r.to_dict(), "size": len(r.members)} for r in rows],
                }
            )
        tables.setdefault("jury_subsets", []).extend(extra)
    elif "jury_subsets" in tables and not any(r["kind"] == "jury" for r in records):
        tables.pop("jury_subsets")
    return tables


def authors_tables(
    root: str | Path,
    humans_path: str | Path | None,
    *,
    subsets: bool = False,
    rule: str = "mode",
    sizes: list[int] | None = None,
    recorded: bool = False,
    strategies: Iterable[str] = ("multi-rater10", "debate"),
) -> dict[str, Any]:
    """Kappa of each of the authors' judges (and debates) on FairEval; juries of their
    combined-scoring judges. ``recorded`` uses the scores their parser stored instead of
    mapo's re-parse of the raw texts."""
    from mapo.data.humans import load_faireval
    from mapo.data.importers import load_author_judgments

    rows = load_faireval(humans_path)
    human_by_id = {r["id"]: r["human"] for r in rows}
    results = []
    per_judge: dict[str, list] = {}
    for strategy in strategies:
        for judge, recs in sorted(load_author_judgments(Path(root), strategy).items()):
            missing = [r.index for r in recs if str(r.index) not in human_by_id]
            if missing:
                raise ValueError(f"{root}/{strategy}: records {missing[:5]} have no FairEval item with that id")
            labels = [r.recorded_label if recorded else r.parsed_label for r in recs]
            humans = [human_by_id[str(r.index)] for r in recs]
            a = cohen_kappa(labels, humans)
            kind = "debate" if strategy == "debate" else "judge"
            results.append(
                {
                    "judge": judge if kind == "judge" else f"debate[{judge}]",
                    "kind": kind,
                    "setup": "combined10" if strategy == "multi-rater10" else "debate10/r2/mean_score",
                    "models": [judge],
                    "member_of": None,
                    "source": strategy,
                    "parse_mismatches": sum(not r.agrees for r in recs),
                    **a.to_dict(),
                }
            )
            if strategy == "multi-rater10":
                per_judge[judge] = labels
                humans_order = humans
    results.sort(key=lambda e: (e["kind"], e["kappa"] is None, -(e["kappa"] or 0.0)))
    out: dict[str, Any] = {
        "source": str(root),
        "humans": str(humans_path or "default FairEval"),
        "labels_from": "recorded scores" if recorded else "mapo re-parse of the raw texts",
        "results": results,
    }
    if subsets and len(per_judge) >= 2:
        js = jury_subsets(per_judge, humans_order, sizes=sizes, rule=rule)
        out["jury_subsets"] = [
            {
                "jury": "authors' judges",
                "setup": "combined10",
                "rule": rule,
                "tie_break": "tie",
                "subsets": [{**r.to_dict(), "size": len(r.members)} for r in js],
            }
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapo agreement",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("runs", nargs="*", help="run folders (judgements.jsonl) or JSONL files of evaluate records")
    ap.add_argument("--authors", metavar="DIR", help="the authors' judgments folder (multi-rater10/, debate/)")
    ap.add_argument("--humans", metavar="FILE", help="FairEval JSONL with the human labels (default: the shared copy)")
    ap.add_argument("--jury-subsets", action="store_true", help="kappa of every jury formed from the single judges")
    ap.add_argument("--sizes", default=None, help="jury sizes, e.g. 2,3 (default 2..n)")
    ap.add_argument("--rule", default="mode", help="jury rule: mode (paper) | majority | mean_score")
    ap.add_argument(
        "--order-combine", default="inconsistent_tie", help="inconsistent_tie | mean_score (runs judged in both orders)"
    )
    ap.add_argument(
        "--recorded", action="store_true", help="--authors: use the scores their parser recorded, not mapo's re-parse"
    )
    ap.add_argument(
        "--strategy", choices=["multi-rater10", "debate", "all"], default="all", help="--authors: which outputs"
    )
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
    try:
        if args.authors:
            strategies = ("multi-rater10", "debate") if args.strategy == "all" else (args.strategy,)
            tables = authors_tables(
                args.authors,
                args.humans,
                subsets=args.jury_subsets,
                rule=args.rule,
                sizes=sizes,
                recorded=args.recorded,
                strategies=strategies,
            )
            out = Path(args.out or "agreement.authors.json")
        else:
            tables = run_tables(
                args.runs, order_combine=args.order_combine, subsets=args.jury_subsets, rule=args.rule, sizes=sizes
            )
            first = Path(args.runs[0])
            out = (
                Path(args.out)
                if args.out
                else (first if first.is_dir() else first.parent) / "agreement.recomputed.json"
            )
    except (FileNotFoundError, ValueError) as e:
        print(f"mapo agreement: {e}", file=sys.stderr)
        return 2
    print(format_table(tables, top_subsets=args.top))
    out.write_text(json.dumps(tables, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0
