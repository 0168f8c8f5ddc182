"""Agreement tables (mapo.metrics.tables): the same records give the same tables, whatever their order."""

from __future__ import annotations

import json
import random

from mapo.metrics.tables import agreement_tables, item_order

A, B, T = "model_a", "model_b", "tie"


def _records() -> list[dict]:
    """Two judges, both orders, and a jury of both with its jurors, on 60 items with known labels."""
    rng = random.Random(7)
    out = []
    for i in range(60):
        human = rng.choice([A, B])
        labels = {j: human if rng.random() < p else rng.choice([A, B, T]) for j, p in (("j1", 0.8), ("j2", 0.6))}
        for order in ("AB", "BA"):
            pick = {A: "A", B: "B", T: None}
            for j, label in labels.items():
                out.append(
                    {
                        "item_id": f"q{i}",
                        "kind": "judge",
                        "judge": j,
                        "setup": "combined10",
                        "order": order,
                        "label": label,
                        "pick": pick[label],
                        "human": human,
                        "models": [j],
                    }
                )
                out.append(
                    {
                        "item_id": f"q{i}",
                        "kind": "juror",
                        "judge": j,
                        "setup": "combined10",
                        "order": order,
                        "member_of": "jury",
                        "label": label,
                        "pick": pick[label],
                        "human": human,
                        "models": [j],
                    }
                )
            verdict = labels["j1"] if labels["j1"] == labels["j2"] else T
            out.append(
                {
                    "item_id": f"q{i}",
                    "kind": "jury",
                    "judge": "jury",
                    "setup": "combined10",
                    "order": order,
                    "label": verdict,
                    "pick": pick[verdict],
                    "human": human,
                    "models": ["j1", "j2"],
                    "detail": {"aggregate": "mode", "tie_break": "tie"},
                }
            )
    return out


def test_intervals_do_not_depend_on_the_order_records_came_in():
    """mapo evaluate appends records as they finish, so two runs of one evaluate store them in two
    orders: the bootstrap resampled items by position, and the same seed gave other intervals and
    another selection-corrected best jury (failed before items were put in id order)."""
    records = _records()
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    first = agreement_tables(records, n_resamples=300, seed=0)
    second = agreement_tables(shuffled, n_resamples=300, seed=0)
    assert first["results"][0]["kappa_ci"][0] is not None
    assert json.dumps(first, sort_keys=True, default=str) == json.dumps(second, sort_keys=True, default=str)


def test_item_order_is_numeric_where_ids_are_numbers():
    assert sorted(["10", "2", "1"], key=item_order) == ["1", "2", "10"]
    assert sorted(["q10-t1", "q2-t2", "q2-t1"], key=item_order) == ["q2-t1", "q2-t2", "q10-t1"]
    assert sorted(["7", "07"], key=item_order) == sorted(["07", "7"], key=item_order)
