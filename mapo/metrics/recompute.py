"""Agreement tables recomputed from stored verdicts, without a model call: ``mapo evaluate``
records (:func:`record_tables`) or the original authors' judge outputs against human labels
(:func:`authors_tables`, through :func:`mapo.data.importers.author_evaluators`, the same
evaluators the report's bias diagnostics re-read). ``mapo agreement`` (:mod:`mapo.cli.agreement`)
is their command line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapo.core.types import is_judgement, record_kind
from mapo.metrics.agreement import cohen_kappa
from mapo.metrics.tables import ANNOTATORS_KEY, LABELS_KEY, add_uncertainty, build_tables, combine_orders
from mapo.metrics.tables import jury_subset_block as _subset_block
from mapo.metrics.uncertainty import CONFIDENCE, MARGIN, N_RESAMPLES, SEED, Bootstrap

__all__ = ["authors_tables", "record_tables"]


def record_tables(
    records: Iterable[Mapping[str, Any]],
    sources: Iterable[str],
    *,
    order_combine: str = "inconsistent_tie",
    subsets: bool = False,
    rule: str = "mode",
    sizes: list[int] | None = None,
    **stats: Any,
) -> dict[str, Any]:
    """Agreement tables of ``mapo evaluate`` records (read from the files ``sources``); ``subsets``
    adds juries of the single judges that share a setup (e.g. a multirun sweep). ``stats``:
    ``agreement_tables``' interval options."""
    records = [r for r in records if is_judgement(r)]
    sources = [str(f) for f in sources]
    if not records:
        raise ValueError(f"no evaluate records in {', '.join(sources)}")
    tables, humans = build_tables(records, order_combine=order_combine, subsets=True)
    tables["sources"] = sources
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
    from mapo.data.importers import STRATEGIES, author_evaluators, strategies_in

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
    for ev in author_evaluators(root, chosen):
        recs = ev.records
        missing_ids = [r.index for r in recs if str(r.index) not in human_by_id]
        if missing_ids:
            raise ValueError(
                f"{root}/{ev.strategy} ({ev.model}): records {missing_ids[:5]} have no item with that id in {humans_file}"
            )
        labels_ = ev.labels(recorded)
        judged.update(labels_)
        ids = list(labels_)
        a = cohen_kappa([labels_[i] for i in ids], [human_by_id[i] for i in ids])
        entry: dict[str, Any] = {
            "judge": ev.name,
            "kind": ev.kind,
            "setup": ev.setup,
            "models": [ev.model],
            "member_of": None,
            "source": ev.strategy,
            "parse_mismatches": sum(not r.agrees for r in recs),
            # their parser's failures (-1 scores; a judge's default tie): scores to their kappa script
            "authors_parse_failures": sum(r.authors_failed for r in recs),
            **a.to_dict(),
            LABELS_KEY: labels_,
        }
        if record_kind(ev.kind).replay == "finals":  # a debate's referees, who abstain when their final fails
            entry["referees_abstained"] = sum(r.n_abstained for r in recs)
        results.append(entry)
        if ev.strategy == "multi-rater10":
            per_judge[ev.model] = labels_
    order = {s: i for i, s in enumerate(STRATEGIES)}  # the authors' folders in their order, the debates last
    results.sort(key=lambda e: (order[e["source"]], e["kappa"] is None, -(e["kappa"] or 0.0)))
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
