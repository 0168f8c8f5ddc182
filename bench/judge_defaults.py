"""Choose the embedded judge defaults by measurement (issue 14, item 4).

On the FairEval items (../shared/data/faireval; 80 Vicuna-80 questions with one human label
each) every embedded model judges with combined scoring out of 10 (``mapo build``'s judge
strategy) in both presentation orders, once with the explanation text (``judge.explain=true``)
and once score-only (``false``), always with ``judge.scoring=expected``. That is 2 runs per
judge model; every other setting is recomputed from their records, with no model call:

* argmax vs expected: a record keeps the written verdict (``argmax``) and the distribution at
  each score (``logprobs``); :meth:`mapo.judging.strategy.Strategy.stored_verdict` gives either;
* one order vs both: one order is the AB record alone; both orders combine AB and BA, with
  each ``judge.order_combine``: ``both`` = ``inconsistent_tie`` (orders that disagree are a
  tie), ``both_mean`` = ``mean_score`` (the mean of the two orders' scores decides).

Each run is the real CLI (``mapo evaluate`` with Hydra overrides) into
``runs/judge-defaults/<model>-explain-<on|off>``; rerunning resumes there (a larger --limit
judges only the new items). For every (model, explain, scoring, orders) the table gives Cohen's
kappa against the human labels with a bootstrap 95% interval and the paired difference to
today's default (SmolLM2, argmax, one order, with explanation), accuracy, tie rate, failure
rate, position bias (P(the first shown response is picked | decisive), and swap consistency:
both measured from the two orders of the same scoring), completion tokens and latency per
call. Only items judged in both orders by every run are counted (n in the table).

    .venv/bin/python -m serve up                     # if `python -m serve status` shows none
    .venv/bin/python bench/judge_defaults.py --limit 20            # a check, end to end
    .venv/bin/python bench/judge_defaults.py --time-budget-s 1800  # as many items as fit
    .venv/bin/python bench/judge_defaults.py --no-run              # the table from stored records

Writes bench/results/judge_defaults.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mapo.core.store import iter_records  # noqa: E402
from mapo.core.types import Label, Pick, pick_to_label  # noqa: E402
from mapo.core.verdicts import combine_orders  # noqa: E402
from mapo.judging.judge import STRATEGIES  # noqa: E402
from mapo.metrics.agreement import position_bias  # noqa: E402
from mapo.serving import cpu_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT = ("smollm2-135m", True, "argmax", "one")
"""Today's `mapo build` judge: SmolLM2, written score, one order, with the explanation text."""


# --------------------------------------------------------------------------- the runs


