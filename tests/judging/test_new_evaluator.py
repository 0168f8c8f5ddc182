"""ARCHITECTURE.md's "A new evaluator", done as a test: a toy pointwise evaluator joins mapo through its own
class (in mapo: a module of ``mapo/judging/`` imported by ``mapo/judging/evaluators.py``) and its choice in
``EvaluatorKind`` (stood in for by the ``longest`` fixture), and runs through ``mapo evaluate`` (records,
agreement, resume), ``mapo agreement``, ``mapo reparse``, ``mapo report``, ``mapo view``'s data and best-of-N
selection, none of which names it. It is alpaca_eval's ``longest`` baseline: the longer response wins, a
score with no model and no prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from mapo.cli.agreement import run_tables
from mapo.core import config as C
from mapo.core.config import ClientConfig, JudgeConfig, RunConfig
from mapo.core.types import Label
from mapo.generation.selection import SELECTORS
from mapo.judging.base import EVALUATORS, NO_PROMPT, Judgement, PointwiseEvaluator, Score
from mapo.llm.client import LLMClient
from mapo.report.render import write_report
from mapo.runs.evaluate import evaluate
from mapo.runs.reparse import reparse_run
from mapo.view.data import load_views
from tests.runs.test_evaluate import LABELS, write_items

# --------------------------------------------------------------------------- the new evaluator's own file


@dataclass(kw_only=True)
class LongestJudgement(Judgement):
    kind: ClassVar[str] = "longest"


class Longest(PointwiseEvaluator):
    """The longer response wins; equal lengths are a tie."""

    kind: ClassVar[str] = "longest"
    config_roles: ClassVar[tuple[str, ...]] = ()  # no model
    sections: ClassVar[tuple[tuple[str, tuple[str, ...] | None], ...]] = (("judge", ("version",)),)

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Longest:
        return cls()

    @property
    def name(self) -> str:
        return "longest"

    @property
    def setup(self) -> str:
        return "chars"

    @property
    def models(self) -> list[str]:
        return []

    async def score(self, question: str, response: str) -> Score:
        return Score(float(len(response)))

    async def judge_pair(self, question: str, response_a: str, response_b: str) -> LongestJudgement:
        a, b = await self.score(question, response_a), await self.score(question, response_b)
        assert a.value is not None and b.value is not None
        label: Label = "tie" if a.value == b.value else "model_a" if a.value > b.value else "model_b"
        return LongestJudgement(
            judge=self.name,
            strategy=self.strategy,
            scale=self.scale,
            prompt_sha=self.prompt_sha,
            label=label,
            score_a=a.value,
            score_b=b.value,
            setup=self.setup,
        )


@pytest.fixture
def longest(monkeypatch):
    """What its registration does in mapo: ``@EVALUATORS.register("longest")`` and a member of EvaluatorKind."""
    monkeypatch.setitem(EVALUATORS._items, "longest", Longest)
    kinds = C.Choice("EvaluatorKind", {**{m.name: m.value for m in C.EvaluatorKind}, "longest": "longest"})
    monkeypatch.setattr(C, "EvaluatorKind", kinds)


# --------------------------------------------------------------------------- mapo, unchanged


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_a_new_pointwise_evaluator_runs_through_evaluate_agreement_reparse_report(longest, tmp_path):
    cfg = RunConfig(
        evaluator="longest",
        eval_data={"loader": "local", "path": str(write_items(tmp_path / "items.jsonl", 6))},
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
    )
    cfg.judge.both_orders = True  # a pointwise evaluator has one order whatever this says
    manifest = await evaluate(cfg)
    assert manifest["status"] == "complete" and manifest["orders"] == ["AB"]
    run = tmp_path / "run"
    recs = lines(run / "judgements.jsonl")
    # its records are its own kind, read like any judge's: response_b is the longer one in every item
    assert [(r["kind"], r["evaluator"], r["judge"], r["label"], r["pick"]) for r in recs] == [
        ("longest", "longest", "longest", "model_b", "B")
    ] * 6
    assert recs[0]["prompt_sha"] == NO_PROMPT and recs[0]["key"] == "q0|longest|chars|v1|none|AB"
    assert recs[0]["score_b"] - recs[0]["score_a"] == len(", longer")

    human = LABELS[:6]
    expected_accuracy = sum(h == "model_b" for h in human) / 6
    (entry,) = json.loads((run / "agreement.json").read_text())["results"]
    assert (entry["judge"], entry["kind"], entry["n"], entry["n_failed"]) == ("longest", "longest", 6, 0)
    assert entry["accuracy"] == pytest.approx(expected_accuracy)
    assert manifest["agreement"]["n"] == 6

    again = await evaluate(cfg)  # resume: every unit is done
    assert again["status"] == "complete" and again["items"]["resumed_done"] == 6
    assert len(lines(run / "judgements.jsonl")) == 6

    tables = run_tables([str(run / "judgements.jsonl")])  # mapo agreement
    assert [(e["judge"], e["kind"], e["n"]) for e in tables["results"]] == [("longest", "longest", 6)]

    summary = reparse_run(run)  # no raw text: kept as stored, no note
    assert summary["judgements.jsonl"] == {
        **summary["judgements.jsonl"],
        "records": 6,
        "changed": 0,
        "notes": 0,
    }
    assert [r["key"] for r in lines(run / "reparsed.jsonl")] == [r["key"] for r in recs]

    md = write_report(run)["md"].read_text()  # mapo report
    assert "longest" in md

    (view,), _ = load_views([run])  # mapo view
    assert len(view.rows()) == 6
    item = view.item("q0")
    assert item is not None and [e["name"] for e in item["evaluators"]] == ["longest"]
    assert item["evaluators"][0]["records"][0]["label"] == "model_b"


async def test_a_new_pointwise_evaluator_selects_the_best_of_n(longest):
    responses = ["short", "the longest one", "medium one", "the longest one"]
    ev = EVALUATORS.get("longest").from_config(RunConfig(), None)  # type: ignore[arg-type]
    by_score = await SELECTORS.get("score_all")(ev, "q", responses)
    assert by_score.best == 1 and by_score.scores == [5.0, 15.0, 10.0, 15.0]
    assert by_score.judgements[0] == {"index": 0, "raw": [], "score": 5.0, "failure": None, "tie_margin": 0.0}
    losses = by_score.losses()
    assert losses[0].decisive and not losses[3].decisive and losses[3].reason == "equal_scores"
    by_pairs = await SELECTORS.get("tournament")(ev, "q", responses)
    assert by_pairs.best == 1 and [j["label"] for j in by_pairs.judgements] == ["model_b", "model_a", "tie"]
