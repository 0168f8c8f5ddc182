"""Sections every run report has (overview, models, costs, config) and the ones two run kinds share
(score trajectories, the win-rate table)."""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from mapo.metrics.uncertainty import verdict_words
from mapo.report import plots
from mapo.report.document import Block, Code, Fig, Section, Table, Text, ci, cut, dur, num, pct
from mapo.report.run import Run

__all__ = [
    "TURN_CHARS",
    "config",
    "costs",
    "iteration_scores",
    "models",
    "overview",
    "preflight",
    "reason",
    "trajectory_section",
    "turn_fields",
    "verdict_cell",
    "versus_section",
    "winrate_section",
]


TURN_CHARS = 600
"""Longest earlier turn shown in an example (cut as :func:`~mapo.report.document.cut` cuts; the run folder has all)."""


def turn_fields(
    turns: Sequence[Mapping[str, Any]], question: str, last: str, shared: str = "assistant"
) -> list[tuple[str, str]]:
    """An example's fields for a multi-turn item: each earlier turn (:func:`mapo.report.evidence.earlier_turns`)
    shortened to :data:`TURN_CHARS`, labelled "turn n of N", then the question as turn N labelled ``last``; a
    single-turn item (no ``turns``) is ``[(last, question)]`` as before."""
    if not turns:
        return [(last, question)]
    n = len(turns) + 1
    out: list[tuple[str, str]] = []
    for t in turns:
        head = f"turn {t['turn']} of {n}"
        out.append((f"{head} · user", cut(t.get("user") or "", TURN_CHARS)))
        if "user_b" in t:
            out.append((f"{head} · user, as response B's model was asked", cut(t["user_b"] or "", TURN_CHARS)))
        if "answer" in t:
            out.append((f"{head} · {shared}", cut(t["answer"] or "(none)", TURN_CHARS)))
        else:
            out.append((f"{head} · response A's model answered", cut(t.get("answer_a") or "(none)", TURN_CHARS)))
            out.append((f"{head} · response B's model answered", cut(t.get("answer_b") or "(none)", TURN_CHARS)))
    out.append((f"turn {n} of {n} · {last}", question))
    return out


def verdict_cell(e: Mapping[str, Any]) -> str:
    """The verdict of ``e`` against the reference in words: "not worse", "worse", "cannot tell
    (~924 items needed)", "reference"; "" without one."""
    v = e.get("vs_reference") or {}
    if not v.get("verdict"):
        return ""
    words = verdict_words(str(v["verdict"]), v.get("n_needed"))
    # a jury that calls the reference is compared with it, never a stand-in for it
    return words + (f" (contains {v['reference']})" if v.get("contains_reference") else "")


def reason(text: Any, n: int = 120) -> str:
    """A failure message with its variable parts (long quotes, long or decimal numbers) folded, for counting."""
    s = re.sub(r"'[^']{41,}'|\"[^\"]{41,}\"", "'…'", str(text))
    s = re.sub(r"\d+\.\d+|\d{3,}", "N", s)
    return s if len(s) <= n else s[: n - 1] + "…"


def overview(run: Run) -> Section:
    """Command, status, folder, host, wall time, counts and throughput from the manifest."""
    m = run.manifest
    rows: list[list[Any]] = [["command", run.command], ["status", m.get("status", "–")], ["run folder", str(run.dir)]]
    if m.get("host"):
        rows.append(["host", m["host"]])
    wall = (m.get("timings_s") or {}).get("wall")
    if wall is not None:
        rows.append(["wall time", dur(wall)])
    for key in ("items", "comparisons", "prompts", "eval_data", "rows"):
        v = m.get(key)
        if isinstance(v, Mapping):
            rows.append([key, ", ".join(f"{k} {num(x)}" for k, x in v.items() if not isinstance(x, (dict, list)) or x)])
    if m.get("evaluator"):
        rows.append(
            [
                "evaluator",
                f"{m['evaluator']}: {m.get('judge', '')} ({m.get('setup', '')}), orders {', '.join(m.get('orders', []))}",
            ]
        )
    tp = m.get("throughput") or {}
    if tp:
        rows.append(
            [
                "throughput",
                f"{num(tp.get('completion_tokens_per_s'), 1)} completion tok/s, requests {num(tp.get('requests'))}, "
                f"cached {num(tp.get('cached'))}, retries {num(tp.get('retries'))}",
            ]
        )
    blocks: list[Block] = [Table(["field", "value"], rows)]
    if m.get("status") not in (None, "complete"):
        blocks.insert(
            0,
            Text(
                f"This run is not complete (status: {m.get('status')}): figures cover the records saved so far; "
                "rerun the same command to resume."
            ),
        )
    return Section("Overview", blocks)


