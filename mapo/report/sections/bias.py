"""Bias sections of an evaluation report: which candidate model each evaluator prefers against the
humans (self / family preference) and length bias, each as a table with intervals and one plot.

Position bias is in :mod:`.evaluate` (it comes with the agreement tables). The per-item inputs
are read by :mod:`mapo.report.evidence`; what cannot be found is named in a note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mapo.report import plots
from mapo.report.document import Block, Fig, Section, Table, Text, ci, num
from mapo.report.evidence import bias_diagnostics, evidence
from mapo.report.run import Run

__all__ = ["bias_sections", "fixed_sides"]


def fixed_sides(candidates: Mapping[str, tuple[str, str]] | None, records: Sequence[Mapping[str, Any]]) -> bool:
    """Every candidate always wrote the same side and only one order was judged: then preferring a
    candidate and preferring a position cannot be told apart."""
    if not candidates:
        return False
    a_side = {p[0] for p in candidates.values()}
    b_side = {p[1] for p in candidates.values()}
    return not (a_side & b_side) and len({r.get("order") for r in records}) <= 1


def _settings_note(diag: Mapping[str, Any]) -> str:
    s = diag.get("settings") or {}
    return (
        f"Intervals: {100 * float(s.get('confidence', 0.95)):g}% percentile bootstrap over items "
        f"({num(s.get('n_resamples'))} resamples, seed {s.get('seed')})."
    )


def _preference(diag: Mapping[str, Any], ev_records: Sequence[Mapping[str, Any]], fixed: bool) -> Section:
    models: dict[tuple[str, str], list[str]] = {}
    for r in ev_records:
        models.setdefault((str(r.get("judge")), str(r.get("setup"))), list(r.get("models") or [r.get("judge")]))
    prefs = [{**p, "models": models.get((p["judge"], p["setup"]), [p["judge"]])} for p in diag["model_preference"]]
    rows: list[list[Any]] = []
    for p in prefs:
        for c in p.get("candidates") or []:
            mark = "own model" if c.get("self") else ("own family" if c.get("own_family") else "")
            rows.append(
                [
                    p["judge"],
                    p["kind"],
                    c["candidate"],
                    mark,
                    c.get("n"),
                    ci(c.get("judge_rate"), c.get("judge_ci")),
                    ci(c.get("human_rate"), c.get("human_ci")),
                    ci(c.get("diff"), c.get("diff_ci"), sign=True),
                ]
            )
    blocks: list[Block] = [
        Text(
            "How often each evaluator picks each candidate model (a tie counts 1/2; failed judgements left out), "
            "against how often the humans do on the same items (the paper's Figure 3). A positive judge − human "
            "difference for the evaluator's own model or family is self- or family-preference; an interval that "
            "leaves 0 out is a preference beyond chance. " + _settings_note(diag),
            note=True,
        )
    ]
    if fixed:
        blocks.append(
            Text(
                "Caution: in these items each candidate always wrote the same side (model_a is always the same "
                "model) and one presentation order was judged, so a preference for a candidate here cannot be "
                "told apart from a preference for the position it is shown in. Judge both orders "
                "(judge.both_orders=true) to separate them."
            )
        )
    header = ["judge", "kind", "candidate", "same as judge", "items", "judge picks it [95% CI]"]
    header += ["humans pick it [95% CI]", "judge − human [95% CI]"]
    blocks.append(Table(header, rows))
    blocks.append(
        Fig(
            "candidate_preference",
            plots.candidate_preference(prefs),
            "Rate at which each evaluator picks each candidate (dot, 95% interval) against the humans' rate "
            "on the same items (diamond).",
        )
    )
    fam = diag.get("family_preference")
    if fam:
        frows = [
            [p["judge"], p["kind"], c["candidate"], "own family" if c.get("self") else "", c.get("n")]
            + [ci(c.get("judge_rate"), c.get("judge_ci")), ci(c.get("human_rate"), c.get("human_ci"))]
            + [ci(c.get("diff"), c.get("diff_ci"), sign=True)]
            for p in fam
            for c in p.get("candidates") or []
        ]
        blocks.append(Table(["judge", "kind", "family", "same as judge", "items", *header[5:]], frows))
    return Section("Bias: candidate preference (self and family)", blocks)


def _length(diag: Mapping[str, Any]) -> Section:
    rows = [
        [
            r["judge"],
            r["kind"],
            r.get("n"),
            r.get("judge_ties"),
            ci(r.get("judge_rate"), r.get("judge_ci")),
            ci(r.get("human_rate"), r.get("human_ci")),
            ci(r.get("diff"), r.get("diff_ci"), sign=True),
        ]
        for r in diag["length"]
    ]
    header = ["judge", "kind", "pairs", "judge ties", "judge prefers longer [95% CI]", "humans prefer longer [95% CI]"]
    return Section(
        "Bias: length",
        [
            Text(
                "P(prefers the longer response, in characters) over the pairs whose responses differ in length and "
                "whose verdict is decisive (ties left out and counted), against the humans on the same pairs, as "
                "alpaca_eval reports it. A judge − human difference whose interval leaves 0 out is a length bias "
                "beyond the humans' own. " + _settings_note(diag),
                note=True,
            ),
            Table([*header, "judge − human [95% CI]"], rows),
            Fig(
                "length_bias",
                plots.length_bias(diag["length"]),
                "P(prefers the longer response) of each evaluator (dot, 95% interval) against the humans (diamond).",
            ),
        ],
    )


def bias_sections(run: Run, tables: Mapping[str, Any]) -> list[Section]:
    """Candidate preference and length bias of every evaluator of ``run`` (notes where inputs are missing)."""
    ev = evidence(run, tables)
    diag = bias_diagnostics(ev, tables)
    sections: list[Section] = []
    if diag.get("model_preference"):
        sections.append(_preference(diag, ev.records, fixed_sides(ev.candidates, ev.records)))
    if diag.get("length"):
        sections.append(_length(diag))
    notes = [Text(n, note=True) for n in diag.get("notes") or []]
    if notes:
        if sections:
            sections[-1].blocks += notes
        else:
            sections.append(Section("Bias: length and candidate preference", list(notes)))
    return sections
