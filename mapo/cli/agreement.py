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
debate that was run with the highest kappa, never a jury subset formed afterwards): "better",
"not worse" (by more than ``--margin``), "significantly lower, within the margin",
"significantly lower (margin not excluded)", "worse", or "cannot tell" with the number of items
that would decide (:mod:`mapo.metrics.uncertainty`). With ``--recorded``
(the authors' own parsed scores, which reproduce the paper) their parse failures (-1 scores)
count as scores as they did in the paper, and are counted and reported.

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapo.core.store import iter_records
from mapo.core.types import is_judgement, record_kind
from mapo.metrics.agreement import cohen_kappa
from mapo.metrics.tables import ANNOTATORS_KEY, LABELS_KEY, add_uncertainty, build_tables, combine_orders, format_table
from mapo.metrics.tables import jury_subset_block as _subset_block
from mapo.metrics.uncertainty import CONFIDENCE, MARGIN, N_RESAMPLES, SEED, Bootstrap

__all__ = ["authors_tables", "main", "parse_mapping", "run_tables"]


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
    **stats: Any,
) -> dict[str, Any]:
    """Agreement tables of ``mapo evaluate`` records; ``subsets`` adds juries of the single judges
    that share a setup (e.g. a multirun sweep). ``stats``: ``agreement_tables``' interval options."""
    files = _record_files(paths)
    records = [r for f in files for r in iter_records(f) if is_judgement(r)]
    if not records:
        raise ValueError(f"no evaluate records in {', '.join(map(str, files))}")
    tables, humans = build_tables(records, order_combine=order_combine, subsets=True)
    tables["sources"] = [str(f) for f in files]
    # a jury's own subsets are kept; juror records without their jury (e.g. filtered files) form none
    kept_blocks = tables.pop("jury_subsets", []) if any(record_kind(r["kind"]).aggregate for r in records) else []
    if subsets:
        # juries of single judges (kind judge) that share a setup, e.g. from a multirun sweep
        by_setup: dict[str, dict[str, dict[str, dict[str, Mapping[str, Any]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(dict))
        )
        for r in records:
            if record_kind(r["kind"]).single:
                by_setup[r["setup"]][r["judge"]][r["item_id"]][r["order"]] = r
        for setup, judges in by_setup.items():
            verdicts = {
                j: {i: combine_orders(o.values(), order_combine) for i, o in v.items()} for j, v in judges.items()
            }
            block = _subset_block(
                {j: {i: x[0] for i, x in v.items()} for j, v in verdicts.items()},
                humans,
                jury=f"single judges ({len(judges)})",
                setup=setup,
                rule=rule,
                sizes=sizes,
                per_judge_scores={j: {i: _pair(x[1], x[2]) for i, x in v.items()} for j, v in verdicts.items()},
            )
            if block is not None:
                kept_blocks.append(block)
    if kept_blocks:
        tables["jury_subsets"] = kept_blocks
    _uncertainty(tables, humans, stats)
    return tables


def _pair(a: float | None, b: float | None) -> tuple[float, float] | None:
    return None if a is None or b is None else (a, b)


def _uncertainty(tables: dict[str, Any], humans: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    settings = Bootstrap(
        n_resamples=int(stats.get("n_resamples", N_RESAMPLES)),
        seed=int(stats.get("seed", SEED)),
        confidence=float(stats.get("confidence", CONFIDENCE)),
    )
    add_uncertainty(
        tables,
        humans,
        settings=settings,
        margin=float(stats.get("margin", MARGIN)),
        reference=stats.get("reference"),
        intervals=bool(stats.get("intervals", True)),
    )


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


def authors_tables(
    root: str | Path,
    humans_path: str | Path | None,
    *,
    subsets: bool = False,
    rule: str = "mode",
    sizes: list[int] | None = None,
    recorded: bool = False,
    strategies: Iterable[str] | None = None,
    columns: Mapping[str, str] | None = None,
    labels: Mapping[Any, Any] | None = None,
    **stats: Any,
) -> dict[str, Any]:
    """Kappa of each of the authors' judges and debates against the human labels in
    ``humans_path`` (default: the shared FairEval copy); juries of their combined-scoring /10
    judges. ``strategies`` None = every strategy folder present (others are noted, not errors).
    ``recorded`` uses the scores their parser stored instead of mapo's re-parse of the raw texts."""
    from mapo.data.humans import default_faireval_path, human_labels_spec, read_human_labels
    from mapo.data.importers import SETUPS, STRATEGIES, load_author_judgments, strategies_in

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder (expected the authors' strategy folders: {', '.join(STRATEGIES)})"
        )
    present = strategies_in(root)
    notes: list[str] = []
    if strategies is None:
        chosen = present
        missing = [s for s in STRATEGIES if s not in present]
        if missing:
            notes.append(f"skipped absent strategy folders under {root}: {', '.join(missing)}")
        if not chosen:
            raise FileNotFoundError(f"{root}: none of the strategy folders {', '.join(STRATEGIES)}")
    else:
        chosen = list(strategies)
        absent = [s for s in chosen if s not in present]
        if absent:
            raise FileNotFoundError(f"{root}: no {', '.join(absent)} folder (present: {', '.join(present) or 'none'})")

    humans_file = Path(humans_path) if humans_path else default_faireval_path()
    spec = human_labels_spec(humans_file, columns, labels)
    rows = read_human_labels(spec)
    human_by_id = {r["id"]: r["human"] for r in rows}
    annotators = {r["id"]: r["annotators"] for r in rows if "annotators" in r}
    results = []
    per_judge: dict[str, dict[str, Any]] = {}
    judged: set[str] = set()
    for strategy in chosen:
        for judge, recs in sorted(load_author_judgments(root, strategy).items()):
            missing_ids = [r.index for r in recs if str(r.index) not in human_by_id]
            if missing_ids:
                raise ValueError(
                    f"{root}/{strategy} ({judge}): records {missing_ids[:5]} have no item with that id in {humans_file}"
                )
            labels_ = {str(r.index): (r.recorded_label if recorded else r.parsed_label) for r in recs}
            judged.update(labels_)
            ids = list(labels_)
            a = cohen_kappa([labels_[i] for i in ids], [human_by_id[i] for i in ids])
            kind = "debate" if strategy == "debate" else "judge"
            entry: dict[str, Any] = {
                "judge": judge if kind == "judge" else f"debate[{judge}]",
                "kind": kind,
                "setup": SETUPS[strategy],
                "models": [judge],
                "member_of": None,
                "source": strategy,
                "parse_mismatches": sum(not r.agrees for r in recs),
                # their parser's failures (-1 scores; a judge's default tie): scores to their kappa script
                "authors_parse_failures": sum(r.authors_failed for r in recs),
                **a.to_dict(),
                LABELS_KEY: labels_,
            }
            if strategy == "debate":
                entry["referees_abstained"] = sum(r.n_abstained for r in recs)
            results.append(entry)
            if strategy == "multi-rater10":
                per_judge[judge] = labels_
    order = {s: i for i, s in enumerate(STRATEGIES)}
    results.sort(key=lambda e: (e["kind"] == "debate", order[e["source"]], e["kappa"] is None, -(e["kappa"] or 0.0)))
    failures = sum(e["authors_parse_failures"] for e in results)
    if recorded and failures:
        notes.append(
            f"--recorded: {failures} records hold the authors' parse failures (-1 scores, or a judge's default tie), "
            "counted as scores as in the paper (see authors_parse_failures per judge)"
        )
    humans = {i: h for i, h in human_by_id.items() if i in judged}
    out: dict[str, Any] = {
        "source": str(root),
        "humans": str(humans_file),
        "humans_spec": spec,
        "strategies": chosen,
        "labels_from": "recorded scores" if recorded else "mapo re-parse of the raw texts",
        "notes": notes,
        "results": results,
    }
    if subsets:
        block = _subset_block(per_judge, humans, jury="authors' judges", setup="combined10", rule=rule, sizes=sizes)
        if block is not None:
            out["jury_subsets"] = [block]
        elif "multi-rater10" not in chosen:
            notes.append("--jury-subsets: juries are formed from the multi-rater10 judges, and that folder is not read")
    if annotators:
        out[ANNOTATORS_KEY] = {i: a for i, a in annotators.items() if i in humans}
    _uncertainty(out, humans, stats)
    return out


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
        "and their agreement with each other is the human ceiling",
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
        help="evaluator the verdicts compare with (default: the judge, jury or debate that was run with the "
        "highest kappa; jury subsets formed by --jury-subsets are never the default)",
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