def _role_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for role, v in (m.get("roles") or {}).items():
        for name in [v] if isinstance(v, str) else list(v or []):
            out.append((role, name))
    if m.get("command") == "winrate":
        if m.get("judge"):
            out.append(("judge", m["judge"]))
        for b in m.get("baselines") or []:
            out.append(("baseline", b))
        for c in m.get("configurations") or []:
            out.append((f"generator ({c['name']})", c["generator"]))
            out += [(f"reviewer ({c['name']})", r) for r in c.get("reviewers") or []]
    return out


def models(run: Run) -> Section:
    """One row per (role, model) with its served name and endpoint."""
    m = run.manifest
    known = m.get("models") or {}
    rows = []
    for role, name in _role_rows(m):
        info = known.get(name) or {}
        rows.append([role, name, info.get("served_name"), info.get("endpoint") or info.get("base_url")])
    blocks: list[Block] = (
        [Table(["role", "model (conf/model)", "served name", "endpoint / base_url"], rows)]
        if rows
        else [Text("The manifest names no roles.", note=True)]
    )
    return Section("Models per role", blocks)


def preflight(run: Run) -> Section | None:
    """What the pre-flight found per model and role (``manifest.preflight``, mapo.runs.preflight):
    each finding, and the fallback the run used (or that it stopped); None when it did not run."""
    pf = run.manifest.get("preflight")
    if not isinstance(pf, Mapping):
        return None
    rows: list[list[Any]] = []
    for model, info in pf.items():
        for f in info.get("findings") or []:
            rows.append(
                [model, f.get("role"), f.get("kind"), f.get("cause"), f.get("fallback") or "none: the run stopped"]
            )
    sizes = [
        [model, role, r.get("first_tokens"), r.get("turn", "–"), r.get("estimate"), info.get("max_model_len") or "–"]
        for model, info in pf.items()
        for role, r in (info.get("requests") or {}).items()
    ]
    blocks: list[Block] = [
        Table(["model", "role", "finding", "cause", "fallback"], rows)
        if rows
        else Text("Every role's requests rendered and fit; nothing to fall back on.", note=True)
    ]
    if sizes:
        blocks.append(
            Table(
                ["model", "role", "first request (tokens)", "longest request", "tokens at most", "max_model_len"], sizes
            )
        )
    return Section("Pre-flight", blocks)


_USAGE_SUMS = ("requests", "cached", "retries", "failures", "prompt_tokens", "completion_tokens", "latency_s")


