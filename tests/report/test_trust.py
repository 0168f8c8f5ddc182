"""Issue 15 in the report and the leaderboard: `mapo agreement` outputs are accepted, every kappa /
accuracy / win rate carries its interval, the verdict against the reference is shown, bias
diagnostics (candidate preference, length, position) and, for build runs, the pair counts and the
dataset quality indicators."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mapo.cli.agreement import main as agreement_main
from mapo.report import leaderboard
from mapo.report import render as report
from mapo.report.document import ci
from tests.conftest import shared_dir
from tests.report.test_report import (  # noqa: F401 - server is a fixture
    LABELS,
    build_run,
    check_files,
    evaluate_run,
    md_kappa,
    md_name,
    server,
    winrate_run,
)

FAST = ["--n-resamples", "2000"]  # bootstrap resamples for mapo agreement in tests (the default is 100,000)


def items_with_models(path: Path, n: int = 8) -> Path:
    """Pairs whose response_b is always the longer one, written by model_a = j1 (a juror) and model_b = other-llm."""
    with open(path, "w") as fh:
        for i in range(n):
            row = {
                "id": f"q{i}",
                "question": f"Question {i}?",
                "response_a": f"A{i}.",
                "response_b": f"A much longer answer to question {i}.",
                "human": LABELS[i % len(LABELS)],
                "model_a": "j1",
                "model_b": "other-llm",
            }
            fh.write(json.dumps(row) + "\n")
    return path


def section(md: str, title: str) -> str:
    assert f"## {title}" in md, f"no section {title!r}"
    return md.split(f"## {title}")[1].split("\n## ")[0]


def table_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]


def combined(recs: list[dict]) -> dict[str, str | None]:
    """item -> the evaluator's verdict with both orders combined (two that disagree are a tie)."""
    by_item: dict[str, list] = {}
    for r in recs:
        by_item.setdefault(r["item_id"], []).append(r["label"])
    out = {}
    for item, labels in by_item.items():
        ok = [x for x in labels if x is not None]
        out[item] = None if not ok else (ok[0] if len(set(ok)) == 1 else "tie")
    return out


# --------------------------------------------------------------------------- evaluate runs


def test_evaluate_report_intervals_verdicts_and_bias(server, tmp_path):  # noqa: F811
    items = items_with_models(tmp_path / "items.jsonl")
    run = evaluate_run(server, tmp_path, "jury", items=items)
    agreement = json.loads((run / "agreement.json").read_text())
    paths = report.write_report(run)
    page, md = check_files(paths)
    names = {p.stem for p in paths["figures"].glob("*.png")}
    assert {"kappa", "position_bias", "length_bias", "candidate_preference"} <= names

    # every kappa and accuracy with its interval, the difference from the reference and the verdict
    kappa = section(md, "Agreement with humans (Cohen's kappa)")
    ref = agreement["uncertainty"]["reference"]
    assert f"reference {md_name(ref)}" in kappa
    for e in agreement["results"]:
        v = e["vs_reference"]
        words = {"not_worse": "not worse", "worse": "worse", "cannot_tell": "cannot tell", "reference": "reference"}
        acc = md_name(ci(e["accuracy"], e["accuracy_ci"], percent=True))
        diff = "0 (reference)" if v["verdict"] == "reference" else md_name(ci(v["diff"], v["diff_ci"], sign=True))
        row = f"| {md_name(e['judge'])} | {e['kind']} | {md_name(e['setup'])} | {md_kappa(e)} | {acc} | {e['n']} |"
        assert row in kappa, row
        assert f"| {diff} | {words[v['verdict']]}" in kappa
    # per-order kappas and position bias with their intervals
    per_order = section(md, "Kappa per presentation order")
    jury = next(e for e in agreement["results"] if e["kind"] == "jury")
    assert md_name(ci(jury["by_order"]["AB"]["kappa"], jury["by_order"]["AB"]["kappa_ci"])) in per_order
    pb = jury["position_bias"]
    assert md_name(ci(pb["first_rate"], pb["first_rate_ci"])) in section(md, "Bias: position")

    # length bias, known answer: response_b is always longer, so humans prefer the longer one in 3 of their
    # 7 decisive labels; the judge's rate is its share of model_b among its decisive (orders combined) verdicts
    length = section(md, "Bias: length")
    recs = [json.loads(x) for x in (run / "judgements.jsonl").read_text().splitlines()]
    for e in agreement["results"]:
        mine = combined([r for r in recs if r["judge"] == e["judge"] and r["setup"] == e["setup"]])
        decisive = [x for x in mine.values() if x in ("model_a", "model_b")]
        rate = sum(x == "model_b" for x in decisive) / len(decisive)
        cells = next(c for c in table_rows(length) if c[0] == md_name(e["judge"]))
        assert cells[4].startswith(f"{rate:.3f} \\[") and cells[5].startswith(f"{3 / 7:.3f} \\["), cells

    # candidate preference: j1 wrote every response_a, so it is "own model" for j1 (and for the jury it sits on)
    pref = table_rows(section(md, "Bias: candidate preference (self and family)"))
    j1 = next(r for r in pref if r[0] == "j1" and r[2] == "j1")
    assert j1[3] == "own model" and j1[4] == "8"
    mine = combined([r for r in recs if r["judge"] == "j1" and r["kind"] == "juror"])
    picks = [1.0 if x == "model_a" else 0.5 if x == "tie" else 0.0 for x in mine.values() if x is not None]
    assert j1[5].startswith(f"{sum(picks) / len(picks):.3f} \\[")
    humans = [1.0 if h == "model_a" else 0.5 if h == "tie" else 0.0 for h in (LABELS * 2)[:8]]
    assert j1[6].startswith(f"{sum(humans) / 8:.3f} \\[")
    assert next(r for r in pref if r[0] == "j2" and r[2] == "j1")[3] == ""


