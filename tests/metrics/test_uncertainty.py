"""Bootstrap intervals and paired comparisons: exact points, seeded intervals, verdicts, and a
simulation that checks the paired test's power and false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from mapo.metrics.agreement import cohen_kappa
from mapo.metrics.uncertainty import (
    MARGIN,
    N_RESAMPLES,
    Bootstrap,
    bootstrap,
    compare_kappas,
    compare_winrates,
    kappa_intervals,
    label_codes,
    ratio_intervals,
    stats_options,
    verdict,
    winrate_comparisons,
    winrate_intervals,
)

A, B, T = "model_a", "model_b", "tie"
LABELS = [A, B, T]
FAST = Bootstrap(n_resamples=2000, seed=1)


def _judge(human, p_right, rng, p_fail=0.0):
    """A judge that gives the human label with probability p_right, else another label."""
    out = []
    for h in human:
        if rng.random() < p_fail:
            out.append(None)
        elif rng.random() < p_right:
            out.append(h)
        else:
            out.append(rng.choice([x for x in LABELS if x != h]))
    return out


def test_points_are_sklearns_kappa_and_accuracy():
    rng = np.random.default_rng(0)
    human = list(rng.choice(LABELS, 120))
    judges = [_judge(human, p, rng, p_fail=0.1) for p in (0.5, 0.7, 0.9)]
    r = kappa_intervals(judges, human, reference=0, settings=FAST)
    for i, j in enumerate(judges):
        exact = cohen_kappa(j, human)
        assert r["kappa"][i] == pytest.approx(exact.kappa, abs=1e-12)
        assert r["accuracy"][i] == pytest.approx(exact.accuracy, abs=1e-12)
        assert r["kappa_low"][i] < r["kappa"][i] < r["kappa_high"][i]
        assert r["diff"][i] == pytest.approx(exact.kappa - r["kappa"][0], abs=1e-12)
    assert r["diff"][0] == 0 and r["diff_low"][0] == r["diff_high"][0] == 0


def test_seeded_and_paired():
    rng = np.random.default_rng(1)
    human = list(rng.choice(LABELS, 80))
    j = _judge(human, 0.6, rng)
    a = kappa_intervals([j], human, settings=FAST)
    b = kappa_intervals([j], human, settings=FAST)
    assert a["kappa_low"][0] == b["kappa_low"][0] and a["kappa_high"][0] == b["kappa_high"][0]
    c = kappa_intervals([j], human, settings=Bootstrap(n_resamples=2000, seed=2))
    assert c["kappa_low"][0] != a["kappa_low"][0]
    # one evaluator alone or among many: the same resamples (groups share the seed), the same interval
    many = kappa_intervals([_judge(human, 0.5, rng) for _ in range(40)] + [j], human, settings=FAST)
    assert many["kappa_low"][-1] == a["kappa_low"][0] and many["kappa_high"][-1] == a["kappa_high"][0]
    # a judge compared with itself: the paired difference is exactly 0 in every resample
    cmp = compare_kappas(j, j, human, settings=FAST)
    assert (cmp.diff, cmp.low, cmp.high, cmp.verdict) == (0.0, 0.0, 0.0, "not_worse")


def test_interval_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (100, 1600):
        human = list(rng.choice(LABELS, n))
        r = kappa_intervals([_judge(human, 0.6, rng)], human, settings=FAST)
        widths[n] = r["kappa_high"][0] - r["kappa_low"][0]
    assert widths[100] / widths[1600] == pytest.approx(4, rel=0.25)


def test_undefined_resamples_are_left_out_not_nan():
    human = [A, A, A, A, B]
    judge = [A, A, A, A, B]  # many resamples hold only A on both sides: kappa undefined there
    r = kappa_intervals([judge], human, settings=FAST)
    assert r["kappa"][0] == pytest.approx(1.0) and r["kappa_low"][0] == pytest.approx(1.0)
    all_undefined = kappa_intervals([[A, A]], [A, A], settings=FAST)
    assert np.isnan(all_undefined["kappa"][0]) and np.isnan(all_undefined["kappa_low"][0])


def test_label_codes_and_settings():
    assert label_codes([A, None, T, B]).tolist() == [0, -1, 2, 1]
    with pytest.raises(ValueError, match="'win' is not a label"):
        label_codes(["win"])
    with pytest.raises(ValueError, match="confidence"):
        Bootstrap(confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        Bootstrap(n_resamples=0)
    assert stats_options(object())["n_resamples"] == N_RESAMPLES

    class Stats:
        n_resamples, seed, margin = 500, 7, 0.1

    class Cfg:
        stats = Stats()

    o = stats_options(Cfg())
    assert (o["n_resamples"], o["seed"], o["margin"], o["reference"]) == (500, 7, 0.1, None)


@pytest.mark.parametrize(
    "d,lo,hi,expected",
    [
        (0.02, -0.03, 0.07, ("not_worse", None)),
        (0.30, 0.10, 0.50, ("better", None)),  # resolved above 0
        (-0.02, -0.04, -0.005, ("lower_within_margin", None)),  # resolved below 0, above -margin
        (-0.074, -0.111, -0.038, ("lower", 181)),  # below 0, margin not excluded: ~ 80 * (0.036 / 0.024)^2
        (-0.25, -0.35, -0.15, ("worse", None)),
        (-0.05, -0.15, 0.05, ("cannot_tell", None)),  # the estimate sits on the boundary
        (0.06, -0.09, 0.21, ("cannot_tell", 149)),  # 80 * (0.15 / 0.11)^2
        (-0.12, -0.26, 0.02, ("cannot_tell", 320)),  # the upper end must fall below -0.05: 80 * (0.14 / 0.07)^2
        (None, None, None, ("cannot_tell", None)),
    ],
)
def test_verdicts(d, lo, hi, expected):
    assert verdict(d, lo, hi, 80, MARGIN) == expected


def test_cannot_tell_n_needed_is_where_the_interval_would_clear_the_margin():
    v, need = verdict(0.06, -0.09, 0.21, 80)
    half = 0.15 * np.sqrt(80 / need)  # the lower half-width at n_needed
    assert v == "cannot_tell" and 0.06 - half > -MARGIN
    assert 0.06 - 0.15 * np.sqrt(80 / (need - 1)) <= -MARGIN


def test_simulation_paired_kappa_difference_power_and_false_positives():
    """A planted kappa difference of 0.2 at n=500 is found; a null difference is called
    significant in no more than ~5% of simulations (seeded; few simulations, modest resamples)."""
    rng = np.random.default_rng(20240816)
    settings = Bootstrap(n_resamples=1000, seed=3)
    n = 500
    # uniform classes: kappa = (p - 1/3) / (2/3); p = 0.733 -> 0.6, p = 0.6 -> 0.4
    detected = 0
    for _ in range(10):
        human = list(rng.choice(LABELS, n))
        good, weak = _judge(human, 0.7333, rng), _judge(human, 0.6, rng)
        c = compare_kappas(weak, good, human, settings=settings)
        assert c.diff == pytest.approx(-0.2, abs=0.1)
        detected += c.significant and c.high is not None and c.high < 0
        assert c.verdict in ("worse", "lower", "cannot_tell")
    assert detected == 10
    false_positive = 0
    sims = 60
    for _ in range(sims):
        human = list(rng.choice(LABELS, n))
        a, b = _judge(human, 0.6, rng), _judge(human, 0.6, rng)
        false_positive += compare_kappas(a, b, human, settings=settings).significant
    assert false_positive / sims <= 0.10  # nominal 5%; 60 simulations leave room for chance
    # and non-inferiority: equal judges at n=500 are not called worse by more than the margin
    assert compare_kappas(a, b, human, settings=settings).verdict != "worse"


# --------------------------------------------------------------------------- rates and win rates


def test_ratio_intervals_and_paired_difference():
    num = np.array([[1, 0, 1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0]])
    den = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    r = ratio_intervals(num, den, diffs=[(0, 1)], settings=FAST)
    assert r["rate"].tolist() == pytest.approx([5 / 7, 3 / 8])
    assert r["diff"][0] == pytest.approx(5 / 7 - 3 / 8)
    assert r["rate_low"][0] < 5 / 7 < r["rate_high"][0]
    with pytest.raises(ValueError, match="differ in shape"):
        ratio_intervals(num, den[:, :3])


def _winrate_records(config, baseline, outcomes):
    return [
        {"configuration": config, "baseline": baseline, "prompt_id": str(i), "outcome": o}
        for i, o in enumerate(outcomes)
    ]


def test_winrate_intervals_match_tally_cells():
    rng = np.random.default_rng(4)
    outcomes = list(rng.choice(["win", "loss", "tie", "failed"], 200, p=[0.5, 0.3, 0.15, 0.05]))
    recs = _winrate_records("llama+gemma", "gpt-4o", outcomes)
    cell = winrate_intervals(recs, settings=FAST)["llama+gemma"]["gpt-4o"]
    judged = [o for o in outcomes if o != "failed"]
    win = judged.count("win") / len(judged)
    lo, hi = cell["win_rate_ci"]
    assert lo < win < hi and hi - lo < 0.2
    half = (judged.count("win") + judged.count("tie") / 2) / len(judged)
    assert cell["win_rate_ties_half_ci"][0] < half < cell["win_rate_ties_half_ci"][1]
    assert set(cell) == {"win_rate_ci", "tie_rate_ci", "win_rate_ties_half_ci"}


def test_compare_winrates_paired_by_prompt():
    rng = np.random.default_rng(5)
    n = 400
    strong = list(rng.choice(["win", "loss"], n, p=[0.7, 0.3]))
    weak = list(rng.choice(["win", "loss"], n, p=[0.4, 0.6]))
    same = list(strong)
    recs = (
        _winrate_records("strong", "gpt-4o", strong)
        + _winrate_records("weak", "gpt-4o", weak)
        + _winrate_records("same", "gpt-4o", same)
    )
    (weak_vs,) = compare_winrates(recs, "weak", "strong", settings=FAST).values()
    assert weak_vs.diff == pytest.approx(weak.count("win") / n - strong.count("win") / n)
    assert weak_vs.verdict == "worse" and weak_vs.n == n
    (same_vs,) = compare_winrates(recs, "same", "strong", settings=FAST).values()
    assert same_vs.verdict == "not_worse" and same_vs.diff == 0
    best = winrate_comparisons(recs, settings=FAST)  # reference: the best mean win rate (same = strong)
    assert best["same"]["gpt-4o"]["verdict"] == "reference"
    table = winrate_comparisons(recs, "strong", settings=FAST)
    assert table["strong"]["gpt-4o"]["verdict"] == "reference"
    assert table["weak"]["gpt-4o"]["verdict"] == "worse"
    assert "worse than strong" in table["weak"]["gpt-4o"]["text"]
    with pytest.raises(ValueError, match="known: same, strong, weak"):
        compare_winrates(recs, "nope", "strong")


def test_resolved_below_zero_but_margin_not_excluded_has_its_own_words():
    """GPT-4o-mini vs GPT-4o on PandaLM's 999 items: -0.074 [-0.111, -0.038]. The margin rule alone
    says "cannot tell"; the interval says it is significantly lower, and the words say both."""
    from mapo.metrics.uncertainty import PairedComparison, verdict_words

    v, need = verdict(-0.074, -0.111, -0.038, 999, 0.05)
    assert v == "lower" and need is not None and need > 999
    text = PairedComparison("gpt-4o-mini", "gpt-4o", "kappa", -0.074, -0.111, -0.038, 999, 0.05, v, need).text
    assert text.startswith("significantly lower than gpt-4o; whether by more than 0.05 cannot be told with 999 items")
    assert "needed" in text and "cannot tell" not in verdict_words(v, need).split(";")[0]
    assert verdict_words(v, need) == f"significantly lower (margin not excluded; ~{need:,} items needed)"
    assert verdict_words("lower_within_margin") == "significantly lower, within the margin"
    assert verdict_words("better") == "better"


def test_one_item_has_a_point_and_no_interval():
    """scipy refuses a bootstrap of one observation (it raised through mapo report as a traceback)."""
    point, low, high = bootstrap(1, lambda w: np.stack([w.sum(axis=1)]))
    assert point.tolist() == [1.0] and np.isnan(low).all() and np.isnan(high).all()
