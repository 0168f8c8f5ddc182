"""``mapo agreement`` as a new user runs it: on small fixture folders in the authors' published
layout, on other human-label files, and on the real FairEval outputs (kappas exact, with intervals)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mapo.cli.agreement import main, parse_mapping, run_tables
from mapo.metrics.recompute import authors_tables

SHARED = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
FAIREVAL = SHARED / "data" / "faireval"
FAST = ["--n-resamples", "500"]

ANSWER = "### Evaluation Evidence:\nx\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"
# (score_1, score_2) per item for three judges; humans below
SCORES = {
    "gpt-4o": [(8, 6), (5, 7), (6, 6), (9, 4), (3, 8), (7, 7)],
    "gemma-2-9b-it": [(8, 7), (6, 7), (7, 6), (8, 5), (4, 6), (6, 7)],
    "Meta-Llama-3.1-8B-Instruct-Turbo": [(9, 8), (8, 7), (7, 8), (6, 7), (5, 7), (-1, -1)],
}
HUMANS = ["model_a", "model_b", "tie", "model_a", "model_b", "tie"]


def _authors(root: Path, strategies=("multi-rater10",)) -> Path:
    for strategy in strategies:
        folder = root / strategy
        folder.mkdir(parents=True)
        for model, scores in SCORES.items():
            recs = [
                {
                    "response": ANSWER.format(a=a, b=b) if a >= 0 else "I cannot score these.",
                    "score_1": float(a),
                    "score_2": float(b),
                    "turns_to_answer": 1 if a >= 0 else 3,
                }
                for a, b in scores
            ]
            (folder / f"{model}_none.json").write_text(json.dumps(recs))
    return root


def _humans_jsonl(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"id": i, "winner": h}) for i, h in enumerate(HUMANS)))
    return path


def test_parse_mapping():
    assert parse_mapping("id=idx, human=label", "--humans-columns") == {"id": "idx", "human": "label"}
    assert parse_mapping(None, "x") == {}
    with pytest.raises(ValueError, match="--humans-columns: 'idx' is not KEY=VALUE"):
        parse_mapping("idx", "--humans-columns")


def test_strategy_all_skips_absent_folders_with_a_note(tmp_path, capsys):
    root = _authors(tmp_path / "authors")  # no debate/, judge/, ... folders
    humans = _humans_jsonl(tmp_path / "labels.jsonl")
    out = tmp_path / "a.json"
    assert main(["--authors", str(root), "--humans", str(humans), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "note: skipped absent strategy folders" in printed and "debate" in printed
    tables = json.loads(out.read_text())
    assert tables["strategies"] == ["multi-rater10"] and len(tables["results"]) == 3
    assert any("debate" in n for n in tables["notes"])
    # a strategy named explicitly and absent is an error naming what is there
    assert main(["--authors", str(root), "--humans", str(humans), "--strategy", "debate", *FAST]) == 2
    assert "no debate folder (present: multi-rater10)" in capsys.readouterr().err


def test_every_kappa_has_an_interval_and_a_verdict(tmp_path, capsys):
    root = _authors(tmp_path / "authors")
    humans = _humans_jsonl(tmp_path / "labels.jsonl")
    out = tmp_path / "a.json"
    rc = main(["--authors", str(root), "--humans", str(humans), "--jury-subsets", "--out", str(out), *FAST])
    assert rc == 0
    tables = json.loads(out.read_text())
    entries = tables["results"] + tables["jury_subsets"][0]["subsets"]
    assert len(entries) == 3 + 4
    for e in entries:
        lo, hi = e["kappa_ci"]
        assert lo <= e["kappa"] <= hi and e["accuracy_ci"][0] <= e["accuracy"] <= e["accuracy_ci"][1]
        assert e["vs_reference"]["verdict"] in ("reference", "not_worse", "worse", "cannot_tell")
    u = tables["uncertainty"]
    assert (u["n_resamples"], u["seed"], u["confidence"], u["n_items"]) == (500, 0, 0.95, 6)
    assert u["reference"] == max(tables["results"], key=lambda e: e["kappa"])["judge"]
    printed = capsys.readouterr().out
    assert "kappa [95% CI]" in printed and "[low, high]: 95% percentile bootstrap over items" in printed
    # a named reference, and an unknown one
    assert (
        main(["--authors", str(root), "--humans", str(humans), "--reference", "gpt-4o", "--out", str(out), *FAST]) == 0
    )
    assert json.loads(out.read_text())["uncertainty"]["reference"] == "gpt-4o"
    assert main(["--authors", str(root), "--humans", str(humans), "--reference", "gpt-5", *FAST]) == 2
    assert "reference 'gpt-5' is not in the table" in capsys.readouterr().err


def test_more_hint_names_the_file_written(tmp_path, capsys):
    root = _authors(tmp_path / "authors")
    humans = _humans_jsonl(tmp_path / "labels.jsonl")
    out = tmp_path / "elsewhere.json"
    argv = ["--authors", str(root), "--humans", str(humans), "--jury-subsets", "--top", "1", "--out", str(out)]
    assert main(argv + FAST) == 0
    printed = capsys.readouterr().out
    assert f"... 3 more in {out}" in printed and "agreement.json" not in printed


def test_recorded_counts_the_authors_minus_one_as_their_parse_failures(tmp_path, capsys):
    root = _authors(tmp_path / "authors")
    humans = _humans_jsonl(tmp_path / "labels.jsonl")
    out = tmp_path / "a.json"
    assert main(["--authors", str(root), "--humans", str(humans), "--recorded", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "note: --recorded: 1 records hold the authors' parse failures" in printed
    llama = next(e for e in json.loads(out.read_text())["results"] if e["judge"] == "llama31-8b")
    # as in the paper, -1 vs -1 is compared like scores (a tie) and counted
    assert (llama["authors_parse_failures"], llama["n"], llama["n_failed"]) == (1, 6, 0)
    # mapo's re-parse: the unreadable answer is a failure, left out of the kappa
    assert main(["--authors", str(root), "--humans", str(humans), "--out", str(out), *FAST]) == 0
    llama = next(e for e in json.loads(out.read_text())["results"] if e["judge"] == "llama31-8b")
    assert (llama["n"], llama["n_failed"]) == (5, 1)


def test_other_human_label_files_column_mapping_and_wording(tmp_path, capsys):
    """A CSV with other column names and label values; non-text response fields do not refuse it;
    errors name the file given, not FairEval."""
    root = _authors(tmp_path / "authors")
    codes = {"model_a": 1, "model_b": 2, "tie": 0}
    csv = tmp_path / "pandalm_like.csv"
    csv.write_text("idx,label,response1\n" + "".join(f"{i},{codes[h]},{i * 7}\n" for i, h in enumerate(HUMANS)))
    out = tmp_path / "a.json"
    argv = ["--authors", str(root), "--humans", str(csv), "--out", str(out), *FAST]
    assert main([*argv, "--humans-columns", "id=idx,human=label", "--humans-labels", "1=model_a,2=model_b,0=tie"]) == 0
    assert json.loads(out.read_text())["humans"] == str(csv)
    capsys.readouterr()
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"id": 0, "winner": "tie", "response_a": ["not", "text"]}))
    assert main(["--authors", str(root), "--humans", str(short), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"have no item with that id in {short}" in err and "FairEval" not in err
    assert main(["--authors", str(root), "--humans", str(csv), *FAST]) == 2  # no mapping: winner column missing
    assert "missing column 'winner'" in capsys.readouterr().err
    assert main(["--authors", str(root), "--humans", str(csv), "--humans-labels", "1=first", *FAST]) == 2
    assert "'first' is not a label" in capsys.readouterr().err


def test_help_does_not_say_faireval_for_any_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "FairEval JSONL" not in help_text
    assert "default: the shared FairEval copy" in help_text  # FairEval named only as the default


def test_run_tables_carry_intervals(tmp_path):
    recs = []
    for i, h in enumerate(HUMANS):
        for judge, scores in (("j1", SCORES["gpt-4o"]), ("j2", SCORES["gemma-2-9b-it"])):
            a, b = scores[i]
            label = "model_a" if a > b else "model_b" if b > a else "tie"
            recs.append(
                {"item_id": str(i), "kind": "judge", "judge": judge, "setup": "combined10", "order": "AB"}
                | {"label": label, "pick": None, "human": h, "score_a": a, "score_b": b, "member_of": None}
            )
    f = tmp_path / "judgements.jsonl"
    f.write_text("\n".join(map(json.dumps, recs)))
    t = run_tables([str(f)], subsets=True, n_resamples=300)
    assert all(len(e["kappa_ci"]) == 2 for e in t["results"])
    (subset,) = t["jury_subsets"][0]["subsets"]
    assert subset["members"] == ["j1", "j2"] and subset["kappa_ci"][0] is not None
    assert "_labels" not in json.dumps(t)


# --------------------------------------------------------------------------- the real FairEval outputs


@pytest.fixture(scope="module")
def faireval_tables():
    if not (FAIREVAL / "fair_eval.jsonl").is_file() or not (FAIREVAL / "mapo-judgments").is_dir():
        pytest.skip(f"FairEval and the authors' outputs are not under {FAIREVAL} (set MAPO_SHARED)")
    return authors_tables(
        FAIREVAL / "mapo-judgments",
        FAIREVAL / "fair_eval.jsonl",
        subsets=True,
        reference="gpt-4o",
        n_resamples=2000,
    )


def test_faireval_kappas_stay_exact_with_intervals(faireval_tables):
    kappa = {e["judge"]: e for e in faireval_tables["results"]}
    for judge, published in {"gpt-4o": 0.3265, "gemma-2-27b": 0.3886, "llama31-8b": 0.2063}.items():
        assert round(kappa[judge]["kappa"], 4) == published
    assert round(kappa["debate[gpt-4o]"]["kappa"], 4) == 0.4043
    best = faireval_tables["jury_subsets"][0]["subsets"][0]
    assert round(best["kappa"], 4) == 0.4283
    assert best["members"] == ["gemma-2-27b", "gemma-2-9b", "gpt-4o-mini", "llama31-8b"]
    for e in [*faireval_tables["results"], *faireval_tables["jury_subsets"][0]["subsets"]]:
        lo, hi = e["kappa_ci"]
        assert lo < e["kappa"] < hi and 0.2 < hi - lo < 0.4  # ~ +/-0.15 on 80 items
    assert all(e["authors_parse_failures"] == 0 for e in faireval_tables["results"])


def test_faireval_gemma_27b_lead_over_gpt4o_is_within_noise(faireval_tables):
    """The paper ranks Gemma-2-27B (0.389) above GPT-4o (0.327); on 80 items the paired
    interval of the difference contains 0."""
    gemma = next(e for e in faireval_tables["results"] if e["judge"] == "gemma-2-27b")["vs_reference"]
    assert gemma["reference"] == "gpt-4o" and gemma["diff"] == pytest.approx(0.0621, abs=1e-4)
    assert gemma["diff_ci"][0] < 0 < gemma["diff_ci"][1] and not gemma["significant"]
    llama = next(e for e in faireval_tables["results"] if e["judge"] == "llama31-8b")["vs_reference"]
    assert llama["diff_ci"][1] < 0  # the weakest judge is detectably below GPT-4o


def test_faireval_default_reference_is_a_best_of_with_the_readme_correction():
    """Without --reference the reference is the best of the 12 evaluators that were run, chosen on the same 80
    items: debate GPT-4o, 0.404 as chosen, selection-corrected 0.322 [0.132, 0.516] (README)."""
    if not (FAIREVAL / "fair_eval.jsonl").is_file() or not (FAIREVAL / "mapo-judgments").is_dir():
        pytest.skip(f"FairEval and the authors' outputs are not under {FAIREVAL} (set MAPO_SHARED)")
    t = authors_tables(FAIREVAL / "mapo-judgments", FAIREVAL / "fair_eval.jsonl", n_resamples=2000)
    u = t["uncertainty"]
    c = u["reference_choice"]
    assert u["reference"] == "debate[gpt-4o]" and c["n_candidates"] == 12
    assert round(c["optimistic"], 3) == 0.404 and round(c["corrected"], 3) == 0.322
    assert [round(x, 3) for x in c["corrected_ci"]] == [0.132, 0.516] and round(c["chosen_share"], 2) == 0.40