def test_bias_sections_name_what_is_missing(server, tmp_path):  # noqa: F811
    items = items_with_models(tmp_path / "items.jsonl")
    run = evaluate_run(server, tmp_path, "judge", items=items, both_orders=False)
    items.unlink()  # the evaluated items are gone: no lengths, no candidates; the report says so
    page, md = check_files(report.write_report(run))
    assert "## Bias: length\n" not in md and "## Bias: candidate preference" not in md
    note = section(md, "Bias: length and candidate preference")
    assert "cannot be read" in note and "length bias and candidate preference are left out" in note
    assert "one order (AB), so no position bias can be measured" in md
    plain = tmp_path / "plain.jsonl"  # items without model columns: length bias, and a note for the candidates
    plain.write_text(
        "".join(
            json.dumps({k: v for k, v in json.loads(x).items() if not k.startswith("model_")}) + "\n"
            for x in items_with_models(tmp_path / "again.jsonl").read_text().splitlines()
        )
    )
    run2 = evaluate_run(server, tmp_path, "judge", name="eval2", items=plain, both_orders=False)
    _, md2 = check_files(report.write_report(run2))
    assert "## Bias: length\n" in md2 and "## Bias: candidate preference" not in md2
    assert "name no model\\_a / model\\_b columns" in section(md2, "Bias: length")


# --------------------------------------------------------------------------- mapo agreement outputs


