"""judge.scoring=expected on real vLLM-CPU answers (issue 14, item 2).

vLLM returns the top logprobs together with a structured-output (constrained) answer; the judge
locates the score (or pick) tokens in them and weighs the verdict. These tests run the real CLI
(`mapo evaluate` on the demo pairs shipped in the repository) against the embedded servers and
check every record: the answer was constrained, its distribution was kept, the weighted verdict
is the one that distribution gives (:func:`mapo.judging.scoring.rescore_attempt`), and both
scorings are recomputed from the stored record alone: the written one by re-parsing the raw text
(:func:`mapo.runs.reparse.reparse_attempt`), the weighted one from the kept logprobs.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from mapo.core.parsers import constrained_regex, text_budget
from mapo.core.types import pick_to_label
from mapo.judging.judge import STRATEGIES
from mapo.judging.scoring import pick_probabilities, value_probabilities
from mapo.runs.reparse import reparse_attempt, reparse_run
from tests.conftest import REPO

pytestmark = pytest.mark.vllm

MAX_TOKENS = 128


def _evaluate(registry, run_dir, cache, *extra):
    cmd = [
        sys.executable,
        "-m",
        "mapo",
        "evaluate",
        f"client.registry={registry}",
        f"client.cache_path={cache}",
        f"hydra.run.dir={run_dir}",
        f"models.smollm2-135m.generation.max_tokens={MAX_TOKENS}",
        "eval_data=demo",
        "eval_data.limit=2",
        "judge.scoring=expected",
        "judge.both_orders=true",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return [json.loads(x) for x in (run_dir / "judgements.jsonl").read_text().splitlines()]


def _attempt(rec):
    (attempt,) = rec["detail"]["attempts"]  # evaluate judges one order per record
    return attempt


@pytest.mark.parametrize(
    "judge, explain, kind, values",
    [
        ("combined10", True, "score_pair", ["score_a", "score_b"]),
        ("direct", False, "pick", ["pick"]),
    ],
)
def test_expected_scoring_on_real_vllm_answers(embedded_registry, tmp_path, judge, explain, kind, values):
    run = tmp_path / judge
    recs = _evaluate(
        embedded_registry, run, tmp_path / "c.sqlite", f"judge={judge}", f"judge.explain={str(explain).lower()}"
    )
    assert len(recs) == 4 and {r["order"] for r in recs} == {"AB", "BA"}
    regex = constrained_regex(kind, 10, text_chars=text_budget(MAX_TOKENS), explain=explain)
    for rec in recs:
        assert rec["setup"] == ("combined10+expected" if explain else "direct+expected+score_only")
        assert rec["failure"] is None, rec
        attempt = _attempt(rec)
        # the answer was constrained AND came with logprobs: the judge weighed it
        assert re.fullmatch(regex, attempt["raw"][-1]), attempt["raw"][-1]
        assert attempt["scoring"] == "expected", attempt
        dists = attempt["logprobs"]
        assert [d["value"] for d in dists] == values
        for d in dists:
            assert d["token"] in d["top"]  # the emitted token is among the alternatives kept
            assert sum(math.exp(lp) for lp in d["top"].values()) <= 1 + 1e-6  # a real distribution
        # the stored verdict is the one the stored distribution gives
        again = STRATEGIES.get(rec["strategy"]).rescore(attempt, rec["scale"])
        assert again is not None and again.pick == attempt["verdict"]["pick"] == rec["pick"]
        written = attempt["argmax"]
        if kind == "score_pair":
            ea, eb = (sum(v * p for v, p in value_probabilities(d, 10).items()) for d in dists)
            assert 0 <= ea <= 10 and 0 <= eb <= 10
            assert (again.score_a, again.score_b) == (pytest.approx(ea), pytest.approx(eb))
            assert (attempt["verdict"]["score_a"], attempt["verdict"]["score_b"]) == (
                pytest.approx(ea),
                pytest.approx(eb),
            )
            # the record is in dataset terms: a BA record's scores are swapped back
            sa, sb = (eb, ea) if rec["order"] == "BA" else (ea, eb)
            assert (rec["score_a"], rec["score_b"]) == (pytest.approx(sa), pytest.approx(sb))
            # the written scores are the digits of the emitted tokens (a weighted 9.3 was written 9 or 10)
            for d, w in zip(dists, (written["score_a"], written["score_b"]), strict=True):
                digits = re.match(r"\d+", d["token"][len(d["prefix"]) :])
                assert digits and str(int(w)).startswith(digits.group()), (d, w)
        else:
            p = pick_probabilities(dists[0])
            assert sum(p.values()) == pytest.approx(1.0)
            expected_pick = "A" if p["A"] > p["B"] else "B" if p["B"] > p["A"] else "tie"
            assert again.pick == expected_pick
            assert written["pick"] in ("A", "B", "tie")
        assert again.pick is not None
        assert rec["label"] == pick_to_label(again.pick, swapped=rec["order"] == "BA")


def test_both_scorings_are_recomputed_from_the_stored_records(embedded_registry, tmp_path):
    run = tmp_path / "combined"
    recs = _evaluate(embedded_registry, run, tmp_path / "c.sqlite", "judge=combined10")
    # read back from disk, as `mapo reparse` would: no model call from here on
    for rec in recs:
        attempt = _attempt(rec)
        argmax, how_a = STRATEGIES.get(rec["strategy"]).stored_verdict(attempt, rec["scale"], "argmax")
        expected, how_e = STRATEGIES.get(rec["strategy"]).stored_verdict(attempt, rec["scale"], "expected")
        assert (how_a, how_e) == ("argmax", "expected")
        # argmax: re-parsing the raw text gives the written verdict the record kept
        reparsed, note = reparse_attempt(attempt, rec["strategy"], rec["scale"])
        assert note is None
        assert (reparsed["pick"], reparsed["score_a"], reparsed["score_b"]) == (
            argmax.pick,
            argmax.score_a,
            argmax.score_b,
        )
        assert (argmax.score_a, argmax.score_b) == (attempt["argmax"]["score_a"], attempt["argmax"]["score_b"])
        assert argmax.score_a is not None and argmax.score_b is not None
        assert argmax.score_a.is_integer() and argmax.score_b.is_integer()
        # expected: the kept distributions give the verdict the record holds
        assert (expected.pick, expected.score_a, expected.score_b) == (
            attempt["verdict"]["pick"],
            pytest.approx(attempt["verdict"]["score_a"]),
            pytest.approx(attempt["verdict"]["score_b"]),
        )
        assert expected.score_a is not None and expected.score_b is not None
        assert 0 <= expected.score_a <= 10 and 0 <= expected.score_b <= 10
    # `mapo reparse` over the run must keep the run's scoring: nothing changes without a model call
    summary = reparse_run(run)["judgements.jsonl"]
    assert summary["scores_changed"] == 0 and summary["changed"] == 0, summary
