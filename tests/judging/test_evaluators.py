"""The evaluator registry (mapo.judging.evaluators): every evaluator builds itself from config and declares
roles, fingerprint sections and record kind that exist; nothing outside the registry branches on an
evaluator's name or a record's kind."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mapo.core.config import ConfigError, PoolingTask, RolesConfig, RunConfig
from mapo.core.types import RECORD_KINDS, record_kind
from mapo.judging.base import EVALUATORS, PointwiseEvaluator
from mapo.judging.evaluators import evaluator_class, from_config, models_of, selection_keys
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

MAPO = Path(__file__).resolve().parents[2] / "mapo"


def config(server: FakeServer, evaluator: str) -> RunConfig:
    models = {m: fake_model(server, served_name=m) for m in ("j1", "j2", "j3", "rm")}
    models["rm"].pooling = PoolingTask.classify
    return RunConfig(
        models=models,
        roles=RolesConfig(judge="j1", jurors=["j1", "j2", "j3"], debaters=["j1"], strong_judge="j2"),
        evaluator=evaluator,
    )


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_every_evaluator_builds_itself_and_declares_what_exists(name):
    cls = EVALUATORS.get(name)
    roles = {f.name for f in dataclasses.fields(RolesConfig)}
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert cls.config_roles and set(cls.config_roles) <= roles, cls.config_roles
    for section, only in cls.sections:
        assert section in sections, section
        if only is not None:
            assert set(only) <= {f.name for f in dataclasses.fields(getattr(RunConfig(), section))}
    with FakeServer() as server:
        cfg = config(server, name)
        if name == "reward":
            cfg.roles.judge = "rm"
        client = LLMClient(cfg.models)
        ev = from_config(cfg, client)
        assert type(ev) is cls and evaluator_class(cfg) is cls
        assert ev.models == models_of(cfg, cls)  # its models are those its roles name
        (rec,) = ev.failed_records(_ctx(name), "rejected")
        assert rec["kind"] == cls.kind and rec["judge"] == ev.name
        # a reader knows its kind by traits only; only a jury aggregates its members, none of these is one
        assert record_kind(cls.kind).aggregate == bool(ev.subset_members)
        assert not record_kind(cls.kind).member


def _ctx(name: str):
    from mapo.judging.base import RecordContext

    return RecordContext(item_id="q1", human="model_a", order="AB", version=1, evaluator=name)


def test_the_pair_judge_of_a_reward_model_is_the_reward_model_and_reward_needs_one():
    with FakeServer() as server:
        cfg = config(server, "judge")
        client = LLMClient(cfg.models)
        assert EVALUATORS.get("judge") is type(from_config(cfg, client))
        assert selection_keys(cfg) == ({}, ())  # the default adds nothing to build's/winrate's fingerprint
        cfg.roles.judge = "rm"  # roles.judge=<reward model> is one override, in build, winrate and evaluate alike
        assert isinstance(from_config(cfg, client), PointwiseEvaluator)
        assert type(from_config(cfg, client)) is EVALUATORS.get("reward")
        cfg.roles.judge, cfg.evaluator = "j1", "reward"
        with pytest.raises(ConfigError, match=r"roles\.judge='j1' is not a reward model"):
            from_config(cfg, client)


# the branches the registry replaced: on the evaluator's name or type, and on a record's kind by name
NAME_BRANCH = re.compile(
    r"cfg\.evaluator\s*(==|!=|in\b)|EVALUATORS\[|isinstance\([^)]*\b(Judge|Jury|Debate|Cascade|RewardJudge|PointwiseEvaluator)\b"
)
_KINDS = "|".join(sorted({*RECORD_KINDS, "cascade", "reward"} - {"winrate"}))  # `kind == "winrate"`: a run's command
KIND_BRANCH = re.compile(
    r"""(\[["']kind["']\]|get\(["']kind["']\)|\bkind\b)\s*(==|!=|===|!==|in\b)\s*\(?["'](""" + _KINDS + r""")["']"""
)
AUTHORS = re.compile(r"""strategy|\["source"\]|debate\[\{judge\}\]""")
"""The authors' FairEval outputs turned into records (their strategy folder names the kind; issue 21 item 5)."""


def test_nothing_outside_the_registry_branches_on_an_evaluator_name_or_a_record_kind():
    found = []
    for path in sorted([*MAPO.rglob("*.py"), *MAPO.rglob("*.js")]):
        rel = path.relative_to(MAPO).as_posix()
        if rel == "judging/evaluators.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if NAME_BRANCH.search(line) or (KIND_BRANCH.search(line) and not AUTHORS.search(line)):
                found.append(f"mapo/{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
