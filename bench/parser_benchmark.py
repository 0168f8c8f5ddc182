"""Run mapo's score-pair parser over every real judge text of the authors' FairEval outputs.

For each judge and strategy (multi-rater10 = combined scoring /10, debate = three referees'
final answers, averaged) it counts records and texts, how many parse, and how many re-parse
to exactly the recorded ``score_1``/``score_2`` (and to the same pick). As a harder, unscored
corpus it also counts the debate discussion turns in which a score pair can be read.

    PYTHONPATH=. python bench/parser_benchmark.py [--root shared/data/faireval/mapo-judgments] [--out parser_benchmark.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from mapo.core.parsers import PARSERS
from mapo.data.importers import STRATEGIES, AuthorRecord, default_root, iter_author_records

_pair = PARSERS.get("score_pair")


def _tally(records: list[AuthorRecord]) -> dict[str, int]:
    return {
        "records": len(records),
        "records_parsed": sum(r.parsed is not None for r in records),
        "records_agree": sum(r.agrees for r in records),
        "picks_agree": sum(r.parsed_label is not None and r.parsed_label == r.recorded_label for r in records),
        "texts": sum(len(r.texts) for r in records),
        "texts_parsed": sum(len(r.texts) - len(r.parse_errors) for r in records),
        # debate discussion turns carry no recorded score; how many state a readable pair anyway
        "discussion_turns": sum(len(r.discussion) for r in records),
        "discussion_turns_with_pair": sum(_pair(t).ok for r in records for t in r.discussion),
    }


def run(root: Path) -> dict[str, Any]:
    by: dict[tuple[str, str], list[AuthorRecord]] = defaultdict(list)
    for strategy in STRATEGIES:
        for rec in iter_author_records(root, strategy):
            by[(strategy, rec.judge)].append(rec)
    every = [r for recs in by.values() for r in recs]
    per_model: dict[str, list[AuthorRecord]] = defaultdict(list)
    for (_, judge), recs in by.items():
        per_model[judge].extend(recs)
    return {
        "root": str(root),
        "overall": _tally(every),
        "per_strategy": {s: _tally([r for r in every if r.strategy == s]) for s in STRATEGIES},
        "per_model": {j: _tally(recs) for j, recs in sorted(per_model.items())},
        "per_model_strategy": {
            f"{j}/{s}": _tally(recs) for (s, j), recs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        },
        "failures": [
            {
                "judge": r.judge,
                "strategy": r.strategy,
                "index": r.index,
                "recorded": r.recorded,
                "parsed": r.parsed,
                "errors": list(r.parse_errors),
            }
            for r in every
            if not r.agrees
        ],
    }


def _print(report: dict[str, Any]) -> None:
    head = f"{'':28} {'parsed/records':>15} {'agree/records':>14} {'picks agree':>12} {'texts parsed':>13} {'discussion w/ pair':>19}"
    print(head)
    rows = [("overall", report["overall"])] + list(report["per_strategy"].items()) + list(report["per_model"].items())
    rows += list(report["per_model_strategy"].items())
    for name, t in rows:
        print(
            f"{name:28} {t['records_parsed']:>6}/{t['records']:<8} {t['records_agree']:>5}/{t['records']:<8} "
            f"{t['picks_agree']:>5}/{t['records']:<6} {t['texts_parsed']:>5}/{t['texts']:<7} "
            f"{t['discussion_turns_with_pair']:>8}/{t['discussion_turns']:<8}"
        )
    if report["failures"]:
        print(f"\n{len(report['failures'])} records disagree; first: {report['failures'][0]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--root", type=Path, default=None, help="mapo-judgments folder (default: ../shared or $MAPO_SHARED)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    root = args.root or default_root()
    if root is None:
        print("no mapo-judgments folder: pass --root or set MAPO_SHARED", file=sys.stderr)
        return 2
    report = run(root)
    _print(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