def costs(run: Run) -> Section:
    """Requests, tokens and latency per (role, model), with a total row, and the stage timers."""
    m = run.manifest
    usage = list(m.get("usage") or [])
    blocks: list[Block] = []
    if usage:
        rows: list[list[Any]] = []
        tot: Counter[str] = Counter()
        for u in usage:
            req = u.get("requests", 0)
            rows.append(
                [
                    u.get("role"),
                    u.get("model"),
                    req,
                    u.get("cached", 0),
                    u.get("retries", 0),
                    u.get("failures", 0),
                    u.get("prompt_tokens", 0),
                    u.get("completion_tokens", 0),
                    u.get("prompt_tokens", 0) + u.get("completion_tokens", 0),
                    round(u.get("latency_s", 0.0), 2),
                    round(u.get("latency_s", 0.0) / req, 3) if req else None,
                ]
            )
            for k in _USAGE_SUMS:
                tot[k] += u.get(k, 0)
        rows.append(
            [
                "total",
                "",
                tot["requests"],
                tot["cached"],
                tot["retries"],
                tot["failures"],
                tot["prompt_tokens"],
                tot["completion_tokens"],
                tot["prompt_tokens"] + tot["completion_tokens"],
                round(tot["latency_s"], 2),
                round(tot["latency_s"] / tot["requests"], 3) if tot["requests"] else None,
            ]
        )
        header = ["role", "model", "requests", "cache hits", "retries", "failures", "prompt tok", "completion tok"]
        header += ["total tok", "latency s (summed)", "s / request"]
        blocks.append(
            Table(
                header,
                rows,
                total=True,
                caption="Requests sent by this invocation, per (role, model); a resumed run counts only what it sent.",
            )
        )
        blocks.append(
            Fig("tokens_per_role", plots.token_costs(usage), "Prompt and completion tokens per role and model.")
        )
    else:
        blocks.append(Text("No usage recorded in manifest.json.", note=True))
    timings = m.get("timings_s") or {}
    if timings:
        blocks.append(
            Table(
                ["timer", "seconds"],
                [[k, dur(v)] for k, v in timings.items()],
                caption="Stage timers add up per-item time over concurrent items (busy time), so they can exceed wall time.",
            )
        )
    return Section("Costs: tokens and time per role", blocks)


def config(run: Run) -> Section:
    """The run's composed config.yaml, collapsed."""
    if run.config_text is None:
        return Section("Config", [Text("config.yaml is missing.", note=True)])
    return Section("Config", [Code("config.yaml (the composed config of this run)", run.config_text, "yaml")])


def iteration_scores(g: Mapping[str, Any], reviewer: str | None = None) -> list[float | None]:
    """The score of each feedback iteration of a generation record (one reviewer's, or the combined one)."""
    out: list[float | None] = []
    for it in g.get("iterations") or []:
        if reviewer is None:
            out.append(it.get("score"))
        else:
            out.append(next((r.get("score") for r in it.get("reviews") or [] if r.get("reviewer") == reviewer), None))
    return out


def trajectory_section(
    gens: Sequence[Mapping[str, Any]], group_by: str | None, title: str, fig_name: str
) -> Section | None:
    """Reviewer scores over the feedback iterations (figure + per-iteration table); None without scores.

    ``group_by`` names the record field that makes a series (``configuration``); without it the
    series are the reviewers (and their mean when there are several).
    """
    scored = [g for g in gens if any(it.get("score") is not None for it in g.get("iterations") or [])]
    if not scored:
        return None
    series: dict[str, list[list[float | None]]] = defaultdict(list)
    failures: Counter[tuple[str, int]] = Counter()  # (series, iteration) -> reviews whose score did not parse
    reviewers = sorted({r for g in scored for r in g.get("reviewers") or []})

    def count_failures(name: str, g: Mapping[str, Any], reviewer: str | None = None) -> None:
        for i, it in enumerate(g.get("iterations") or []):
            failures[(name, i)] += sum(
                1
                for r in it.get("reviews") or []
                if r.get("failure") and (reviewer is None or r.get("reviewer") == reviewer)
            )

    for g in scored:
        if group_by:
            name = str(g.get(group_by))
            series[name].append(iteration_scores(g))
            count_failures(name, g)
        elif len(reviewers) > 1:
            for r in reviewers:
                series[f"reviewer {r}"].append(iteration_scores(g, r))
                count_failures(f"reviewer {r}", g, r)
            series["mean of reviewers"].append(iteration_scores(g))
            count_failures("mean of reviewers", g)
        else:
            name = f"reviewer {reviewers[0]}" if reviewers else "score"
            series[name].append(iteration_scores(g))
            count_failures(name, g)
    blocks: list[Block] = [
        Fig(
            fig_name,
            plots.score_trajectories(series),
            "Reviewer score (out of 10) of each iteration: thin lines "
            "are single prompts, the thick line the mean with its interquartile band.",
        )
    ]
    header = ["series", "iteration", "scored", "mean", "median", "min", "max", "improved vs iter 1", "review failures"]
    rows = []
    for name, runs in series.items():
        n_iter = max((len(r) for r in runs), default=0)
        for i in range(n_iter):
            vals = [x for x in (r[i] for r in runs if i < len(r)) if x is not None]
            both = [(a, b) for a, b in ((r[0], r[i]) for r in runs if i < len(r)) if a is not None and b is not None]
            rows.append(
                [
                    name,
                    i + 1,
                    len(vals),
                    statistics.fmean(vals) if vals else None,
                    statistics.median(vals) if vals else None,
                    min(vals) if vals else None,
                    max(vals) if vals else None,
                    pct(sum(b > a for a, b in both) / len(both)) if i and both else "",
                    failures[(name, i)],
                ]
            )
    blocks.append(Table(header, rows))
    return Section(title, blocks)


