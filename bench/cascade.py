"""A judge cascade on the authors' recorded FairEval outputs, with no API call (issue 22, item 3).

A cheap judge (Llama-3.1-8B or Gemma-2-9B) judges every item; the items it is least sure of go
to the strong judge (GPT-4o), whose recorded verdicts stand in for the escalation calls. Both
are the authors' combined-scoring /10 outputs (../shared/data/faireval/mapo-judgments/multi-rater10,
re-parsed by mapo), against the FairEval human labels. For each share of items escalated the
table gives the cascade's Cohen's kappa with its bootstrap 95% interval and the paired
difference against GPT-4o alone (one paired bootstrap, :mod:`mapo.metrics.uncertainty`), and
the kappa of escalating the same share at random (mean of 200 seeded draws).

What the curve assumes: the uncertainty signal is the cheap judge's written score margin
|score_A - score_B| (one presentation order was judged, so "orders disagree" cannot be replayed;
no logprobs were kept); items with equal margins escalate in item order; an escalation costs
one GPT-4o call (the cheap judge's own calls are counted apart, self-hosted); GPT-4o's answer
on an escalated item is the one it gave when judging every item (temperature 0).

    .venv/bin/python bench/cascade.py                  # writes bench/results/cascade.{json,md,png}
    .venv/bin/python bench/cascade.py --cheap gemma-2-9b --n-resamples 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mapo.data.importers import default_root
from mapo.metrics.cascade import replay_authors
from mapo.metrics.uncertainty import Bootstrap, verdict_words

RESULTS = Path(__file__).resolve().parent / "results"


def _ci(p: dict[str, Any], key: str = "kappa_ci") -> str:
    lo, hi = p[key]
    return "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]"


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Judge cascade on the authors' FairEval outputs (no API call)",
        "",
        f"Command: `python bench/cascade.py`. Source: `{runs[0]['source']}`, humans `{runs[0]['humans']}`, "
        f"{runs[0]['n']} items, bootstrap {runs[0]['bootstrap']['n_resamples']} resamples (seed "
        f"{runs[0]['bootstrap']['seed']}), non-inferiority margin {runs[0]['margin']} kappa.",
        "",
        f"Signal: {runs[0]['signal']}. Assumes: equal margins escalate in item order; an escalation is one "
        "strong-judge call, answered as the strong judge answered when it judged every item.",
        "",
        "Reading: the rows are 21 correlated operating points read off one curve, not a choice made before "
        "seeing them: a single 'better' among them is not selection-corrected. Llama-3.1-8B's margins are coarse "
        "(it rarely writes a tie, and most of its margins are 1-2 points), so its share curve moves in blocks "
        "whose inside order is item order.",
        "",
    ]
    for run in runs:
        pts = run["points"]
        alone = {p["name"]: p for p in pts if p["kind"] in ("cheap", "strong")}
        lines += [
            f"## {run['cheap']} first, {run['strong']} on escalation",
            "",
            f"{run['cheap']} alone: kappa {alone['cheap alone']['kappa']:.3f} {_ci(alone['cheap alone'])}; "
            f"{run['strong']} alone: {alone['strong alone']['kappa']:.3f} {_ci(alone['strong alone'])}. "
            f"Cheap-judge failures (always escalated): {run['cheap_failures']}.",
            "",
            "| escalated | GPT-4o calls (share of all-GPT-4o cost) | cascade kappa [95% CI] | vs GPT-4o alone [95% CI] "
            "| verdict | random escalation, same share |",
            "|---|---|---|---|---|---|",
        ]
        for p in pts:
            if p["kind"] not in ("share", "threshold"):
                continue
            label = p["name"] if p["kind"] == "threshold" else f"{100 * p['share_escalated']:.0f}%"
            rnd = f"{p['random_kappa']:.3f}" if p.get("random_kappa") is not None else "–"
            lines.append(
                f"| {label} | {p['strong_calls']} ({p['relative_cost']:.0%}) | {p['kappa']:.3f} {_ci(p)} "
                f"| {p['diff_vs_strong']:+.3f} {_ci(p, 'diff_ci')} | {verdict_words(p['verdict_vs_strong'], p['n_needed'])} "
                f"| {rnd} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for run, color in zip(runs, colors, strict=False):
        pts = [p for p in run["points"] if p["kind"] == "share"]
        x = [100 * p["share_escalated"] for p in pts]
        k = [p["kappa"] for p in pts]
        lo = [p["kappa_ci"][0] for p in pts]
        hi = [p["kappa_ci"][1] for p in pts]
        ax.plot(x, k, "-o", ms=3, color=color, label=f"{run['cheap']} -> {run['strong']} (least sure first)")
        ax.fill_between(x, lo, hi, color=color, alpha=0.12)
        ax.plot(x, [p.get("random_kappa") for p in pts], "--", color=color, lw=1, label=f"{run['cheap']}: random items")
    strong = next(p for p in runs[0]["points"] if p["kind"] == "strong")
    ax.axhline(strong["kappa"], color="black", lw=1, ls=":", label=f"{runs[0]['strong']} alone {strong['kappa']:.3f}")
    ax.set_xlabel("items escalated to the strong judge (% = share of its all-items cost)")
    ax.set_ylabel("Cohen's kappa vs humans (95% CI band)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Judge cascade on FairEval ({runs[0]['n']} items), replayed from recorded outputs")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", default=None, help="the authors' judgments folder (default ../shared/...)")
    ap.add_argument("--humans", default=None, help="human labels (default the shared FairEval copy)")
    ap.add_argument("--cheap", action="append", help="cheap judge(s); default llama31-8b and gemma-2-9b")
    ap.add_argument("--strong", default="gpt-4o")
    ap.add_argument("--n-resamples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "cascade"), help="output stem (.json, .md, .png)")
    args = ap.parse_args(argv)
    root = Path(args.authors) if args.authors else default_root()
    if root is None:
        print("no authors' judgments found (../shared/data/faireval/mapo-judgments); pass --authors", file=sys.stderr)
        return 2
    settings = Bootstrap(n_resamples=args.n_resamples, seed=args.seed)
    runs = [
        replay_authors(root, args.humans, cheap, args.strong, settings=settings)
        for cheap in (args.cheap or ["llama31-8b", "gemma-2-9b"])
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(runs) + "\n", encoding="utf-8")
    plot(runs, out.with_suffix(".png"))
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
