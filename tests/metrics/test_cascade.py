"""The judge cascade's logic (mapo.metrics.cascade) on a fixture, and its replay on the authors'
recorded FairEval outputs (skipped without ../shared/data)."""

from __future__ import annotations

import pytest

from mapo.data.importers import default_root
from mapo.metrics.cascade import CascadeRule, CheapVerdict, cascade_curve, escalation_order, replay_authors
from mapo.metrics.uncertainty import Bootstrap

FAST = Bootstrap(n_resamples=500, seed=0)


def test_rule_escalates_what_it_names_and_never_keeps_a_failure():
    sure = CheapVerdict("model_a", 9.0, 3.0, orders_agree=True, confidence=0.95)
    close = CheapVerdict("model_b", 6.0, 7.0)
    split = CheapVerdict("tie", 5.0, 5.0, orders_agree=False)
    doubtful = CheapVerdict("model_a", confidence=0.55)
    failed = CheapVerdict(None)
    rule = CascadeRule(max_margin=1, orders_disagree=True, min_confidence=0.6)
    assert [rule.escalate(v) for v in (sure, close, split, doubtful, failed)] == [False, True, True, True, True]
    assert CascadeRule().escalate(failed) and not CascadeRule().escalate(close)
    assert not CascadeRule(on_failure=False).escalate(failed)
    assert CascadeRule(max_margin=1, orders_disagree=True).describe() == "failure or margin <= 1 or orders disagree"


def test_escalation_order_is_least_sure_first():
    cheap = [
        CheapVerdict("model_a", 9, 1),
        CheapVerdict(None),
        CheapVerdict("tie", 5, 5),
        CheapVerdict("model_a", 6, 4),
    ]
    assert escalation_order(cheap) == [1, 2, 3, 0]


def fixture(n_each: int = 10):
    """A cheap judge right when sure (margin >= 3) and wrong when unsure (margin 1); the strong
    judge always right. Escalating the unsure items must recover the strong judge's kappa."""
    human, cheap, strong = [], [], []
    labels = ["model_a", "model_b", "tie"]
    for i in range(3 * n_each):
        h = labels[i % 3]
        human.append(h)
        strong.append(h)
        if i < 2 * n_each:  # sure and right
            sa, sb = {"model_a": (9, 2), "model_b": (2, 9), "tie": (5, 5)}[h]
            cheap.append(CheapVerdict(h, sa, sb))
        else:  # unsure and wrong
            wrong = labels[(i + 1) % 3]
            cheap.append(CheapVerdict(wrong, *({"model_a": (6, 5), "model_b": (5, 6), "tie": (5, 4)}[wrong])))
    return cheap, strong, human


def test_cascade_curve_recovers_the_strong_judge_at_the_cost_of_its_escalations():
    cheap, strong, human = fixture()
    curve = cascade_curve(cheap, strong, human, thresholds=[1], shares=[0.0, 1.0], settings=FAST)
    pts = {p["name"]: p for p in curve["points"]}
    assert pts["strong alone"]["kappa"] == pytest.approx(1.0)
    assert pts["cheap alone"]["kappa"] < 0.7
    cascade = pts["margin <= 1"]
    # margin <= 1 escalates every wrong item (margin 1) and the cheap judge's ties (margin 0), nothing else
    expected = sum(v.margin is not None and v.margin <= 1 for v in cheap)
    assert expected == 10 + sum(h == "tie" for h in human[:20])
    assert cascade["escalated"] == expected and cascade["relative_cost"] == pytest.approx(expected / 30)
    assert cascade["kappa"] == pytest.approx(1.0) and cascade["verdict_vs_strong"] == "not_worse"
    assert pts["cheap alone"]["verdict_vs_strong"] in ("worse", "lower")
    assert pts["0% least sure"]["kappa"] == pts["cheap alone"]["kappa"]
    assert pts["100% least sure"]["escalated"] == 30
    # one paired bootstrap: every point's interval is reported
    assert all(p["kappa_ci"][0] is not None for p in curve["points"])


def test_cascade_curve_refuses_misaligned_inputs():
    cheap, strong, human = fixture()
    with pytest.raises(ValueError, match="differ in length"):
        cascade_curve(cheap[:-1], strong, human)


@pytest.mark.skipif(default_root() is None, reason="the authors' FairEval judgments (../shared/data) are absent")
def test_replay_on_the_authors_faireval_outputs():
    root = default_root()
    r = replay_authors(root, None, "llama31-8b", "gpt-4o", shares=[0.0, 0.3, 1.0], settings=FAST, random_draws=20)
    pts = {p["name"]: p for p in r["points"]}
    assert r["n"] == 80
    # the paper's Table 2 kappas (combined scoring /10): Llama-3.1-8B 0.206, GPT-4o 0.327
    assert pts["cheap alone"]["kappa"] == pytest.approx(0.206, abs=1e-3)
    assert pts["strong alone"]["kappa"] == pytest.approx(0.327, abs=1e-3)
    assert pts["100% least sure"]["kappa"] == pytest.approx(pts["strong alone"]["kappa"])
    assert pts["30% least sure"]["strong_calls"] == 24
    assert "random_kappa" in pts["30% least sure"]
