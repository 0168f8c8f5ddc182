"""``mapo leaderboard RUN_DIR... [--out DIR]``: judges x datasets, like AlpacaEval's evaluator table.

Collects every ``mapo evaluate`` run at or under the given paths (single runs and Hydra
sweep folders alike) and every ``mapo agreement`` output (the file its ``--out`` names, or
``agreement*.json`` files in the folders), and tabulates, for each (judge, setup) on each
dataset: Cohen's kappa with the humans and its 95% interval, the verdict against the
reference evaluator (better / not worse / lower / worse / cannot tell, on these labels), the parse-failure
rate, position bias (when both orders were judged), length bias (when the evaluated items can
be read) and cost in tokens. Every entry of ``agreement.json`` counts: judges, a jury's
jurors, juries and debates. When the same (dataset, judge, setup) appears in several
sources, the one over more items wins (then the newest).

The reference is the one each source's tables were computed against (by default the best
evaluator); ``--reference NAME`` recomputes every verdict against NAME from the sources'
per-item verdicts (:mod:`mapo.report.evidence`), with the sources' own bootstrap settings.

Written to ``DIR`` (default ``./leaderboard``):

* ``leaderboard.csv``: one row per (dataset, judge, setup), every figure (long format);
* ``leaderboard_wide.csv``: one row per (judge, setup), kappa (and interval, verdict) per dataset + means;
* ``leaderboard.md`` and ``leaderboard.html`` (self-contained, with a kappa heatmap).

Columns: ``kappa`` (3-class Cohen's kappa, failures left out) with ``kappa_low`` /
``kappa_high``; ``reference``, ``diff`` (kappa - kappa of the reference on the same items,
paired bootstrap) with ``diff_low`` / ``diff_high``, ``verdict`` (better | not_worse |
lower_within_margin | lower | worse | cannot_tell | reference, margin ``margin``) and ``n_needed`` (items that would decide);
``failure_rate`` (items with no verdict in any order / items), ``record_failure_rate``
(failed records / records, one record per item and order), ``first_rate`` (P(picks the
response shown first | decisive); 0.5 = unbiased), ``consistency`` (same verdict in both
orders), ``longer_rate`` / ``human_longer_rate`` (P(prefers the longer response) of the judge
and of the humans on the same pairs) and ``length_bias`` (their difference, with interval),
``tokens`` (prompt + completion tokens of the records behind the entry; cache hits keep
their original counts), ``tokens_per_item``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mapo.core.store import atomic_write_text
from mapo.core.types import record_kind
from mapo.metrics.tables import reference_choice_text
from mapo.metrics.uncertainty import verdict_words
from mapo.report import plots
from mapo.report.document import Document, Fig, Section, Table, Text, ci, render_html, render_markdown
from mapo.report.evidence import bias_diagnostics, by_evaluator, evidence, settings_of
from mapo.report.run import Run, find_sources, load_run
from mapo.report.sections.evaluate import agreement

__all__ = ["Entry", "collect", "main", "wide_table", "write_leaderboard"]


@dataclass
class Entry:
    """One (dataset, judge, setup) of the leaderboard, with its figures (columns: module doc)."""

    dataset: str
    judge: str
    setup: str
    kind: str
    n: int
    n_failed: int
    kappa: float | None
    accuracy: float | None
    failure_rate: float
    # the figures that only records give (None = unknown: an entry read from agreement outputs has no records)
    record_failure_rate: float | None = field(default=None, kw_only=True)
    first_rate: float | None = field(default=None, kw_only=True)
    consistency: float | None = field(default=None, kw_only=True)
    tokens: int | None = field(default=None, kw_only=True)
    """None when no record of the entry was read (agreement outputs carry none): unknown, not 0."""
    tokens_per_item: float | None = field(default=None, kw_only=True)
    run: str
    kappa_low: float | None = None
    kappa_high: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    reference: str | None = None
    margin: float | None = None
    diff: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None
    verdict: str | None = None
    n_needed: int | None = None
    first_rate_low: float | None = None
    first_rate_high: float | None = None
    longer_rate: float | None = None
    human_longer_rate: float | None = None
    length_bias: float | None = None
    length_bias_low: float | None = None
    length_bias_high: float | None = None
    contains_reference: bool = False
    """A jury that calls the reference: compared with it, never a stand-in for it."""
    selected: bool = False
    """A jury chosen as the best of every subset on these items: its kappa is optimistic."""
    selection_corrected: float | None = None
    """The selected jury's kappa corrected for the choice (:mod:`mapo.metrics.best_of`)."""
    selection_corrected_low: float | None = None
    selection_corrected_high: float | None = None
    n_candidates: int | None = None
    """Subsets the selected jury was chosen from."""
    loo_kappa: float | None = None
    """Several annotators: kappa against the majority of all but one, mean (compare with the ceiling)."""
    loo_kappa_low: float | None = None
    loo_kappa_high: float | None = None
    each_annotator_kappa: float | None = None
    """Several annotators, each a separate human: kappa against one annotator, mean over them (for the human
    row: one annotator against another, the mean pairwise kappa)."""
    each_annotator_kappa_low: float | None = None
    each_annotator_kappa_high: float | None = None

    @property
    def name(self) -> str:
        """``judge (setup)``, the row name of the wide table."""
        return f"{self.judge} ({self.setup})"

    @property
    def verdict_text(self) -> str:
        """The verdict in words ("cannot tell (~924 items needed)"); "–" without one."""
        if not self.verdict:
            return "–"
        words = verdict_words(self.verdict, self.n_needed)
        return words + (f" (contains {self.reference})" if self.contains_reference else "")


