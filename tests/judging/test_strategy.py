"""The strategy registry: every registered strategy is one object that a judge asks live and that
``mapo reparse`` replays from the stored raw texts to the same verdict; a newly registered strategy
is replayed the same way (never kept as stored), and a record whose strategy is not registered is
refused with a message naming it (fake server; no model call during the replay)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from mapo.core.config import PACK_SCALES, POINTWISE_STRATEGIES, JudgeConfig, JudgeStrategy
from mapo.core.types import Message
from mapo.judging.base import RecordContext
from mapo.judging.judge import STRATEGIES, Judge, judge_setup
from mapo.judging.packs import PACKS
from mapo.judging.strategy import Asker, Strategy
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from mapo.runs.reparse import main as reparse_main
from mapo.runs.reparse import reparse_run
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

GOOD, BAD = "ZEBRA-answer", "QUOKKA-answer"

PROMPT_SETS = {"prometheus_absolute": "prometheus", "prometheus_relative": "prometheus"}
SCALES = {"prometheus_absolute": 5}


def _answer(strategy: str, user: str) -> str:
    """The strategy's format, preferring GOOD wherever it is shown (pointwise: GOOD scores higher)."""
    good_first = GOOD in user and BAD in user and user.index(GOOD) < user.index(BAD)
    alone_good = BAD not in user
    pair = {
        "direct": lambda g: f"### Evaluation Evidence:\nx\n\n### Answer:\n{'A' if g else 'B'}",
        "combined": lambda g: (
            "### Evaluation Evidence:\nx\n\n### Score Assistant A:\n"
            + ("8/10\n\n### Score Assistant B:\n3/10" if g else "4/10\n\n### Score Assistant B:\n9/10")
        ),
        "prometheus_relative": lambda g: f"Feedback: one is right. [RESULT] {'A' if g else 'B'}",
        "judgelm": lambda g: ("9 4" if g else "4 9") + "\nthe good one is better",
        "pandalm": lambda g: ("1" if g else "2") + "\n\n### Reason: better.\n\n### Reference: x",
        "skywork_critic": lambda g: "[[A]]" if g else "[[B]]",
        "toy_pick": lambda g: "A" if g else "B",
    }
    alone = {
        "independent": lambda g: f"### Evaluation Evidence:\nok\n\n### Overall Score:\n{7 if g else 3}/10",
        "prometheus_absolute": lambda g: f"Feedback: fine. [RESULT] {4 if g else 2}",
    }
    if strategy in alone:
        return alone[strategy](alone_good)
    return pair[strategy](good_first)


def _responder(strategy: str):
    def respond(req: dict[str, Any]) -> str:
        messages = req["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        # the first answer of a conversation showing GOOD is unreadable: every such attempt is re-asked
        if GOOD in user and not any(m["role"] == "assistant" for m in messages):
            return "hmm, let me think"
        return _answer(strategy, user)

    return respond


async def _live_records(strategy: str, tmp_path) -> list[dict[str, Any]]:
    """evaluate's two records (AB, and the pair given swapped: BA) of a judge judging both orders."""
    cfg = JudgeConfig(
        strategy=strategy,
        prompt_set=PROMPT_SETS.get(strategy, strategy if strategy in PACKS else "paper"),
        scale=SCALES.get(strategy, 10),
        both_orders=True,
        reask=1,
    )
    with FakeServer(responder=_responder(strategy)) as server:
        client = LLMClient({"j": fake_model(server)}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01)
        judge = Judge(client, "j", cfg)
        out = []
        for order, (a, b) in (("AB", (GOOD, BAD)), ("BA", (BAD, GOOD))):
            j = await judge.judge_pair("which is better?", a, b)
            assert j.ok, j.failure
            ctx = RecordContext(item_id="i1", human="model_a", order=order, version=1, evaluator="judge")
            out.append(json.loads(json.dumps(j.record(ctx))))  # as read back from judgements.jsonl
    assert all(r["label"] == "model_a" for r in out), [(r["order"], r["label"]) for r in out]
    # every attempt was re-asked once (the first answer unreadable): the replay must find the answer
    assert all(len(a["raw"]) >= 2 for r in out for a in r["detail"]["attempts"])
    return out


def _replayed(records: list[dict[str, Any]], run) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = reparse_run(run)["judgements.jsonl"]
    return summary, [json.loads(line) for line in (run / "reparsed.jsonl").read_text().splitlines()]


FIELDS = ("label", "pick", "score_a", "score_b", "failure")


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES.names())))
async def test_every_registered_strategy_is_replayed_to_its_live_verdict(strategy, tmp_path):
    records = await _live_records(strategy, tmp_path)
    summary, reparsed = _replayed(records, tmp_path / "run")
    assert summary["records"] == 2 and summary["changed"] == 0 and summary["scores_changed"] == 0
    assert summary["notes"] == 0, [r["reparse"]["note"] for r in reparsed]
    for live, again in zip(records, reparsed, strict=True):
        assert {k: again[k] for k in FIELDS} == {k: live[k] for k in FIELDS}
        assert [a["verdict"] for a in again["detail"]["attempts"]] == [a["verdict"] for a in live["detail"]["attempts"]]
    # the replay reads the texts: an answer changed in the record changes the verdict (it is not kept)
    edited = json.loads(json.dumps(records))
    for a in edited[0]["detail"]["attempts"]:
        a["raw"][-1] = "unreadable"  # the last answer (a pointwise attempt's: B's) no longer parses
    summary, reparsed = _replayed(edited, tmp_path / "edited")
    assert reparsed[0]["label"] is None and reparsed[0]["failure"] and summary["failures_after"] == 1


