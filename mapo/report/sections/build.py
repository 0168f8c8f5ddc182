"""Sections of a ``mapo build`` run: score trajectories, which iteration the judge chose, the pairs
written and left out (manifest ``pairs``), the dataset quality indicators
(:mod:`mapo.metrics.dataset_quality`, as on the dataset card), failures, example chosen/rejected
pairs and, when present, the win-rate table."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mapo.report import plots
from mapo.report.document import Block, Example, Fig, ItemRef, Section, Table, Text, num, pct
from mapo.report.evidence import earlier_turns
from mapo.report.run import Run
from mapo.report.sections.common import iteration_scores, reason, trajectory_section, turn_fields, winrate_section

__all__ = ["build_sections", "dataset_section", "generation_failures"]


def build_sections(run: Run, n_examples: int) -> list[Section]:
    """Every section specific to a build run, in report order."""
    gens = run.records("generations.jsonl")
    sels = run.records("selections.jsonl")
    sections: list[Section] = []
    traj = trajectory_section(gens, None, "Score trajectories over feedback iterations", "score_trajectories")
    if traj:
        sections.append(traj)
    sections.append(_selection(gens, sels))
    sections.append(dataset_section(run))
    sections.append(generation_failures(run, gens, sels))
    answered = {g.get("key") for g in gens if g.get("unanswered")}  # user turns the generator answered first
    examples = _examples(run.records("dpo.jsonl"), sels, n_examples, answered)
    if examples:
        sections.append(examples)
    wr = run.json("winrate.json")
    if wr:
        sections.append(winrate_section(wr))
    return sections


def _selection(gens: Sequence[Mapping[str, Any]], sels: Sequence[Mapping[str, Any]]) -> Section:
    gen_by_key = {g["key"]: g for g in gens}
    decided = [s for s in sels if s.get("best") is not None]
    failed = [s for s in sels if s.get("best") is None]
    n_iter = max((len(g.get("iterations") or []) for g in gens), default=0)
    counts = Counter(s["best"] for s in decided)
    counts.update({i: 0 for i in range(n_iter)})
    blocks: list[Block] = []
    if not sels:
        blocks.append(Text("No selection records (selections.jsonl is empty or missing).", note=True))
        return Section("Selection: which iteration was chosen", blocks)
    blocks.append(
        Fig(
            "selection",
            plots.selection_counts(dict(counts), len(failed)),
            "How often the judge chose each feedback iteration as the best response.",
        )
    )
    agree = 0
    chosen_scores: list[float] = []
    rejected_scores: list[float] = []
    judged = 0
    for s in decided:
        g = gen_by_key.get(s["key"])
        if not g:
            continue
        scores = iteration_scores(g)
        complete = [x for x in scores if x is not None]
        if s["best"] < len(scores) and len(complete) == len(scores):
            judged += 1
            agree += complete[s["best"]] == max(complete)
            chosen_scores.append(complete[s["best"]])
            rejected_scores += [x for i, x in enumerate(complete) if i != s["best"]]
    judgements = [j for s in sels for j in s.get("judgements") or []]
    j_failed = sum(1 for j in judgements if j.get("failure"))
    reasks = sum(max(0, len(j.get("attempts") or []) - 1) for j in judgements)
    rows: list[list[Any]] = [
        ["prompts selected", len(sels)],
        ["judge chose a best response", len(decided)],
        ["no choice (failed)", len(failed)],
        ["pairwise judgements", len(judgements)],
        ["judgements that failed", j_failed],
        ["extra attempts (re-asks, second orders)", reasks],
        ["method", ", ".join(sorted({str(s.get("method")) for s in sels if s.get("method")})) or "–"],
    ]
    if judged:
        rows += [
            ["judge's choice = reviewer's top score", f"{pct(agree / judged)} of {judged}"],
            ["mean reviewer score, chosen", statistics.fmean(chosen_scores)],
            ["mean reviewer score, rejected", statistics.fmean(rejected_scores) if rejected_scores else None],
        ]
    blocks.append(Table(["selection", "value"], rows))
    blocks.append(
        Table(
            ["iteration", "chosen", "share"],
            [[i + 1, counts[i], pct(counts[i] / len(decided)) if decided else None] for i in sorted(counts)],
        )
    )
    return Section("Selection: which iteration was chosen", blocks)


_PAIR_ROWS = (
    ("pairs_written", "DPO pairs written"),
    ("items_with_pairs", "prompts with at least one pair"),
    ("items_without_pairs", "prompts that gave no pair"),
    ("kto_rows", "KTO rows"),
    ("ties_dropped", "tied comparisons dropped (no pair without a decision)"),
    ("ties_kept", "ties kept as pairs (selection.on_tie=keep; column decisive false)"),
    ("identical_pairs_skipped", "identical chosen / rejected skipped"),
    ("truncated_excluded", "responses cut by max_tokens left out"),
)


def _quality_rows(markdown: str) -> list[list[str]]:
    """The rows of the indicator table in :func:`mapo.metrics.dataset_quality.quality_markdown` (the card's wording)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and cells[0] not in ("indicator", "---"):
            rows.append(cells)
    return rows


def dataset_section(run: Run) -> Section:
    """What the dataset holds and left out, by reason (manifest ``pairs``), and its quality indicators."""
    from mapo.metrics.dataset_quality import dataset_quality, quality_markdown

    blocks: list[Block] = []
    pairs = run.manifest.get("pairs") or {}
    if pairs:
        rows: list[list[Any]] = [[label, pairs[key]] for key, label in _PAIR_ROWS if key in pairs]
        for why, n in (pairs.get("ties_dropped_by_reason") or {}).items():
            rows.append([f"  tie dropped: {why}", n])
        blocks.append(Table(["pairs", "count"], rows, caption="What the dataset holds and what was left out, and why."))
    else:
        blocks.append(Text("The manifest has no pair counts (a run from before they were recorded).", note=True))
    # dataset_quality_of_run's reading, but through the report's reader: a damaged line costs that record only
    q = dataset_quality(*(run.records(f"{n}.jsonl") for n in ("generations", "selections", "dpo", "kto")))
    if q["items"]["selections"]:
        blocks.append(
            Table(
                ["indicator", "value"],
                _quality_rows(quality_markdown(q)),
                caption="Dataset quality indicators (as on the dataset card). A chosen response that is mostly the "
                "longer one, or mostly the last iteration, teaches length or position rather than quality; "
                "zero-margin pairs carry no preference.",
            )
        )
        hist = q["margin"].get("histogram") or {}
        if any(hist.values()):
            blocks.append(
                Fig(
                    "margin_histogram",
                    plots.histogram(hist, xlabel="judge score margin (chosen − rejected)", ylabel="DPO pairs"),
                    "The judge's score margin of each DPO pair.",
                )
            )
    return Section("Dataset: pairs and quality", blocks)


def _examples(
    dpo: Sequence[Mapping[str, Any]],
    sels: Sequence[Mapping[str, Any]],
    n_examples: int,
    answered: set[Any] | None = None,
) -> Section | None:
    ex_blocks: list[Block] = []
    shown: set[Any] = set()
    sel_by_key = {s["key"]: s for s in sels}
    for row in dpo:
        pid = row.get("prompt_id", row.get("key"))
        if pid in shown:
            continue
        shown.add(pid)
        judge_raw = ""
        for j in (sel_by_key.get(pid) or {}).get("judgements") or []:
            if {j.get("a"), j.get("b")} == {row.get("chosen_iteration"), row.get("rejected_iteration")}:
                judge_raw = "\n\n".join(t for a in j.get("attempts") or [] for t in a.get("raw") or [])
        messages = list(row.get("prompt") or [])
        if len(messages) > 1:  # a multi-turn prompt (TRL's conversational form): each earlier turn, then the question
            shared = "assistant" + (" (the generator's answer)" if pid in (answered or set()) else "")
            fields = turn_fields(earlier_turns(messages[:-1]), messages[-1].get("content", ""), "prompt", shared)
        else:
            fields = [("prompt", "\n\n".join(m.get("content", "") for m in messages))]
        if judge_raw:
            fields.append((f"judge's verdict on this pair ({row.get('judge', '')}, raw text)", judge_raw))
        chosen_it, rejected_it = (row.get("chosen_iteration") or 0) + 1, (row.get("rejected_iteration") or 0) + 1
        fields += [
            (
                f"chosen: iteration {num(chosen_it)}, judge score {num(row.get('chosen_score'), 2)}, "
                f"reviewer score {num(_review(row, 'chosen'), 1)}",
                "\n\n".join(m.get("content", "") for m in row.get("chosen") or []),
            ),
            (
                f"rejected: iteration {num(rejected_it)}, judge score {num(row.get('rejected_score'), 2)}, "
                f"reviewer score {num(_review(row, 'rejected'), 1)}",
                "\n\n".join(m.get("content", "") for m in row.get("rejected") or []),
            ),
        ]
        ex_blocks.append(Example(f"{pid}", fields, side_by_side=True, open=len(shown) == 1, item=str(pid)))
        if len(shown) >= n_examples:
            break
    if not ex_blocks:
        return None
    note = f"{len(ex_blocks)} of {len(dpo)} DPO rows, one per prompt; every text is shown as data (escaped)."
    return Section("Example chosen / rejected pairs", [Text(note, note=True), *ex_blocks])


def generation_failures(run: Run, gens: Sequence[Mapping[str, Any]], sels: Sequence[Mapping[str, Any]]) -> Section:
    """Failures by stage (selection, judge, reviewer, prompt source, truncation) and the items left without a choice."""
    m = run.manifest
    review_fail: Counter[str] = Counter()
    truncated = 0
    for g in gens:
        for it in g.get("iterations") or []:
            truncated += it.get("finish_reason") == "length"
            for r in it.get("reviews") or []:
                if r.get("failure"):
                    review_fail[reason(r["failure"])] += 1
    judge_fail = Counter(reason(j["failure"]) for s in sels for j in s.get("judgements") or [] if j.get("failure"))
    sel_fail = Counter(reason(s.get("failure") or "no choice") for s in sels if s.get("best") is None)
    prompts = m.get("prompts") or {}
    rows: list[list[Any]] = []
    for stage, c in (
        ("selection (item has no chosen response)", sel_fail),
        ("judge pairwise judgement", judge_fail),
        ("reviewer (score not parsed)", review_fail),
    ):
        for why, n in c.most_common(10):
            rows.append([stage, why, n])
    for why, n in (prompts.get("skip_reasons") or {}).items():
        rows.append(["prompt source (skipped)", why, n])
    if truncated:
        rows.append(["generator", "response cut at max_tokens (finish_reason=length)", truncated])
    items = m.get("items") or {}
    if items.get("identical_pairs_skipped"):
        rows.append(["dataset", "identical chosen/rejected pair skipped", items["identical_pairs_skipped"]])
    blocks: list[Block] = [Table(["stage", "reason", "count"], rows)] if rows else [Text("No failures recorded.")]
    failed_items = [s for s in sels if s.get("best") is None][:30]
    if failed_items:
        blocks.append(
            Table(
                ["item", "reason"],
                [[ItemRef(s["key"]), s.get("failure") or "no choice"] for s in failed_items],
                caption="Items without a chosen response (first 30).",
            )
        )
    return Section("Failures", blocks)


def _review(row: Mapping[str, Any], side: str) -> Any:
    """The reviewer's score of a DPO row's side (rows written before issue 25 kept it in ``<side>_score``)."""
    key = f"{side}_review_score"
    return row.get(key) if key in row else row.get(f"{side}_score")