def _dataset(eval_data: dict[str, Any]) -> str:
    loader = str(eval_data.get("loader") or "?")
    name = loader
    for key in ("path", "data_files"):
        if loader == "local" and eval_data.get(key):
            name = f"local:{Path(str(eval_data[key])).stem}"
    if eval_data.get("limit"):
        name += f"[:{eval_data['limit']}]"
    return name


def _source_dataset(run: Run, tables: Mapping[str, Any]) -> str:
    """The dataset of a source: its eval_data; for ``mapo agreement --authors``, the human-label file
    (the shared FairEval copy is ``faireval``, as ``eval_data=faireval`` names it)."""
    if run.agreement_file is not None and tables.get("humans"):
        from mapo.data.humans import default_faireval_path

        humans = Path(str(tables["humans"]))
        if humans.exists() and default_faireval_path().exists() and humans.samefile(default_faireval_path()):
            return "faireval"
        return f"local:{humans.stem}"
    ed = tables.get("eval_data") or run.manifest.get("eval_data")
    if not ed and run.agreement_file is not None and tables.get("sources"):
        from mapo.report.run import read_json

        first = Path(str(tables["sources"][0])).parent
        ed = (read_json(first / "agreement.json") or {}).get("eval_data") or (
            read_json(first / "manifest.json") or {}
        ).get("eval_data")
    return _dataset(ed or {})


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _pair(v: Any) -> tuple[float | None, float | None]:
    return (_f(v[0]), _f(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else (None, None)


def _rereference(run: Run, tables: dict[str, Any], reference: str, notes: list[str]) -> dict[str, Any]:
    """``tables`` with every interval and verdict recomputed against ``reference`` from the source's
    per-item verdicts; unchanged (with a note) when they cannot be read or name no such evaluator."""
    if (tables.get("uncertainty") or {}).get("reference") == reference:
        return tables
    from mapo.metrics.tables import ANNOTATORS_KEY, add_uncertainty, build_tables

    where = str(run.agreement_file or run.dir)
    ev = evidence(run, tables)
    if not ev.records:
        notes.append(f"{where}: no per-item verdicts, so its verdicts stay against its own reference")
        return tables
    if reference not in {str(r.get("judge")) for r in ev.records}:
        notes.append(f"{where}: has no evaluator {reference!r}; its verdicts stay against its own reference")
        return tables
    u = tables.get("uncertainty") or {}
    combine = str(tables.get("order_combine", "inconsistent_tie"))
    new, humans = build_tables(ev.records, order_combine=combine)
    if ev.annotators and ANNOTATORS_KEY not in new:  # label files with several annotators: the ceiling again
        new[ANNOTATORS_KEY] = {i: a for i, a in ev.annotators.items() if i in humans}
    if tables.get("jury_subsets") and not new.get("jury_subsets"):
        # juries formed across single judges (mapo agreement --jury-subsets): formed again from the same labels
        blocks = [_judges_block(ev.records, humans, b, combine) for b in tables["jury_subsets"]]
        if any(blocks):
            new["jury_subsets"] = [b for b in blocks if b]
    add_uncertainty(new, humans, settings=settings_of(tables), margin=float(u.get("margin", 0.05)), reference=reference)
    keep = {k: v for k, v in tables.items() if k not in ("results", "jury_subsets", "uncertainty", "human_agreement")}
    return {**keep, **new}


def _judges_block(
    records: Sequence[Mapping[str, Any]], humans: Mapping[str, Any], block: Mapping[str, Any], combine: str
) -> dict[str, Any] | None:
    """A ``jury_subsets`` block formed again from the single judges' records it was formed from."""
    from mapo.metrics.tables import combine_orders, jury_subset_block

    members = {m for s in block.get("subsets") or [] for m in s.get("members") or []}
    by_judge: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if record_kind(r.get("kind")).single and r.get("judge") in members and r.get("setup") == block.get("setup"):
            by_judge[str(r["judge"])][str(r["item_id"])].append(r)
    labels = {j: {i: combine_orders(rs, combine)[0] for i, rs in items.items()} for j, items in by_judge.items()}
    sizes = sorted({len(s.get("members") or []) for s in block.get("subsets") or []})
    return jury_subset_block(
        labels,
        humans,
        jury=str(block.get("jury")),
        setup=str(block.get("setup")),
        rule=str(block.get("rule", "mode")),
        tie_break=str(block.get("tie_break", "tie")),
        sizes=sizes,
    )


def collect(
    paths: Iterable[str | Path], *, reference: str | None = None, notes: list[str] | None = None
) -> list[Entry]:
    """Every evaluation entry found at or under ``paths``, deduplicated (see module doc).
    ``reference``: recompute the verdicts against this evaluator; ``notes`` collects what could not be."""
    notes = notes if notes is not None else []
    best: dict[tuple[str, str, str], tuple[Entry, float]] = {}

    def keep(entry: Entry, mtime: float) -> None:
        key = (entry.dataset, entry.judge, entry.setup)
        old = best.get(key)
        rank = lambda x, t: (x.n + x.n_failed, not record_kind(x.kind).member, t)  # noqa: E731 - more items, a judge run, newer
        if old is None or rank(entry, mtime) > rank(*old):
            best[key] = (entry, mtime)

    for source in find_sources(paths):
        run = load_run(source)
        if run.command not in ("evaluate", "agreement"):
            continue
        tables, _ = agreement(run)
        if not tables:
            continue
        if reference is not None:
            tables = _rereference(run, tables, reference, notes)
        dataset = _source_dataset(run, tables)
        tokens: dict[tuple, int] = defaultdict(int)
        records: dict[tuple, int] = defaultdict(int)
        failed: dict[tuple, int] = defaultdict(int)
        for r in run.records("judgements.jsonl"):
            k = (r.get("kind"), r.get("judge"), r.get("setup"), r.get("member_of"))
            tokens[k] += int(r.get("prompt_tokens") or 0) + int(r.get("completion_tokens") or 0)
            records[k] += 1
            failed[k] += r.get("label") is None
        length = by_evaluator(bias_diagnostics(evidence(run, tables), tables).get("length"))
        stamp = run.agreement_file or (run.dir / "agreement.json")
        mtime = stamp.stat().st_mtime if stamp.exists() else 0.0
        margin = (tables.get("uncertainty") or {}).get("margin")
        u = tables.get("uncertainty") or {}
        if "n_candidates" in (u.get("reference_choice") or {}):  # the default reference: a choice on these items
            notes.append(f"{run.agreement_file or run.dir}: {reference_choice_text(u)}")
        for e in tables.get("results") or []:
            k = (e.get("kind"), e.get("judge"), e.get("setup"), e.get("member_of"))
            items = int(e.get("n", 0)) + int(e.get("n_failed", 0))
            pb = e.get("position_bias") or {}
            vs = e.get("vs_reference") or {}
            lb = length.get((str(e.get("judge")), str(e.get("setup")))) or {}
            entry = Entry(
                dataset=dataset,
                judge=str(e.get("judge")),
                setup=str(e.get("setup")),
                kind=str(e.get("kind")),
                n=int(e.get("n", 0)),
                n_failed=int(e.get("n_failed", 0)),
                kappa=e.get("kappa"),
                accuracy=e.get("accuracy"),
                failure_rate=float(e.get("failure_rate") or 0.0),
                record_failure_rate=failed[k] / records[k] if records[k] else None,
                first_rate=pb.get("first_rate"),
                consistency=pb.get("consistency"),
                tokens=tokens[k] if records[k] else None,
                tokens_per_item=tokens[k] / items if items and records[k] else None,
                run=str(run.agreement_file or run.dir),
                **_against_reference(e, vs, margin),
                first_rate_low=_pair(pb.get("first_rate_ci"))[0],
                first_rate_high=_pair(pb.get("first_rate_ci"))[1],
                longer_rate=lb.get("judge_rate"),
                human_longer_rate=lb.get("human_rate"),
                length_bias=lb.get("diff"),
                length_bias_low=_pair(lb.get("diff_ci"))[0],
                length_bias_high=_pair(lb.get("diff_ci"))[1],
                **_annotator_fields(e),
            )
            keep(entry, mtime)
        for entry in _extra_entries(tables, dataset, str(run.agreement_file or run.dir), margin):
            keep(entry, mtime)
    entries = [e for e, _ in best.values()]
    return sorted(entries, key=lambda e: (e.dataset, e.kappa is None, -(e.kappa or 0.0), e.judge))


def _against_reference(result: Mapping[str, Any], vs: Mapping[str, Any], margin: Any) -> dict[str, Any]:
    """The kappa and accuracy intervals of one agreement result and its comparison with the reference
    (``vs_reference``): the Entry fields a judge, a debate and a selected jury share."""
    return {
        "kappa_low": _pair(result.get("kappa_ci"))[0],
        "kappa_high": _pair(result.get("kappa_ci"))[1],
        "accuracy_low": _pair(result.get("accuracy_ci"))[0],
        "accuracy_high": _pair(result.get("accuracy_ci"))[1],
        "reference": vs.get("reference"),
        "margin": _f(margin) if vs else None,
        "diff": 0.0 if vs.get("verdict") == "reference" else _f(vs.get("diff")),
        "diff_low": _pair(vs.get("diff_ci"))[0],
        "diff_high": _pair(vs.get("diff_ci"))[1],
        "verdict": vs.get("verdict"),
        "n_needed": vs.get("n_needed"),
    }


def _annotator_fields(e: Mapping[str, Any]) -> dict[str, Any]:
    """An agreement entry's leave-one-out and each-annotator kappas with their intervals (None without several
    annotators)."""
    return {
        "loo_kappa": e.get("loo_kappa"),
        "loo_kappa_low": _pair(e.get("loo_kappa_ci"))[0],
        "loo_kappa_high": _pair(e.get("loo_kappa_ci"))[1],
        "each_annotator_kappa": e.get("each_annotator_kappa"),
        "each_annotator_kappa_low": _pair(e.get("each_annotator_kappa_ci"))[0],
        "each_annotator_kappa_high": _pair(e.get("each_annotator_kappa_ci"))[1],
    }


def _extra_entries(tables: Mapping[str, Any], dataset: str, where: str, margin: Any) -> list[Entry]:
    """The best jury of each ``jury_subsets`` block (flagged ``selected``, with its selection-corrected
    kappa) and, with several annotators, the human ceiling: ranked with the judges and debates."""
    out = []
    for block in tables.get("jury_subsets") or []:
        subsets = [s for s in block.get("subsets") or [] if s.get("kappa") is not None]
        if not subsets:
            continue
        s, sel = subsets[0], block.get("selection") or {}
        vs = s.get("vs_reference") or {}
        out.append(
            Entry(
                dataset=dataset,
                judge=" + ".join(s["members"]),
                setup=f"{block.get('setup')}/{block.get('rule')}",
                kind="jury",
                n=int(s.get("n", 0)),
                n_failed=int(s.get("n_failed", 0)),
                kappa=s.get("kappa"),
                accuracy=s.get("accuracy"),
                failure_rate=float(s.get("failure_rate") or 0.0),
                run=where,
                **_against_reference(s, vs, margin),
                contains_reference=bool(vs.get("contains_reference")),
                selected=True,
                selection_corrected=sel.get("corrected"),
                selection_corrected_low=_pair(sel.get("corrected_ci"))[0],
                selection_corrected_high=_pair(sel.get("corrected_ci"))[1],
                n_candidates=sel.get("n_candidates", len(subsets)),
                **_annotator_fields(s),
            )
        )
    ha = tables.get("human_agreement")
    if ha:
        c = ha["ceiling"]
        each = (ha.get("each_annotator") or {}).get("human") or {}
        out.append(
            Entry(
                dataset=dataset,
                judge="humans (ceiling)",
                setup=f"{len(ha['annotators'])} annotators, leave-one-out",
                kind="humans",
                n=int(ha.get("n_items", 0)),
                n_failed=0,
                kappa=None,
                accuracy=None,
                failure_rate=0.0,
                run=where,
                loo_kappa=c.get("kappa"),
                loo_kappa_low=_pair(c.get("kappa_ci"))[0],
                loo_kappa_high=_pair(c.get("kappa_ci"))[1],
                each_annotator_kappa=each.get("kappa"),
                each_annotator_kappa_low=_pair(each.get("kappa_ci"))[0],
                each_annotator_kappa_high=_pair(each.get("kappa_ci"))[1],
            )
        )
    return out


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(vals) if vals else None


def _references(entries: Sequence[Entry], dataset: str) -> list[str]:
    """The references the verdicts of ``dataset`` were computed against, most common first."""
    c = Counter(e.reference for e in entries if e.dataset == dataset and e.reference)
    return [r for r, _ in c.most_common()]


def wide_table(entries: Sequence[Entry]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per (judge, setup), kappa per dataset (then its interval and verdict
    per dataset), then means over datasets; best mean kappa first."""
    datasets = sorted({e.dataset for e in entries})
    by_name: dict[str, dict[str, Entry]] = defaultdict(dict)
    kinds: dict[str, str] = {}
    for e in entries:
        by_name[e.name][e.dataset] = e
        kinds[e.name] = f"jury, selected of {e.n_candidates}" if e.selected else e.kind
    header = ["judge (setup)", "kind", *[f"kappa {d}" for d in datasets]]
    for d in datasets:
        header += [f"kappa {d} low", f"kappa {d} high", f"verdict {d}", f"reference {d}"]
        header += [f"selection-corrected {d}", f"leave-one-out kappa {d}", f"each-annotator kappa {d}"]
    header += ["mean kappa", "failure rate", "P(first)", "swap consistency", "length bias", "tokens / item"]
    rows = []
    for name, cells in by_name.items():
        es = list(cells.values())
        row: list[Any] = [name, kinds[name], *[cells[d].kappa if d in cells else None for d in datasets]]
        for d in datasets:
            c = cells.get(d)
            row += [c.kappa_low, c.kappa_high, c.verdict, c.reference] if c else [None] * 4
            row += [c.selection_corrected, c.loo_kappa, c.each_annotator_kappa] if c else [None] * 3
        row += [
            _mean(e.kappa for e in es),
            _mean(e.failure_rate for e in es),
            _mean(e.first_rate for e in es),
            _mean(e.consistency for e in es),
            _mean(e.length_bias for e in es),
            _mean(e.tokens_per_item for e in es),
        ]
        rows.append(row)
    at = header.index("mean kappa")
    rows.sort(key=lambda r: (r[at] is None, -float(r[at] or 0.0), str(r[0])))
    return header, rows


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def _r(x: float | None, d: int = 3) -> float | None:
    return None if x is None else round(x, d)


def _display(entries: Sequence[Entry]) -> tuple[list[str], list[list[Any]], list[str]]:
    """The wide table as shown in leaderboard.md / .html (intervals and verdicts in words), and
    notes naming the columns left out because no source could fill them."""
    header, rows = wide_table(entries)
    datasets = sorted({e.dataset for e in entries})
    cells = {(e.name, e.dataset): e for e in entries}
    one = len(datasets) == 1
    show = ["judge (setup)", "kind"]
    for d in datasets:
        refs = _references(entries, d)
        margin = next((e.margin for e in entries if e.dataset == d and e.margin is not None), None)
        ref = refs[0] if len(refs) == 1 else "the reference of each source"
        show += [f"kappa {d} [95% CI]", f"vs {ref}" + (f" (margin {margin:g})" if margin is not None else "")]
        if not one:
            show[-1] += f" on {d}"
        show += [f"selection-corrected {d} [95% CI]", f"leave-one-out kappa {d} [95% CI]"]
        show.append(f"kappa vs one annotator, mean {d} [95% CI]")
    if not one:
        show.append("mean kappa")
    show += ["failure rate", "P(first)" + (" [95% CI]" if one else ""), "length bias" + (" [95% CI]" if one else "")]
    show.append("tokens / item")
    at = {h: i for i, h in enumerate(header)}
    out = []
    for r in rows:
        row: list[Any] = [r[0], r[1]]
        for d in datasets:
            e = cells.get((r[0], d))
            if e is None:
                row += ["–"] * 5
                continue
            many = len(_references(entries, d)) > 1
            row += [
                ci(e.kappa, [e.kappa_low, e.kappa_high]),
                e.verdict_text + (f" (vs {e.reference})" if many and e.reference and e.verdict != "reference" else ""),
                ci(e.selection_corrected, [e.selection_corrected_low, e.selection_corrected_high])
                if e.selected
                else "–",
                ci(e.loo_kappa, [e.loo_kappa_low, e.loo_kappa_high]),
                ci(e.each_annotator_kappa, [e.each_annotator_kappa_low, e.each_annotator_kappa_high]),
            ]
        if not one:
            row.append(_r(r[at["mean kappa"]]))
        e1 = cells.get((r[0], datasets[0])) if one else None
        fr = r[at["failure rate"]]
        row.append("–" if fr is None else f"{100 * fr:.1f}%")
        if e1 is not None:
            row.append(ci(e1.first_rate, [e1.first_rate_low, e1.first_rate_high], 2))
            row.append(ci(e1.length_bias, [e1.length_bias_low, e1.length_bias_high], 2, sign=True))
        else:
            row.append(ci(r[at["P(first)"]], None, 2))
            row.append(ci(r[at["length bias"]], None, 2, sign=True))
        tpi = r[at["tokens / item"]]
        row.append(None if tpi is None else int(round(tpi)))
        out.append(row)
    # optional columns no source could fill are left out, and the lead note says why
    why = {
        "P(first)": "P(first) is not shown: no source judged both orders",
        "length bias": "length bias is not shown: no source's evaluated items could be read",
        "tokens / item": "tokens are not shown: no source recorded any (agreement outputs carry none)",
    }
    for i in reversed(range(len(show))):  # selection and ceiling columns only where a source has them
        if show[i].startswith(("selection-corrected ", "leave-one-out kappa ", "kappa vs one annotator")) and all(
            r[i] in (None, "–") for r in out
        ):
            del show[i]
            for r in out:
                del r[i]
    missing: list[str] = []
    for i in reversed(range(len(show))):
        key = next((k for k in why if show[i].startswith(k)), None)
        if key and all(r[i] in (None, "–") for r in out):
            missing.insert(0, why[key])
            del show[i]
            for r in out:
                del r[i]
    return show, out, missing


def document(entries: Sequence[Entry], sources: Sequence[str], notes: Sequence[str] = ()) -> Document:
    """The leaderboard as a report document: the wide table, the kappa heatmap, every entry, the sources."""
    header, rows = wide_table(entries)
    datasets = sorted({e.dataset for e in entries})
    show, shown, left_out = _display(entries)
    long_header = [
        "dataset",
        "judge",
        "setup",
        "kind",
        "kappa [95% CI]",
        "n",
        "failed",
        "failure rate",
        "reference",
        "Δκ vs reference [95% CI]",
        "verdict",
        "P(first) [95% CI]",
        "swap consistency",
        "P(longer): judge / humans",
        "tokens",
        "tokens / item",
        "selection-corrected [95% CI]",
        "leave-one-out kappa [95% CI]",
        "kappa vs one annotator, mean [95% CI]",
    ]
    long_rows = [
        [
            e.dataset,
            e.judge,
            e.setup,
            f"jury, selected of {e.n_candidates}" if e.selected else e.kind,
            ci(e.kappa, [e.kappa_low, e.kappa_high]),
            e.n,
            e.n_failed,
            f"{100 * e.failure_rate:.1f}%",
            e.reference or "–",
            "0 (reference)" if e.verdict == "reference" else ci(e.diff, [e.diff_low, e.diff_high], sign=True),
            e.verdict_text,
            ci(e.first_rate, [e.first_rate_low, e.first_rate_high], 2),
            _r(e.consistency),
            "–" if e.longer_rate is None else f"{e.longer_rate:.2f} / {e.human_longer_rate:.2f}",
            "–" if e.tokens is None else e.tokens,
            "–" if e.tokens_per_item is None else int(round(e.tokens_per_item)),
            ci(e.selection_corrected, [e.selection_corrected_low, e.selection_corrected_high]) if e.selected else "–",
            ci(e.loo_kappa, [e.loo_kappa_low, e.loo_kappa_high]),
            ci(e.each_annotator_kappa, [e.each_annotator_kappa_low, e.each_annotator_kappa_high]),
        ]
        for e in entries
    ]
    # a column no entry fills is left out (the lead notes say why for P(first), length and tokens)
    empty = [i for i in range(len(long_header)) if long_rows and all(r[i] in (None, "–") for r in long_rows)]
    for i in reversed(empty):
        del long_header[i]
        for r in long_rows:
            del r[i]
    matrix = [[r[2 + i] for i in range(len(datasets))] for r in rows]
    cells = {(e.name, e.dataset): e for e in entries}
    intervals = [
        [(lambda c: [c.kappa_low, c.kappa_high] if c else None)(cells.get((r[0], d))) for d in datasets] for r in rows
    ]
    explain = (
        "Cohen's kappa with human labels (3 classes, ties a class; failed judgements left out and counted in the "
        "failure rate), with its 95% bootstrap interval over items. The verdict column says what the interval of "
        "Δκ = kappa − kappa of the reference on the same items (paired bootstrap) says: 'better' = it lies above 0; "
        "'not worse' = it lies above −margin and contains 0; 'significantly lower, within the margin' = it lies "
        "between −margin and 0; 'significantly lower (margin not excluded)' = it lies below 0 and contains −margin; "
        "'worse' = it lies below −margin; 'cannot tell' = it contains 0 and −margin, with the items that would "
        "decide. P(first): share of "
        "decisive picks given to the response shown first, 0.5 = unbiased (needs both orders). Length bias: "
        "P(prefers the longer response) of the judge minus that of the humans on the same pairs (0 = as the "
        "humans). Tokens: prompt + completion tokens per judged item. A jury marked 'selected of N' is the best of "
        "N subsets on the same items: its kappa is optimistic, and the selection-corrected column says what the "
        "choice is worth on items it was not made on. With several annotators, 'humans (ceiling)' is each "
        "annotator against the majority of the others, and the leave-one-out column scores every evaluator the same "
        "way: compare those two; the 'vs one annotator' column takes each annotator as a separate human (the mean "
        "kappa against one annotator; the human row: one annotator against another)."
    )
    lead = [Text(explain, note=True)] + [Text(f"Note: {n}.", note=True) for n in left_out]
    lead += [Text(f"Note: {n}", note=True) for n in notes]
    if len(datasets) == 1:  # one column of a heatmap says little: the kappas with their intervals instead
        ceiling = next(
            (
                {"kappa": e.loo_kappa, "kappa_ci": [e.loo_kappa_low, e.loo_kappa_high]}
                for e in entries
                if e.kind == "humans"
            ),
            None,
        )
        bars = [
            {
                "judge": e.name + (" (selected)" if e.selected else ""),
                "kind": e.kind,
                "kappa": e.kappa,
                "kappa_ci": [e.kappa_low, e.kappa_high],
                "n": e.n,
                "n_failed": e.n_failed,
                "vs_reference": {"verdict": e.verdict},
                "loo_kappa": e.loo_kappa,
            }
            for e in entries
            if e.kind != "humans"
        ]
        figure = Fig(
            "kappa",
            plots.kappa_bars(bars, title=f"Cohen's kappa on {datasets[0]}", ceiling=ceiling),
            "Kappa with its 95% interval" + ("; dashed: the human ceiling." if ceiling else "."),
        )
    else:
        figure = Fig(
            "kappa_matrix",
            plots.kappa_matrix(matrix, [r[0] for r in rows], datasets, intervals=intervals),
            "Kappa per judge and dataset, with its 95% interval.",
        )
    sections = [
        Section(
            "Leaderboard",
            [
                *lead,
                Table(show, shown),
                figure,
            ],
        ),
        Section("Every entry", [Table(long_header, long_rows)]),
        Section(
            "Sources", [Table(["run folder or agreement output"], [[s] for s in sorted({e.run for e in entries})])]
        ),
    ]
    return Document(
        "mapo leaderboard: judges x datasets", f"{len(entries)} entries from {', '.join(sources)}", sections
    )


def write_leaderboard(
    paths: Sequence[str | Path],
    out: str | Path = "leaderboard",
    entries: Sequence[Entry] | None = None,
    *,
    reference: str | None = None,
    notes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard_wide.csv, .md, .html and figures/ under ``out``; return their paths."""
    found: list[str] = list(notes or [])
    entries = collect(paths, reference=reference, notes=found) if entries is None else entries
    out_dir = Path(out)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Entry)]
    header, rows = wide_table(entries)
    doc = document(entries, [str(p) for p in paths], found)
    for f in doc.figures():
        (out_dir / "figures" / f"{f.name}.png").write_bytes(f.png)
    written = {
        "csv": out_dir / "leaderboard.csv",
        "wide_csv": out_dir / "leaderboard_wide.csv",
        "md": out_dir / "leaderboard.md",
        "html": out_dir / "leaderboard.html",
    }
    atomic_write_text(written["csv"], _csv(names, ([asdict(e)[n] for n in names] for e in entries)))
    atomic_write_text(written["wide_csv"], _csv(header, rows))
    atomic_write_text(written["md"], render_markdown(doc))
    atomic_write_text(written["html"], render_html(doc))
    return written


def main(argv: list[str] | None = None) -> int:
    """``mapo leaderboard``: 0 when written, 2 when there is no evaluation to show."""
    ap = argparse.ArgumentParser(
        prog="mapo leaderboard",
        description="Judges x datasets: kappa with intervals, verdicts against a reference, parse failures, "
        "position and length bias, tokens (from mapo evaluate runs and mapo agreement outputs).",
    )
    ap.add_argument(
        "runs",
        nargs="+",
        help="evaluate run folders, folders holding them (Hydra sweeps), or `mapo agreement` output files",
    )
    ap.add_argument("--out", default="leaderboard", help="output folder (default ./leaderboard)")
    ap.add_argument(
        "--reference",
        metavar="NAME",
        help="recompute every verdict against this evaluator, e.g. gpt-4o (default: each source's own reference)",
    )
    args = ap.parse_args(argv)
    missing = [p for p in args.runs if not Path(p).exists()]
    if missing:
        print(f"mapo leaderboard: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    notes: list[str] = []
    entries = collect(args.runs, reference=args.reference, notes=notes)
    if not entries:
        print(
            "mapo leaderboard: no `mapo evaluate` runs (manifest.json with command evaluate) or `mapo agreement` "
            f"outputs (JSON with agreement tables) under {', '.join(args.runs)}",
            file=sys.stderr,
        )
        return 2
    paths = write_leaderboard(args.runs, args.out, entries, notes=notes)
    print(paths["md"].read_text(encoding="utf-8").split("## Every entry")[0].rstrip())
    print("\n" + "\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