@dataclass(frozen=True, kw_only=True)
class ToyPick(Strategy):
    """A strategy added the way ARCHITECTURE.md says: one Strategy object, registered by name."""

    def prompt_sha(self, judge: Asker) -> str:
        return "toy"

    def setup_name(self, scale: int) -> str:
        return self.name

    def parse_kwargs(self, scale: int) -> dict[str, Any]:
        return {}

    def pair_messages(self, judge: Asker, question: str, first: str, second: str) -> list[Message]:
        return [{"role": "user", "content": f"{question}\nA: {first}\nB: {second}\nAnswer A or B."}]


@pytest.fixture
def toy(monkeypatch):
    strategy = ToyPick(name="toy_pick", parser="pick", reask="reask_pick")
    monkeypatch.setitem(STRATEGIES._items, strategy.name, strategy)
    return strategy


async def test_a_newly_registered_strategy_is_replayed_not_kept(toy, tmp_path):
    records = await _live_records("toy_pick", tmp_path)
    assert records[0]["setup"] == "toy_pick" and records[0]["prompt_sha"] == "toy"
    summary, reparsed = _replayed(records, tmp_path / "run")
    assert summary["changed"] == 0 and summary["notes"] == 0
    assert [r["label"] for r in reparsed] == ["model_a", "model_a"]
    # a different answer in the stored text: the replay follows the text
    edited = json.loads(json.dumps(records))
    for a in edited[0]["detail"]["attempts"]:
        a["raw"][-1] = "A" if a["order"] == "BA" else "B"
    summary, reparsed = _replayed(edited, tmp_path / "edited")
    assert reparsed[0]["label"] == "model_b" and summary["changed"] == 1 and summary["notes"] == 0


async def test_a_record_of_an_unregistered_strategy_is_refused_naming_it(toy, tmp_path, capsys):
    records = await _live_records("toy_pick", tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "judgements.jsonl").write_text("".join(json.dumps({**r, "strategy": "toy_gone"}) + "\n" for r in records))
    assert reparse_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "judgements.jsonl" in err and "'toy_gone'" in err and "known:" in err and "direct" in err
    assert not (run / "reparsed.jsonl").exists()


def test_the_registry_and_the_config_choices_agree():
    """``judge.strategy``'s choices, the pointwise set and the packs' fixed scales are what the
    registered strategies say of themselves."""
    assert set(STRATEGIES.names()) == {m.value for m in JudgeStrategy}
    assert {n for n in STRATEGIES.names() if STRATEGIES.get(n).pointwise} == set(POINTWISE_STRATEGIES)
    assert {n: p.scale for n, p in PACKS.items()} == dict(PACK_SCALES)
    assert all(STRATEGIES.get(n) is p for n, p in PACKS.items())
    assert all(STRATEGIES.get(n).ordered != JudgeConfig(strategy=n).pointwise for n in STRATEGIES.names())


def test_setup_names_are_unchanged():
    """The setup is part of every record key: the names stored before the registry still come out."""
    setups = {n: judge_setup(JudgeConfig(strategy=n, scale=SCALES.get(n, 10))) for n in STRATEGIES.names()}
    assert setups == {
        "direct": "direct",
        "combined": "combined10",
        "independent": "independent10",
        "prometheus_absolute": "prometheus_absolute5",
        "prometheus_relative": "prometheus_relative10",
        "judgelm": "judgelm10",
        "pandalm": "pandalm10",
        "skywork_critic": "skywork_critic10",
    }
    assert judge_setup(JudgeConfig(strategy="combined", scale=5, scoring="expected", explain=False)) == (
        "combined5+expected+score_only"
    )