def lscpu() -> dict[str, str]:
    """lscpu's model name, CPU count and caches (empty where lscpu is absent)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs if k.strip() in keep}


def faireval_path() -> Path | None:
    """The shared FairEval file ($MAPO_SHARED, else ../shared beside the checkout), or None."""
    shared = Path(os.environ.get("MAPO_SHARED", REPO.parent / "shared"))
    path = shared / "data" / "faireval" / "fair_eval.jsonl"
    return path if path.is_file() else None


def _shown(path: Path) -> Path:
    """A path relative to the repository (the runs' working directory) where it lies inside it."""
    full = path.resolve()
    return full.relative_to(REPO) if full.is_relative_to(REPO) else path


def run_dir(out: Path, model: str, explain: bool) -> Path:
    return out / f"{model}-explain-{'on' if explain else 'off'}"


def command(model: str, explain: bool, out: Path, limit: int | None, strategy: str, extra: Sequence[str]) -> list[str]:
    """The `mapo evaluate` command line of one run."""
    return [
        sys.executable,
        "-m",
        "mapo",
        "evaluate",
        f"judge={strategy}",
        f"roles.judge={model}",
        "judge.scoring=expected",
        "judge.both_orders=true",
        f"judge.explain={str(explain).lower()}",
        "eval_data=faireval",
        f"eval_data.limit={limit if limit else 'null'}",
        f"hydra.run.dir={_shown(run_dir(out, model, explain))}",
        "client.progress=off",
        *extra,
    ]


def run_all(cmds: list[list[str]], budget_s: float | None, logs: Path) -> list[dict[str, Any]]:
    """Start every run at once (each model's server batches its two runs; the two servers share the
    cores); after ``budget_s`` send SIGINT, which stops a run cleanly with its records kept."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    t0 = time.monotonic()
    for i, cmd in enumerate(cmds):
        log = (logs / f"run{i}.log").open("w")
        procs.append((cmd, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
    stopped = False
    while any(p.poll() is None for _, p, _ in procs):
        if budget_s is not None and not stopped and time.monotonic() - t0 > budget_s:
            for _, p, _ in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            stopped = True
        time.sleep(2)
    out = []
    for cmd, p, log in procs:
        log.close()
        out.append({"command": " ".join(["mapo", *cmd[3:]]), "returncode": p.returncode, "stopped_at_budget": stopped})
    return out


# --------------------------------------------------------------------------- the table


Row = dict[str, Any]


def load(out: Path, models: Sequence[str]) -> dict[tuple[str, bool], dict[tuple[str, str], dict[str, Any]]]:
    """(model, explain) -> (item_id, order) -> the judge record, for every run folder present."""
    runs: dict[tuple[str, bool], dict[tuple[str, str], dict[str, Any]]] = {}
    for model in models:
        for explain in (True, False):
            path = run_dir(out, model, explain) / "judgements.jsonl"
            if path.is_file():
                recs = [r for r in iter_records(path, on_damaged="skip") if r.get("kind") == "judge"]
                runs[(model, explain)] = {(r["item_id"], r["order"]): r for r in recs}
    return runs


def order_verdict(rec: Mapping[str, Any], scoring: str, how: Counter[str]) -> tuple[Pick | None, dict[str, Any]]:
    """(presentation-order pick, dataset-terms row for combine_orders) of one record under ``scoring``."""
    attempts = (rec.get("detail") or {}).get("attempts") or []
    if not attempts:  # a per-item fault (e.g. a rejected request)
        how["failed"] += 1
        return None, {"label": None}
    v, reached = STRATEGIES.get(rec["strategy"]).stored_verdict(attempts[-1], rec["scale"], scoring)
    how[reached if v.ok else "failed"] += 1
    if not v.ok or v.pick is None:
        return None, {"label": None}
    swapped = rec["order"] == "BA"
    sa, sb = (v.score_b, v.score_a) if swapped else (v.score_a, v.score_b)
    return v.pick, {"label": pick_to_label(v.pick, swapped), "score_a": sa, "score_b": sb}


ORDERS = {"one": None, "both": "inconsistent_tie", "both_mean": "mean_score"}
"""How an item's verdict is read: the AB order alone, or both orders under a ``judge.order_combine``."""


def rows_for(recs: Mapping[tuple[str, str], Mapping[str, Any]], items: Sequence[str], scoring: str) -> dict[str, Any]:
    """Labels per item for one order and both, the position-bias picks and the accounting of one run."""
    how: Counter[str] = Counter()
    labels: dict[str, list[Label | None]] = {k: [] for k in ORDERS}
    picks: list[tuple[Pick | None, Pick | None]] = []
    for item in items:
        ab_pick, ab = order_verdict(recs[(item, "AB")], scoring, how)
        ba_pick, ba = order_verdict(recs[(item, "BA")], scoring, how)
        for orders, rule in ORDERS.items():
            labels[orders].append(ab["label"] if rule is None else combine_orders([ab, ba], rule)[0])
        picks.append((ab_pick, ba_pick))
    calls = [recs[(i, o)] for i in items for o in ("AB", "BA")]
    return {
        **labels,
        "picks": picks,
        "scored": dict(how),
        "completion_tokens_per_call": float(np.mean([r["completion_tokens"] for r in calls])),
        "latency_s_per_call": float(np.mean([r["latency_s"] for r in calls])),
    }


def _intervals(labels: list[list[Label | None]], human: list[Label], reference: int, n_resamples: int) -> dict:
    """kappa, accuracy and kappa - kappa[reference] with paired bootstrap 95% intervals (STATS'
    :func:`mapo.metrics.uncertainty.kappa_intervals`)."""
    from mapo.metrics.uncertainty import Bootstrap, kappa_intervals

    got = kappa_intervals(labels, human, reference=reference, settings=Bootstrap(n_resamples=n_resamples))
    return {k: [None if np.isnan(x) else float(x) for x in v] for k, v in got.items()}


def _sided(labels: list[list[Label | None]], human: list[Label], n_resamples: int) -> dict[str, list]:
    """P(the judge's side is the human's | both picked a side): how often a preference pair the
    judge would write points the right way (ties give no pair), with bootstrap 95% intervals."""
    from mapo.metrics.uncertainty import Bootstrap, ratio_intervals

    sides = ("model_a", "model_b")
    den = np.array([[j in sides and h in sides for j, h in zip(lab, human, strict=True)] for lab in labels], float)
    num = np.array([[j in sides and j == h for j, h in zip(lab, human, strict=True)] for lab in labels], float)
    got = ratio_intervals(num, den, settings=Bootstrap(n_resamples=n_resamples))
    out: dict[str, list] = {k: [None if np.isnan(x) else float(x) for x in v] for k, v in got.items()}
    out["n"] = [int(x) for x in den.sum(axis=1)]
    return out


def _position(picks: list[tuple[Pick | None, Pick | None]], n_resamples: int) -> dict[str, Any]:
    from mapo.metrics.bias import position_intervals
    from mapo.metrics.uncertainty import Bootstrap

    pb = position_bias(picks).to_dict()
    pb.update(position_intervals(picks, Bootstrap(n_resamples=n_resamples)))
    return pb


def table(out: Path, models: Sequence[str], n_resamples: int) -> dict[str, Any]:
    """Every (model, explain, scoring, orders) setting over the items complete in every run."""
    runs = load(out, models)
    if not runs:
        raise SystemExit(f"judge_defaults: no run folders under {out}; run without --no-run first")
    complete = [{i for (i, o) in recs if (i, "AB") in recs and (i, "BA") in recs} for recs in runs.values()]
    items = sorted(set.intersection(*complete), key=lambda x: (len(x), x))
    if not items:
        raise SystemExit(f"judge_defaults: no item is judged in both orders by every run under {out}")
    any_run = next(iter(runs.values()))
    human: list[Label] = [any_run[(i, "AB")]["human"] for i in items]
    settings: list[tuple[str, bool, str, str]] = []
    labels: list[list[Label | None]] = []
    extra: list[dict[str, Any]] = []
    for (model, explain), recs in runs.items():
        for scoring in ("argmax", "expected"):
            got = rows_for(recs, items, scoring)
            pb = _position(got["picks"], n_resamples)
            for orders in ORDERS:
                settings.append((model, explain, scoring, orders))
                labels.append(got[orders])
                extra.append({k: v for k, v in got.items() if k not in (*ORDERS, "picks")} | {"position": pb})
    reference = settings.index(DEFAULT) if DEFAULT in settings else 0
    ci = _intervals(labels, human, reference, n_resamples)
    sided = _sided(labels, human, n_resamples)
    rows: list[Row] = []
    for e, ((model, explain, scoring, orders), lab, more) in enumerate(zip(settings, labels, extra, strict=True)):
        decided = [x for x in lab if x is not None]
        rows.append(
            {
                "model": model,
                "explain": explain,
                "scoring": scoring,
                "orders": orders,
                "n": len(lab),
                "kappa": ci["kappa"][e],
                "kappa_ci": [ci["kappa_low"][e], ci["kappa_high"][e]],
                "vs_default": ci["diff"][e],
                "vs_default_ci": [ci["diff_low"][e], ci["diff_high"][e]],
                "accuracy": ci["accuracy"][e],
                "tie_rate": sum(x == "tie" for x in decided) / len(decided) if decided else None,
                "failure_rate": 1 - len(decided) / len(lab),
                "decisive_rate": sum(x in ("model_a", "model_b") for x in lab) / len(lab),
                "right_side": sided["rate"][e],
                "right_side_ci": [sided["rate_low"][e], sided["rate_high"][e]],
                "right_side_n": sided["n"][e],
                **more,
            }
        )
    return {
        "items": items,
        "n_items": len(items),
        "human_labels": dict(Counter(human)),
        "orders": ORDERS,
        "default": dict(zip(("model", "explain", "scoring", "orders"), DEFAULT, strict=True)),
        "rows": rows,
    }


def manifests(out: Path, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each run's manifest (status, wall time of its last invocation, requests), and a cross-check:
    the kappa `mapo evaluate` itself reported for the run's live verdicts (expected, both orders
    combined by judge.order_combine=inconsistent_tie) against this table's (both leave failed items out)."""
    found = []
    for r in result["rows"]:
        if (r["scoring"], r["orders"]) != ("expected", "both"):
            continue
        path = run_dir(out, r["model"], r["explain"]) / "manifest.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        agreement = m.get("agreement") or {}
        found.append(
            {
                "run": path.parent.name,
                "status": m.get("status"),
                "wall_s_last_invocation": (m.get("timings_s") or {}).get("wall"),
                "units": m.get("items"),
                "throughput": m.get("throughput"),
                "mapo_kappa": agreement.get("kappa"),
                "table_kappa": r["kappa"],
                "kappa_matches": abs((agreement.get("kappa") or 0.0) - (r["kappa"] or 0.0)) < 1e-9,
            }
        )
    return found


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _ci(x: float | None, lo_hi: Sequence[float | None], d: int = 3) -> str:
    return f"{_f(x, d)} [{_f(lo_hi[0], d)}, {_f(lo_hi[1], d)}]"


def markdown(result: Mapping[str, Any]) -> str:
    """The table as Markdown, one row per setting, best kappa first."""
    lines = [
        "| judge | explain | scoring | orders | kappa [95% CI] | vs default [95% CI] | accuracy | ties | failures "
        "| decisive | right side when decisive [95% CI] (n) "
        "| first-shown picked [95% CI] | swap-consistent | tokens/call | s/call (queued) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(result["rows"], key=lambda r: -1e9 if r["kappa"] is None else -r["kappa"])
    for r in rows:
        pb = r["position"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    "yes" if r["explain"] else "no",
                    r["scoring"],
                    r["orders"],
                    _ci(r["kappa"], r["kappa_ci"]),
                    _ci(r["vs_default"], r["vs_default_ci"]),
                    _f(r["accuracy"]),
                    _f(r["tie_rate"], 2),
                    _f(r["failure_rate"], 2),
                    _f(r["decisive_rate"], 2),
                    f"{_ci(r['right_side'], r['right_side_ci'], 2)} ({r['right_side_n']})",
                    _ci(pb.get("first_rate"), pb.get("first_rate_ci", [None, None]), 2),
                    _f(pb.get("consistency"), 2),
                    f"{r['completion_tokens_per_call']:.0f}",
                    f"{r['latency_s_per_call']:.1f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _without_note(argv: Sequence[str]) -> list[str]:
    """The command line minus --note (shown on its own line)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N FairEval items (default: all 80)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--strategy", default="combined10", help="conf/judge/ entry (mapo build's: combined10)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "judge-defaults")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--time-budget-s", type=float, default=None, help="stop the runs cleanly after this long")
    ap.add_argument("--no-run", action="store_true", help="only compute the table from the stored records")
    ap.add_argument("--n-resamples", type=int, default=20_000)
    ap.add_argument("--note", default=None, help="how the runs were made, when not by this invocation")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run, e.g. client.registry=...")
    args = ap.parse_args(argv)

    if faireval_path() is None:
        print(
            "judge_defaults: skipped: the FairEval data is absent "
            "(expected ../shared/data/faireval/fair_eval.jsonl beside the checkout, or $MAPO_SHARED)",
            file=sys.stderr,
        )
        return 0
    started = time.time()
    runs: list[dict[str, Any]] = []
    cmds = [
        command(m, explain, args.out, args.limit, args.strategy, args.extra)
        for m in args.models
        for explain in (True, False)
    ]
    if not args.no_run:
        runs = run_all(cmds, args.time_budget_s, args.out / "logs")
        for r in runs:
            print(f"rc={r['returncode']}: {r['command']}")
    result = table(args.out, args.models, args.n_resamples)
    md_table = markdown(result)
    cpu = cpu_info()
    result.update(
        cpu=cpu,
        lscpu=lscpu(),
        manifests=manifests(args.out, result),
        strategy=args.strategy,
        limit=args.limit,
        runs=runs,
        run_commands=[" ".join(["mapo", *c[3:]]) for c in cmds],
        bench_command=" ".join(["python", "bench/judge_defaults.py", *_without_note(argv or sys.argv[1:])]),
        wall_s=round(time.time() - started, 1),
        note=args.note,
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "judge_defaults.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result["human_labels"].items()))
    md = "\n".join(
        [
            "# Embedded judge defaults, measured (issue 14, item 4)",
            "",
            f"FairEval: n = {result['n_items']} of 80 items (those judged in both orders by every run; "
            f"human labels: {counts}); "
            f"judge strategy `{args.strategy}`. Orders: `one` = AB only; `both` = both orders, "
            "`judge.order_combine=inconsistent_tie` (disagreeing orders = tie); `both_mean` = both orders, "
            "`mean_score` (mean scores decide). "
            f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores, shared with other jobs: latencies are indicative). "
            f"Bootstrap 95% intervals over items ({args.n_resamples} resamples, paired: 'vs default' is the "
            "kappa difference to today's default, SmolLM2 / explain / argmax / one order). Position bias "
            "(first-shown picked = P(the response shown first wins | decisive), 0.5 = none; swap-consistent = "
            "share of items whose two orders agree) is measured from both orders of the same run and scoring.",
            "",
            md_table,
            "",
            "Runs (their manifest.json; wall time of the last invocation, a resumed run counts only its new "
            "items; `mapo evaluate`'s own kappa of the live verdicts vs this table's expected/both row):",
            "",
            *[
                f"* {m['run']}: {m['status']}, {m['wall_s_last_invocation']} s, "
                f"kappa {_f(m['mapo_kappa'])} ({'matches' if m['kappa_matches'] else 'DIFFERS'})"
                for m in result["manifests"]
            ],
            "",
            *([f"Note: {args.note}", ""] if args.note else []),
            f"Command: `{result['bench_command']}` ({result['wall_s']} s); each run:",
            "",
            *[f"    {c}" for c in result["run_commands"]],
            "",
        ]
    )
    (args.results / "judge_defaults.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
