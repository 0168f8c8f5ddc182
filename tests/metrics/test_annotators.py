"""Several annotators per item: majority labels, inter-annotator agreement (pairwise Cohen, Fleiss)
and the leave-one-out human ceiling, each with its interval; `mapo agreement --humans-columns` on a
three-annotator file (tests/data/files/three_annotators.csv, PandaLM's layout and codes)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from mapo.cli.agreement import main, parse_mapping
from mapo.data.humans import load_local
from mapo.metrics.annotators import human_agreement
from mapo.metrics.uncertainty import Bootstrap
from tests.metrics.test_agreement_cli import FAST, HUMANS, _authors, _humans_jsonl

THREE = Path(__file__).resolve().parents[1] / "data" / "files" / "three_annotators.csv"
CODES = {"1": "model_a", "2": "model_b", "0": "tie"}
COLUMNS = "id=idx,question=instruction,response_a=response1,response_b=response2"
COLUMNS += ",human=annotator1,human=annotator2,human=annotator3"
LABELS = "1=model_a,2=model_b,0=tie"
L = ("model_a", "model_b", "tie")


def _majority(votes):
    top = Counter(votes).most_common()
    best = [v for v, c in top if c == top[0][1]]
    return best[0] if len(best) == 1 else "tie"


def _fleiss(rows):
    """Fleiss' kappa by its textbook formula (independent of the vectorised one)."""
    m = len(rows[0])
    counts = np.array([[sum(v == c for v in r) for c in L] for r in rows], dtype=float)
    p_i = ((counts**2).sum(axis=1) - m) / (m * (m - 1))
    p_c = counts.sum(axis=0) / (len(rows) * m)
    return (p_i.mean() - (p_c**2).sum()) / (1 - (p_c**2).sum())


def test_repeated_human_column_reads_several_annotators_and_other_keys_may_not_repeat():
    assert parse_mapping("human=a1,human=a2,id=x", "--humans-columns", repeatable=("human",)) == {
        "human": ["a1", "a2"],
        "id": "x",
    }
    with pytest.raises(ValueError, match="id is given twice"):
        parse_mapping("id=a,id=b", "--humans-columns", repeatable=("human",))
    with pytest.raises(ValueError, match="human is given twice"):
        parse_mapping("human=a,human=b", "--humans-labels")  # no silent "last one wins"


def test_majority_of_three_annotators_with_the_split_rule():
    cols = {"id": "idx", "human": ["annotator1", "annotator2", "annotator3"]}
    rows = load_local(THREE, columns=cols, labels=CODES, need_text=False)
    assert [r["human"] for r in rows] == HUMANS  # item 2 is 0-1-2: a split, so a tie
    assert rows[2]["annotators"] == {"annotator1": "tie", "annotator2": "model_a", "annotator3": "model_b"}
    assert rows[0]["annotators"]["annotator3"] == "model_b" and rows[0]["human"] == "model_a"


