"""Issue 25: the report and the leaderboard say the numbers agreement.json says, every one of them:
kappas and intervals, accuracy, differences and verdicts, the human ceiling and each evaluator's
leave-one-out kappa, the best jury with its selection-corrected kappa; and the report reads the
label file with the columns and labels the kappas used (not the defaults)."""

from __future__ import annotations

import csv
import json

from mapo.cli.agreement import main as agreement_main
from mapo.report import leaderboard
from mapo.report import render as report
from mapo.report.document import ci, md_escape
from mapo.report.sections.common import verdict_cell
from tests.metrics.test_agreement_cli import _authors
from tests.metrics.test_annotators import COLUMNS, LABELS, THREE
from tests.report.test_report import check_files, server  # noqa: F401 - server is a fixture
from tests.report.test_trust import section, table_rows


def md_name(text: str) -> str:
    """A cell's text as report.md writes it (Markdown specials escaped)."""
    return md_escape(text)


def _f(cell: str) -> float | None:
    return None if cell in ("", None) else float(cell)


def r_best_loo(long: dict, best: dict) -> str:
    return long[" + ".join(best["members"])]["loo_kappa"]


def test_report_and_leaderboard_say_what_agreement_json_says(tmp_path):
    root = _authors(tmp_path / "authors")
    out = tmp_path / "agreement.json"
    argv = ["--authors", str(root), "--humans", str(THREE), "--humans-columns", COLUMNS, "--humans-labels", LABELS]
    assert agreement_main([*argv, "--jury-subsets", "--n-resamples", "800", "--out", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["human_agreement"] and t["jury_subsets"][0]["selection"]

    # ---- the report
    assert report.main([str(out)]) == 0
    d = tmp_path / "agreement_report"
    _, md = check_files({"html": d / "report.html", "md": d / "report.md", "figures": d / "figures"})
    rows = {r[0]: r for r in table_rows(section(md, "Agreement with humans (Cohen's kappa)"))}
    for e in t["results"]:
        r = rows[md_name(e["judge"])]
        assert r[3] == md_name(ci(e["kappa"], e["kappa_ci"]))
        assert r[4] == md_name(ci(e["accuracy"], e["accuracy_ci"], percent=True))
        assert (int(r[5]), int(r[6])) == (e["n"], e["n_failed"])
        v = e["vs_reference"]
        if v["verdict"] != "reference":
            assert r[8] == md_name(ci(v["diff"], v["diff_ci"], sign=True))
        assert r[9] == md_name(verdict_cell(e))
        assert r[10] == md_name(ci(e["loo_kappa"], e["loo_kappa_ci"]))
    c = t["human_agreement"]["ceiling"]
    assert rows["humans (ceiling)"][10] == md_name(ci(c["kappa"], c["kappa_ci"]))
    kappa_text = section(md, "Agreement with humans (Cohen's kappa)")
    f = t["human_agreement"]["fleiss"]
    assert md_name(ci(f["kappa"], f["kappa_ci"])) in kappa_text
    for p in t["human_agreement"]["pairwise"]:
        assert md_name(ci(p["kappa"], p["kappa_ci"])) in kappa_text
    block = t["jury_subsets"][0]
    jury = section(md, f"Jury subsets: {block['jury']}")
    sel = block["selection"]
    assert md_name(ci(sel["corrected"], sel["corrected_ci"])) in jury and f"{sel['optimistic']:.3f}" in jury
    assert "is a best-of on these items, so optimistic" in jury  # the per-judge best-of heatmap says so too
    for k, v in sel["by_size"].items():
        row = next(r for r in table_rows(jury) if r[0] == k)
        assert row[4] == md_name(ci(v["corrected"], v["corrected_ci"]))
    for s in block["subsets"]:
        row = next(r for r in table_rows(jury) if r[0] == md_name(" + ".join(s["members"])))
        assert row[2] == md_name(ci(s["kappa"], s["kappa_ci"])) and row[6] == md_name(verdict_cell(s))
    each = {r[0]: r for r in table_rows(section(md, "Each annotator as a separate human"))}
    names = t["human_agreement"]["annotators"]
    for e in t["results"]:
        r = each[md_name(e["judge"])]
        for a, cell in zip(names, r[2:-1], strict=True):
            x = e["per_annotator_kappa"][a]
            assert cell == md_name(ci(x["kappa"], x["kappa_ci"]))
        assert r[-1] == md_name(ci(e["each_annotator_kappa"], e["each_annotator_kappa_ci"]))
    hum = t["human_agreement"]["each_annotator"]["human"]
    assert each["humans (one vs another)"][-1] == md_name(ci(hum["kappa"], hum["kappa_ci"]))
    choice = t["uncertainty"]["reference_choice"]
    assert md_name(ci(choice["corrected"], choice["corrected_ci"])) in kappa_text and "a best-of" in kappa_text
    # the label file is read as the kappas read it: its response columns are found (no "holds no response texts")
    assert "holds no response texts" not in md and "## Bias: length" in md

    # ---- the leaderboard
    lb = tmp_path / "lb"
    assert leaderboard.main([str(out), "--out", str(lb)]) == 0
    long = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
    for e in t["results"]:
        r = long[e["judge"]]
        assert _f(r["kappa"]) == round(e["kappa"], 6)
        assert (_f(r["kappa_low"]), _f(r["kappa_high"])) == tuple(round(x, 6) for x in e["kappa_ci"])
        assert r["verdict"] == e["vs_reference"]["verdict"]
        assert _f(r["loo_kappa"]) == round(e["loo_kappa"], 6)
    best = block["subsets"][0]
    r = long[" + ".join(best["members"])]
    assert r["selected"] == "True" and r["kind"] == "jury"
    assert _f(r["kappa"]) == round(best["kappa"], 6)
    assert _f(r["selection_corrected"]) == round(sel["corrected"], 6)
    assert (_f(r["selection_corrected_low"]), _f(r["selection_corrected_high"])) == tuple(
        round(x, 6) for x in sel["corrected_ci"]
    )
    assert _f(long["humans (ceiling)"]["loo_kappa"]) == round(c["kappa"], 6)
    lmd = (lb / "leaderboard.md").read_text()
    assert f"jury, selected of {sel['n_candidates']}" in lmd
    assert md_name(ci(sel["corrected"], sel["corrected_ci"])) in lmd
    # no column contradicts its note: no token counts are shown when none were recorded
    assert "tokens are not shown" in lmd
    every = section(lmd, "Every entry")
    assert "tokens" not in table_rows(every)[0] and "P(first) [95% CI]" not in table_rows(every)[0]
    # each annotator as a separate human, beside the majority: every evaluator's mean kappa against one
    # annotator, and one human against another (the mean pairwise kappa)
    each_h = t["human_agreement"]["each_annotator"]["human"]
    for e in t["results"]:
        r = long[e["judge"]]
        assert _f(r["each_annotator_kappa"]) == round(e["each_annotator_kappa"], 6)
        assert (_f(r["each_annotator_kappa_low"]), _f(r["each_annotator_kappa_high"])) == tuple(
            round(x, 6) for x in e["each_annotator_kappa_ci"]
        )
    assert _f(long["humans (ceiling)"]["each_annotator_kappa"]) == round(each_h["kappa"], 6)
    assert _f(r_best_loo(long, best)) == round(best["loo_kappa"], 6)  # the selected jury against the ceiling too
    # the default reference is a best-of on these items: said, with its selection-corrected kappa
    choice = t["uncertainty"]["reference_choice"]
    assert choice["n_candidates"] == len(t["results"]) and choice["corrected_ci"][0] is not None
    assert md_name(ci(choice["corrected"], choice["corrected_ci"])) in lmd and "a best-of" in lmd


def test_evaluate_on_a_three_annotator_file_reports_the_ceiling(server, tmp_path):  # noqa: F811
    """eval_data=local with three label columns: the majority is the label, records keep the annotators,
    agreement.json, `mapo agreement RUN`, the report and the leaderboard carry the ceiling."""
    import asyncio

    from mapo.cli.agreement import run_tables
    from mapo.core.config import JudgeConfig, RolesConfig, RunConfig
    from mapo.runs.evaluate import evaluate
    from tests.report.test_report import _client, fake_model

    models = {n: fake_model(server, served_name=n) for n in ("j1", "j2")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(judge="j1", jurors=["j1", "j2"]),
        judge=JudgeConfig(both_orders=False),
        evaluator="jury",
        eval_data={
            "loader": "local",
            "path": str(THREE),
            "columns": {
                "id": "idx",
                "question": "instruction",
                "response_a": "response1",
                "response_b": "response2",
                "human": ["annotator1", "annotator2", "annotator3"],
            },
            "labels": {1: "model_a", 2: "model_b", 0: "tie"},
            "families": {"j1": "fake", "j2": "fake"},
        },
        client=_client(tmp_path),
        output_dir=str(tmp_path / "run"),
    )
    asyncio.run(evaluate(cfg))
    run = tmp_path / "run"
    t = json.loads((run / "agreement.json").read_text())
    recs = [json.loads(x) for x in (run / "judgements.jsonl").read_text().splitlines()]
    assert all(set(r["annotators"]) == {"annotator1", "annotator2", "annotator3"} for r in recs)
    assert {r["item_id"]: r["human"] for r in recs}["2"] == "tie"  # a 0-1-2 split is a tie
    h = t["human_agreement"]
    assert h["n_items"] == 6 and len(h["pairwise"]) == 3 and all("loo_kappa" in e for e in t["results"])
    # each annotator as a separate human, beside the majority (eval_data=local as mapo agreement)
    assert all(set(e["per_annotator_kappa"]) == set(h["annotators"]) for e in t["results"])
    assert h["each_annotator"]["human"]["kappa"] is not None
    again = run_tables([str(run)], n_resamples=int(t["uncertainty"]["n_resamples"]), seed=int(t["uncertainty"]["seed"]))
    assert again["human_agreement"]["ceiling"]["kappa"] == h["ceiling"]["kappa"]
    assert [e["each_annotator_kappa"] for e in again["results"]] == [e["each_annotator_kappa"] for e in t["results"]]
    assert t["eval_data"]["annotators"] == ["annotator1", "annotator2", "annotator3"]
    assert "split" in t["eval_data"]["majority_rule"]
    paths = report.write_report(run)
    md = paths["md"].read_text()
    rows = {r[0]: r for r in table_rows(section(md, "Agreement with humans (Cohen's kappa)"))}
    assert rows["humans (ceiling)"][-1] == md_name(ci(h["ceiling"]["kappa"], h["ceiling"]["kappa_ci"]))
    lb = tmp_path / "lb"
    assert leaderboard.main([str(run), "--out", str(lb)]) == 0
    long = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
    assert _f(long["humans (ceiling)"]["loo_kappa"]) == round(h["ceiling"]["kappa"], 6)


def test_leaderboard_reference_keeps_the_selected_jury_and_the_ceiling(tmp_path):
    """--reference recomputes every verdict from the per-item labels: the selected jury and the human
    ceiling are formed again, not lost."""
    root = _authors(tmp_path / "authors")
    out = tmp_path / "agreement.json"
    argv = ["--authors", str(root), "--humans", str(THREE), "--humans-columns", COLUMNS, "--humans-labels", LABELS]
    assert agreement_main([*argv, "--jury-subsets", "--n-resamples", "500", "--out", str(out)]) == 0
    t = json.loads(out.read_text())
    lb = tmp_path / "lb"
    assert leaderboard.main([str(out), "--out", str(lb), "--reference", "gemma-2-9b"]) == 0
    long = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
    assert long["gemma-2-9b"]["verdict"] == "reference"
    best = t["jury_subsets"][0]["subsets"][0]
    r = long[" + ".join(best["members"])]
    assert r["selected"] == "True" and _f(r["kappa"]) == round(best["kappa"], 6) and r["reference"] == "gemma-2-9b"
    assert _f(long["humans (ceiling)"]["loo_kappa"]) == round(t["human_agreement"]["ceiling"]["kappa"], 6)
    assert all(long[e["judge"]]["loo_kappa"] for e in t["results"])


def test_kappa_plot_shows_the_figure_comparable_with_the_ceiling(monkeypatch):
    """The bars score against the majority of all annotators, the ceiling against the majority of the others:
    the plot also marks each evaluator's leave-one-out kappa, the figure to compare with the ceiling."""
    from matplotlib.axes import Axes

    from mapo.report import plots

    drawn: list[tuple[list, str | None]] = []
    plot = Axes.plot

    def recording(self, *args, **kwargs):
        drawn.append((list(args[0]) if args else [], kwargs.get("label")))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording)
    entries = [
        {"judge": "a", "kind": "judge", "kappa": 0.5, "kappa_ci": [0.4, 0.6], "n": 9, "loo_kappa": 0.42},
        {"judge": "b", "kind": "judge", "kappa": 0.3, "kappa_ci": [0.2, 0.4], "n": 9, "loo_kappa": 0.25},
    ]
    ceiling = {"kappa": 0.45, "kappa_ci": [0.35, 0.55]}
    assert plots.kappa_bars(entries, ceiling=ceiling)[:4] == b"\x89PNG"
    assert ([0.42, 0.25], "leave-one-out kappa (compare with the ceiling)") in drawn
    drawn.clear()
    plots.kappa_bars(entries)  # no ceiling: no leave-one-out markers
    assert not [d for d in drawn if d[1] and "leave-one-out" in d[1]]