def _winrate_comparison(wr: Mapping[str, Any], c: str, b: str, cell: Mapping[str, Any]) -> Mapping[str, Any]:
    """The paired comparison of configuration ``c`` against the reference configuration for
    baseline ``b``, wherever winrate.json keeps it (in the cell, or under ``comparisons``); {} if none."""
    comp = cell.get("vs_reference") or cell.get("comparison")
    if not comp:
        comp = ((wr.get("comparisons") or {}).get(c) or {}).get(b)
    return comp if isinstance(comp, Mapping) else {}


def winrate_section(wr: Mapping[str, Any]) -> Section:
    """The win-rate table of ``winrate.json`` (configurations x baselines) and its bars; each rate
    with its 95% interval and the verdict against the reference configuration where the file has them."""

    rows_names, cols = list(wr.get("rows") or []), list(wr.get("columns") or [])
    table = wr.get("table") or {}
    cells = [(c, b, (table.get(c) or {}).get(b)) for c in rows_names for b in cols]
    has_ci = any(cell and cell.get("win_rate_ci") for _, _, cell in cells)
    has_cmp = any(cell and _winrate_comparison(wr, c, b, cell) for c, b, cell in cells)
    suffix = " [95% CI]" if has_ci else ""
    header = ["configuration", "baseline", f"win %{suffix}", f"tie %{suffix}", "loss %"]
    header += [f"win % (ties as half){suffix}", "judged n", "failed"]
    has_lc = any(cell and cell.get("lc_win_rate") is not None for _, _, cell in cells)
    if has_lc:
        header += [f"length-controlled win %{suffix}", f"length preference{suffix}"]
    if has_cmp:
        header += ["Δ win rate vs reference [95% CI]", "verdict"]
    rows: list[list[Any]] = []
    for c, b, cell in cells:
        if not cell:
            rows.append([c, b, None, None, None, None, 0, 0] + [None, None] * (has_lc + has_cmp))
            continue
        n = cell.get("n") or 0
        row = [
            c,
            b,
            ci(cell.get("win_rate"), cell.get("win_rate_ci"), percent=True),
            ci(cell.get("tie_rate"), cell.get("tie_rate_ci"), percent=True),
            pct(cell.get("losses", 0) / n if n else None),
            ci(cell.get("win_rate_ties_half"), cell.get("win_rate_ties_half_ci"), percent=True),
            n,
            cell.get("failed", 0),
        ]
        if has_lc:
            row += [
                ci(cell.get("lc_win_rate"), cell.get("lc_win_rate_ci"), percent=True),
                ci(cell.get("length_coef"), cell.get("length_coef_ci"), 2, sign=True),
            ]
        if has_cmp:
            comp = _winrate_comparison(wr, c, b, cell)
            if comp.get("verdict") == "reference":
                row += ["0 (reference)", "reference"]
            else:
                row += [
                    ci(comp.get("diff"), comp.get("diff_ci"), percent=True, sign=True),
                    verdict_cell({"vs_reference": comp}) or "–",
                ]
        rows.append(row)
    note = (
        f"Judge {wr.get('judge', '?')} ({wr.get('setup', '?')}), {wr.get('n_prompts', '?')} prompts; "
        "the configuration is shown as A. "
        "Rates are over judged comparisons (wins + ties + losses); judge failures are left out and counted."
    )
    if has_ci:
        note += " [low, high]: 95% bootstrap interval over prompts."
    else:
        note += " This winrate.json carries no intervals (written by an older mapo): rates are point estimates."
    if has_lc:
        note += (
            " Length-controlled win %: the win rate predicted at equal response length by a logistic regression "
            "of these judgements on tanh(length difference / its sd) (alpaca_eval's idea, fitted on this run; it "
            "removes whatever quality goes with length too); length preference: that regression's slope "
            "(0 = none, > 0 = the judge prefers the longer answer)."
        )
    if has_cmp:
        note += (
            " Δ win rate: this configuration's win rate minus the reference configuration's against the same "
            "baseline, paired by prompt; the verdict reads as for kappa (better / not worse / significantly lower / worse / cannot tell)."
        )
    return Section(
        "Win rate against baselines",
        [
            Text(note, note=True),
            Table(header, rows),
            Fig(
                "winrate",
                plots.winrate_bars(table, rows_names, cols),
                "Wins, ties and losses of each configuration against each baseline.",
            ),
        ],
    )


