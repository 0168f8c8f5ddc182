"""Sections of a ``mapo winrate`` run: the win-rate table, score trajectories per configuration,
failures and example comparisons."""

from __future__ import annotations

from collections import Counter

from mapo.report.document import Block, Example, Section, Table, Text
from mapo.report.run import Run
from mapo.report.sections.common import reason, trajectory_section, versus_section, winrate_section

__all__ = ["winrate_sections"]


def winrate_sections(run: Run, n_examples: int) -> list[Section]:
    """Every section specific to a winrate run, in report order."""
    sections: list[Section] = []
    wr = run.json("winrate.json")
    if wr:
        versus = versus_section(wr, run.manifest)  # one configuration vs one baseline: the A vs B table first
        if versus:
            sections.append(versus)
        sections.append(winrate_section(wr))
    else:
        missing = Text("winrate.json is missing (the run did not finish).", note=True)
        sections.append(Section("Win rate against baselines", [missing]))
    gens = run.records("generations.jsonl")
    traj = trajectory_section(gens, "configuration", "Score trajectories per configuration", "score_trajectories")
    if traj:
        sections.append(traj)
    judgements = run.records("judgements.jsonl")
    fails = Counter(reason(j.get("failure") or "no verdict") for j in judgements if j.get("outcome") == "failed")
    identical = sum(1 for j in judgements if j.get("identical"))
    rows: list[list[object]] = [[r, n] for r, n in fails.most_common(15)]
    if identical:
        rows.append(["identical responses: a tie without a judge call", identical])
    sections.append(Section("Failures", [Table(["reason", "count"], rows) if rows else Text("No failures recorded.")]))
    finals = {g["key"]: g for g in gens}
    bases = {b["key"]: b for b in run.records("baselines.jsonl")}
    ex: list[Block] = []
    for j in judgements:
        if j.get("identical") or len(ex) >= n_examples:
            continue
        g = finals.get(f"{j['configuration']}|{j['prompt_id']}") or {}
        b = bases.get(f"{j['baseline']}|{j['prompt_id']}") or {}
        raw = "\n\n".join(j.get("raw") or [])
        fields = [("prompt", g.get("prompt") or b.get("prompt") or "")]
        if raw:
            fields.append((f"judge {j.get('judge', '')} (raw)", raw))
        fields += [
            (f"A: {j['configuration']} (final iteration)", g.get("final", "")),
            (f"B: baseline {j['baseline']}", b.get("response", "")),
        ]
        title = f"{j['prompt_id']}: {j['configuration']} vs {j['baseline']}: {j.get('outcome')}"
        ex.append(Example(title, fields, side_by_side=True, open=not ex))
    if ex:
        sections.append(Section("Example comparisons", ex))
    return sections