def test_human_agreement_matches_textbook_formulas_and_has_intervals():
    rng = np.random.default_rng(5)
    truth = rng.choice(L, 150)
    ann = [[t if rng.random() < 0.7 else str(rng.choice(L)) for _ in range(3)] for t in truth]
    judge = [t if rng.random() < 0.55 else str(rng.choice(L)) for t in truth]
    judge[0] = None  # a failed judgement is left out, not a tie
    r = human_agreement(ann, ["a", "b", "c"], {"j": judge}, settings=Bootstrap(n_resamples=1000))
    a = np.array(ann)
    for p, (i, k) in zip(r["pairwise"], itertools.combinations(range(3), 2), strict=True):
        assert p["kappa"] == pytest.approx(cohen_kappa_score(a[:, i], a[:, k]))
        assert p["kappa_ci"][0] < p["kappa"] < p["kappa_ci"][1]
    assert r["fleiss"]["kappa"] == pytest.approx(_fleiss(ann))
    assert r["fleiss"]["kappa_ci"][0] < r["fleiss"]["kappa"] < r["fleiss"]["kappa_ci"][1]
    loo = []
    jloo = []
    for k in range(3):
        others = [_majority([row[x] for x in range(3) if x != k]) for row in ann]
        loo.append(cohen_kappa_score(a[:, k], others))
        kept = [(j, o) for j, o in zip(judge, others, strict=True) if j is not None]
        jloo.append(cohen_kappa_score([j for j, _ in kept], [o for _, o in kept]))
    assert r["ceiling"]["kappa"] == pytest.approx(np.mean(loo))
    assert [x["kappa"] for x in r["ceiling"]["per_annotator"]] == pytest.approx(loo)
    assert r["judges"]["j"]["kappa"] == pytest.approx(np.mean(jloo))
    lo, hi = r["ceiling"]["kappa_ci"]
    assert lo < r["ceiling"]["kappa"] < hi and hi - lo < 0.3
    # each annotator as a separate human: the judge against each one alone, and one human against another
    each = r["judges"]["j"]["each"]
    alone = []
    for k, name in enumerate("abc"):
        kept = [(j, row[k]) for j, row in zip(judge, ann, strict=True) if j is not None]
        alone.append(cohen_kappa_score([j for j, _ in kept], [x for _, x in kept]))
        assert each["per_annotator"][name]["kappa"] == pytest.approx(alone[-1])
        lo, hi = each["per_annotator"][name]["kappa_ci"]
        assert lo < alone[-1] < hi
    assert each["kappa"] == pytest.approx(np.mean(alone))
    pair_mean = np.mean([p["kappa"] for p in r["pairwise"]])
    assert r["each_annotator"]["human"]["kappa"] == pytest.approx(pair_mean)
    lo, hi = r["each_annotator"]["human"]["kappa_ci"]
    assert lo < pair_mean < hi


def test_mapo_agreement_on_a_three_annotator_file(tmp_path, capsys):
    """Majority kappas (as if the majority were one column), the human ceiling with intervals, and
    every evaluator's leave-one-out kappa beside it, in JSON and in the printed table."""
    root = _authors(tmp_path / "authors")
    out = tmp_path / "multi.json"
    argv = ["--authors", str(root), "--humans", str(THREE), "--out", str(out), *FAST]
    assert main([*argv, "--humans-columns", COLUMNS, "--humans-labels", LABELS]) == 0
    printed = capsys.readouterr().out
    multi = json.loads(out.read_text())
    single = tmp_path / "single.json"
    humans = _humans_jsonl(tmp_path / "h.jsonl")
    assert main(["--authors", str(root), "--humans", str(humans), "--out", str(single), *FAST]) == 0
    one = json.loads(single.read_text())
    assert [e["kappa"] for e in multi["results"]] == [e["kappa"] for e in one["results"]]
    h = multi["human_agreement"]
    assert h["annotators"] == ["annotator1", "annotator2", "annotator3"] and h["n_items"] == 6
    assert "split" in h["majority_rule"] and len(h["pairwise"]) == 3
    assert all(len(x["kappa_ci"]) == 2 for x in [*h["pairwise"], h["fleiss"], h["ceiling"]])
    assert all("loo_kappa" in e and len(e["loo_kappa_ci"]) == 2 for e in multi["results"])
    assert multi["humans_spec"]["columns"]["human"] == ["annotator1", "annotator2", "annotator3"]
    assert "human ceiling (each of 3 annotators vs the majority of the others, mean)" in printed
    assert f"{h['ceiling']['kappa']:.3f}" in printed
    assert "human_agreement" not in one  # one label column: no ceiling to report
    # each annotator as a separate human, beside the majority kappas
    codes = {"1": "model_a", "2": "model_b", "0": "tie"}
    import csv

    rows = list(csv.DictReader(THREE.open()))
    for e in multi["results"]:
        per = e["per_annotator_kappa"]
        assert set(per) == {"annotator1", "annotator2", "annotator3"}
        assert e["each_annotator_kappa"] == pytest.approx(np.nanmean([x["kappa"] for x in per.values()]))
        assert all(len(x["kappa_ci"]) == 2 for x in per.values())
    gpt = next(e for e in multi["results"] if e["judge"] == "gpt-4o")
    # gpt-4o's labels are HUMANS (test_agreement_cli); against annotator3 alone:
    a3 = [codes[r["annotator3"]] for r in rows]
    assert gpt["per_annotator_kappa"]["annotator3"]["kappa"] == pytest.approx(cohen_kappa_score(HUMANS, a3))
    assert "each annotator as a separate human" in printed and f"{gpt['each_annotator_kappa']:.3f}" in printed
