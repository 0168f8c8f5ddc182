"""The selection-corrected best-of: a simulation under the null (no candidate better than another)
shows the optimistic maximum biased upward and the corrected estimate not; it follows a real lead."""

from __future__ import annotations

import numpy as np
import pytest

from mapo.metrics.best_of import selection_corrected
from mapo.metrics.uncertainty import Bootstrap

L = np.array(["model_a", "model_b", "tie"])


def _noisy(human, p, rng):
    """Right with probability p, else a uniform label: kappa = p on uniform human labels."""
    return [h if rng.random() < p else str(rng.choice(L)) for h in human]


def test_null_optimistic_is_biased_upward_and_the_corrected_estimate_is_not():
    """57 juries of equal true kappa (0.4), 150 items: the maximum of 57 estimates overshoots;
    the held-out estimate of the chosen one does not (it averages to the true value or below)."""
    rng = np.random.default_rng(2025)
    true, opt, cor, covered = 0.4, [], [], 0
    sims = 15
    for sim in range(sims):
        human = [str(x) for x in rng.choice(L, 150)]
        cands = [_noisy(human, true, rng) for _ in range(57)]
        r = selection_corrected(cands, human, settings=Bootstrap(n_resamples=150, seed=sim), n_splits=100)
        opt.append(r["optimistic"])
        cor.append(r["corrected"])
        covered += r["corrected_ci"][0] <= true <= r["corrected_ci"][1]
    assert np.mean(opt) > true + 0.08  # the winner's curse
    assert np.mean(cor) < true + 0.02  # not biased upward (a split-half choice is if anything pessimistic)
    assert np.mean(cor) > true - 0.06
    assert covered >= sims - 2


def test_a_real_lead_survives_the_correction():
    rng = np.random.default_rng(7)
    human = [str(x) for x in rng.choice(L, 300)]
    cands = [_noisy(human, 0.75, rng)] + [_noisy(human, 0.3, rng) for _ in range(20)]
    r = selection_corrected(cands, human, settings=Bootstrap(n_resamples=200, seed=1), n_splits=100)
    assert r["best"] == 0 and r["chosen_share"] > 0.95
    assert r["corrected"] == pytest.approx(r["optimistic"], abs=0.03)
    lo, hi = r["corrected_ci"]
    assert lo < r["corrected"] < hi and lo > 0.5