def test_report_and_leaderboard_accept_an_agreement_output_of_runs(server, tmp_path):  # noqa: F811
    items = items_with_models(tmp_path / "items.jsonl")
    run = evaluate_run(server, tmp_path, "jury", items=items)
    out = tmp_path / "agr" / "agreement.recomputed.json"
    out.parent.mkdir()
    assert agreement_main([str(run), *FAST, "--out", str(out)]) == 0
    tables = json.loads(out.read_text())
    # the file
    assert report.main([str(out)]) == 0
    paths = {
        "html": tmp_path / "agr" / "agreement.recomputed_report" / "report.html",
        "md": tmp_path / "agr" / "agreement.recomputed_report" / "report.md",
        "figures": tmp_path / "agr" / "agreement.recomputed_report" / "figures",
    }
    page, md = check_files(paths)
    assert md.startswith("# mapo agreement: ")
    for e in tables["results"]:
        assert f"| {md_name(e['judge'])} | {e['kind']} | {md_name(e['setup'])} | {md_kappa(e)} |" in md
    # per-item inputs re-read from the records it names: the bias sections are there
    assert "## Bias: length\n" in md and "## Bias: candidate preference" in md and "## Bias: position" in md
    # a folder holding it (and another): one report per agreement output inside
    (tmp_path / "agr" / "agreement.copy.json").write_text(out.read_text())
    assert report.main([str(tmp_path / "agr"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "agreement.recomputed" / "report.html").exists()
    assert (tmp_path / "rep" / "agreement.copy" / "report.html").exists()
    # the leaderboard takes the file and the folder alike
    for source in (out, out.parent):
        lb = tmp_path / f"lb_{source.name}"
        assert leaderboard.main([str(source), "--out", str(lb)]) == 0
        rows = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
        for e in tables["results"]:
            r = rows[e["judge"]]
            assert float(r["kappa_low"]) == pytest.approx(e["kappa_ci"][0], abs=1e-6)
            assert r["verdict"] == e["vs_reference"]["verdict"] and r["reference"] == tables["uncertainty"]["reference"]
            assert r["length_bias"] != ""
    assert report.main([str(tmp_path / "items.jsonl")]) == 2  # a file that is not an agreement output


def test_report_and_leaderboard_of_the_authors_agreement_output(tmp_path):
    """``mapo agreement --authors`` on FairEval, then ``mapo report FILE`` and ``mapo leaderboard FILE``:
    the paper's kappas with intervals, verdicts against the reference, candidate and length bias."""
    shared = shared_dir()
    if shared is None or not (shared / "data" / "faireval" / "mapo-judgments").is_dir():
        pytest.skip("shared data absent: ../shared/data/faireval (set MAPO_SHARED)")
    faireval = shared / "data" / "faireval"
    out = tmp_path / "agr"
    args = ["--authors", str(faireval / "mapo-judgments"), "--humans", str(faireval / "fair_eval.jsonl")]
    # families are named, never guessed from names (issue 25)
    families = "llama31-8b=meta-llama,vicuna-13b=meta-llama,gpt-4o=openai,gpt-3.5-turbo=openai"
    assert agreement_main([*args, "--jury-subsets", *FAST, "--families", families, "--out", str(out)]) == 0
    tables = json.loads(out.read_text())
    assert report.main([str(out)]) == 0
    d = tmp_path / "agr_report"
    _, md = check_files({"html": d / "report.html", "md": d / "report.md", "figures": d / "figures"})
    gpt4o = next(e for e in tables["results"] if e["judge"] == "gpt-4o")
    assert f"| gpt-4o | judge | combined10 | {md_kappa(gpt4o)} |" in md and md_kappa(gpt4o).startswith("0.327 ")
    assert "| gemma-2-27b + gemma-2-9b + gpt-4o-mini + llama31-8b | 4 | 0.428 \\[" in md
    # FairEval: Vicuna-13B always answers first, in one order: the confound is named
    pref = section(md, "Bias: candidate preference (self and family)")
    assert "cannot be told apart from a preference for the position" in pref
    rows = table_rows(pref)
    assert next(r for r in rows if r[0] == "llama31-8b" and r[2] == "vicuna-13b")[3] == "own family"
    assert next(r for r in rows if r[0] == "gpt-4o" and r[2] == "gpt-3.5-turbo")[3] == "own family"
    assert next(r for r in rows if r[0] == "gemma-2-9b" and r[2] == "vicuna-13b")[3] == ""  # family not named
    # length: the human rate from the file itself
    human_rate = _human_longer_rate(faireval / "fair_eval.jsonl")
    length = table_rows(section(md, "Bias: length"))
    assert all(r[5].startswith(f"{human_rate:.3f} \\[") for r in length[2:]), length[:3]

    lb = tmp_path / "lb"
    assert leaderboard.main([str(out), "--out", str(lb)]) == 0
    lmd = (lb / "leaderboard.md").read_text()
    ref = tables["uncertainty"]["reference"]
    assert f"vs {md_name(ref)} (margin 0.05)" in lmd and "kappa faireval \\[95% CI\\]" in lmd
    rows_ = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
    assert rows_["gpt-4o"]["dataset"] == "faireval"
    assert (
        rows_["llama31-8b"]["verdict"]
        == next(e for e in tables["results"] if e["judge"] == "llama31-8b")["vs_reference"]["verdict"]
    )
    # --reference gpt-4o recomputes every verdict from the re-read verdicts, as mapo agreement --reference does
    lb2 = tmp_path / "lb2"
    assert leaderboard.main([str(out), "--out", str(lb2), "--reference", "gpt-4o"]) == 0
    out2 = tmp_path / "agr_vs_gpt4o"
    assert agreement_main([*args, *FAST, "--jury-subsets", "--reference", "gpt-4o", "--out", str(out2)]) == 0
    again = json.loads(out2.read_text())
    expected = {e["judge"]: e for e in again["results"]}
    best = again["jury_subsets"][0]["subsets"][0]  # the selected jury, formed again from the re-read labels
    expected[" + ".join(best["members"])] = best
    rows2 = {r["judge"]: r for r in csv.DictReader((lb2 / "leaderboard.csv").read_text().splitlines())}
    assert rows2["gpt-4o"]["verdict"] == "reference"
    for judge, r in rows2.items():
        assert float(r["kappa"]) == pytest.approx(expected[judge]["kappa"], abs=1e-6)  # the CSV keeps 6 decimals
        assert r["verdict"] == expected[judge]["vs_reference"]["verdict"], judge
        if judge != "gpt-4o":
            assert float(r["diff_low"]) == pytest.approx(expected[judge]["vs_reference"]["diff_ci"][0], abs=1e-6)


def _human_longer_rate(path: Path) -> float:
    longer = decisive = 0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        la, lb = len(r["response_a"]), len(r["response_b"])
        if la != lb and r["winner"] in ("model_a", "model_b"):
            decisive += 1
            longer += r["winner"] == ("model_a" if la > lb else "model_b")
    return longer / decisive


# --------------------------------------------------------------------------- build and winrate runs


def test_build_report_shows_pairs_and_dataset_quality(server, tmp_path):  # noqa: F811
    from mapo.metrics.dataset_quality import dataset_quality_of_run

    run = build_run(server, tmp_path)
    paths = report.write_report(run)
    _, md = check_files(paths)
    manifest = json.loads((run / "manifest.json").read_text())
    block = section(md, "Dataset: pairs and quality")
    rows = {r[0]: r[1] for r in table_rows(block)}
    pairs = manifest["pairs"]
    assert rows["DPO pairs written"] == f"{pairs['pairs_written']:,}"
    assert rows["tied comparisons dropped (no pair without a decision)"] == f"{pairs['ties_dropped']:,}"
    assert rows["responses cut by max\\_tokens left out"] == f"{pairs['truncated_excluded']:,}"
    for why, n in pairs["ties_dropped_by_reason"].items():
        assert rows[f"tie dropped: {md_name(why)}"] == f"{n:,}"
    q = dataset_quality_of_run(run)
    assert rows["DPO pairs"] == str(q["items"]["dpo_pairs"])
    share = q["length"]["chosen_longer_share"]
    assert rows["chosen is the longer response"] == ("-" if share is None else f"{100 * share:.1f}%")


def test_winrate_intervals_and_verdicts_where_winrate_json_has_them(server, tmp_path):  # noqa: F811
    wr = winrate_run(server, tmp_path)
    data = json.loads((wr / "winrate.json").read_text())
    cell = data["table"]["gen+rev"]["base1"]
    plain = {k: v for k, v in cell.items() if not k.endswith("_ci")}
    for row in data["table"].values():  # an older winrate.json: no intervals anywhere, said so
        for b, c in row.items():
            row[b] = {k: v for k, v in c.items() if not k.endswith("_ci")}
    data.pop("comparisons", None)
    (wr / "winrate.json").write_text(json.dumps(data))
    _, md = check_files(report.write_report(wr))
    assert "carries no intervals" in md
    assert f"| gen+rev | base1 | {100 * cell['win_rate']:.1f}% | {100 * cell['tie_rate']:.1f}% |" in md
    # with intervals and a comparison against the reference configuration
    data["table"]["gen+rev"]["base1"] = {
        **plain,
        "win_rate_ci": [0.1, 0.9],
        "tie_rate_ci": [0.0, 0.5],
        "win_rate_ties_half_ci": [0.2, 0.8],
    }
    data["comparisons"] = {
        "gen+rev": {
            "base1": {
                "reference": "gen alone",
                "diff": 0.25,
                "diff_ci": [-0.1, 0.6],
                "verdict": "cannot_tell",
                "n_needed": 40,
            }
        },
        "gen alone": {"base1": {"reference": "gen alone", "verdict": "reference"}},
    }
    (wr / "winrate.json").write_text(json.dumps(data))
    _, md = check_files(report.write_report(wr))
    win = md_name(ci(cell["win_rate"], [0.1, 0.9], percent=True))
    assert f"| gen+rev | base1 | {win} |" in md
    assert "| +25.0% \\[-10.0, +60.0\\] | cannot tell (\\~40 items needed) |" in md
    assert "| 0 (reference) | reference |" in md


def test_leaderboard_of_evaluate_runs_has_intervals_verdicts_and_bias_columns(server, tmp_path):  # noqa: F811
    items = items_with_models(tmp_path / "items.jsonl")
    run = evaluate_run(server, tmp_path, "jury", items=items)
    agreement = json.loads((run / "agreement.json").read_text())
    lb = tmp_path / "lb"
    assert leaderboard.main([str(run), "--out", str(lb)]) == 0
    rows = {r["judge"]: r for r in csv.DictReader((lb / "leaderboard.csv").read_text().splitlines())}
    md = (lb / "leaderboard.md").read_text()
    for e in agreement["results"]:
        r = rows[e["judge"]]
        assert float(r["kappa_high"]) == pytest.approx(e["kappa_ci"][1], abs=1e-6)
        assert r["verdict"] == e["vs_reference"]["verdict"]
        assert float(r["first_rate_low"]) == pytest.approx(e["position_bias"]["first_rate_ci"][0], abs=1e-6)
        assert float(r["human_longer_rate"]) == pytest.approx(3 / 7)
        assert md_kappa(e) in md
    header = md.split("## Leaderboard")[1].split("\n| ")[1]
    assert "P(first) \\[95% CI\\]" in header and "length bias \\[95% CI\\]" in header and "vs " in header
    assert "](figures/kappa.png)" in md  # one dataset: kappas with intervals rather than a one-column heatmap