def versus_section(wr: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> Section | None:
    """A vs B, for a winrate run of one configuration against one baseline (e.g. a trained model
    against its base): how often the judge preferred each, ties apart, each rate with its 95%
    interval where winrate.json has one, and which side is ahead. None for any other shape."""
    rows_names, cols = list(wr.get("rows") or []), list(wr.get("columns") or [])
    if len(rows_names) != 1 or len(cols) != 1:
        return None
    a, b = rows_names[0], cols[0]
    cell = ((wr.get("table") or {}).get(a) or {}).get(b)
    title = f"A vs B: {a} vs {b}"
    if not cell or not cell.get("n"):
        return Section(title, [Text("No judged comparison: every judgement failed or none was made.", note=True)])
    n = cell["n"]
    generator = next(
        (c.get("generator") for c in (manifest or {}).get("configurations") or [] if c.get("name") == a), None
    )
    loss_rate = cell.get("loss_rate", cell.get("losses", 0) / n)
    half, half_ci = cell.get("win_rate_ties_half"), cell.get("win_rate_ties_half_ci")
    has_ci = isinstance(half_ci, (list, tuple)) and len(half_ci) == 2 and None not in half_ci
    # B's share with ties as half is 1 - A's, and so is its interval (the same resamples, mirrored)
    b_half = None if half is None else 1.0 - half
    b_half_ci = [1.0 - half_ci[1], 1.0 - half_ci[0]] if has_ci else None
    table = Table(
        ["side", "model", "judged better", "rate [95% CI]", "ties as half-wins [95% CI]"],
        [
            [
                "A: configuration",
                f"{a} ({generator})" if generator and generator != a else a,
                cell.get("wins", 0),
                ci(cell.get("win_rate"), cell.get("win_rate_ci"), percent=True),
                ci(half, half_ci, percent=True),
            ],
            [
                "B: baseline",
                b,
                cell.get("losses", 0),
                ci(loss_rate, cell.get("loss_rate_ci"), percent=True),
                ci(b_half, b_half_ci, percent=True),
            ],
            ["tie", "", cell.get("ties", 0), ci(cell.get("tie_rate"), cell.get("tie_rate_ci"), percent=True), ""],
            ["judge failed (left out)", "", cell.get("failed", 0), "", ""],
        ],
    )
    if half is None:
        verdict = ""
    elif not has_ci:
        verdict = " No interval in this winrate.json (written by an older mapo): a point estimate only."
    elif half_ci[0] > 0.5:
        verdict = f" The interval lies above 50%: the judge prefers {a} (A)."
    elif half_ci[1] < 0.5:
        verdict = f" The interval lies below 50%: the judge prefers {b} (B)."
    else:
        verdict = f" The interval includes 50%: these {n} comparisons cannot tell A and B apart."
    note = (
        f"{n} judged comparisons on the same prompts (judge {wr.get('judge', '?')}); rates are over them, "
        f"ties counted apart. A's win rate with ties as half-wins: "
        f"{ci(half, half_ci, percent=True)}.{verdict}"
    )
    if has_ci:
        note += " [low, high]: 95% bootstrap interval over prompts."
    return Section(title, [table, Text(note, note=True)])
