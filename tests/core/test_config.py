"""mapo.core.config: typed choices (StrEnums) and one validator per config.

A wrong choice fails when Hydra composes the config (naming the key, listing the allowed
values); a number out of range fails when the RunConfig is built (OmegaConf.to_object, before
any command code) or in ``validate`` (a config changed in Python), naming the full key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mapo.core import config as C
from mapo.core.config import ConfigError, JudgeConfig, JudgeStrategy, RunConfig, validate
from tests.conftest import REPO, fake_model
from tests.fake_openai import FakeServer


def compose(command: str, overrides: list[str], *, hydra: bool = False):
    """The DictConfig Hydra composes for ``mapo <command> <overrides>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    C.register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(command, overrides=["output_dir=unused", *overrides], return_hydra_config=hydra)


def build(command: str, overrides: list[str]) -> RunConfig:
    return OmegaConf.to_object(compose(command, overrides))  # type: ignore[return-value]


# ---- the choices ---------------------------------------------------------------------------------

CHOICES = {
    "judge.strategy": C.JudgeStrategy,
    "judge.order_combine": C.OrderCombine,
    "judge.constrained": C.Constrained,
    "judge.scoring": C.Scoring,
    "jury.aggregate": C.JuryAggregate,
    "jury.tie_break": C.TieBreak,
    "debate.aggregate": C.DebateAggregate,
    "debate.constrained": C.Constrained,
    "feedback.constrained": C.Constrained,
    "selection.method": C.SelectionMethod,
    "selection.on_tie": C.OnTie,
    "prompts.source": C.PromptSource,
    "prompts.on_invalid": C.OnInvalid,
    "client.progress": C.ProgressMode,
    "evaluator": C.EvaluatorKind,
    "on_config_change": C.OnConfigChange,
}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_wrong_choice_fails_at_compose_naming_key_and_allowed_values(key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose("evaluate", [f"{key}=bogus"])
    message = str(err.value.__cause__)
    allowed = ", ".join(CHOICES[key].__members__)  # OmegaConf names the aliases too (TieBreak.first)
    assert f"full_key: {key}" in message and f"expected one of [{allowed}]" in message


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_allowed_choice_composes_into_its_enum(key):
    enum = CHOICES[key]
    for member in enum:
        # a judge pack whose format fixes its scale needs that scale too (JudgeConfig.check)
        fixed = C.PACK_SCALES.get(member) if key == "judge.strategy" else None
        cfg = build("evaluate", [f"{key}={member.value}", *([f"judge.scale={fixed}"] if fixed else [])])
        got = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert got is member


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_wrong_choice_set_in_python_fails_in_validate(key):
    cfg = RunConfig()
    *parents, leaf = key.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, "bogus")
    allowed = ", ".join(m.value for m in CHOICES[key])
    with pytest.raises(ConfigError, match=f"^{key}='bogus'; allowed: {allowed}$"):
        validate(cfg, [])


def test_choices_behave_as_the_strings_they_were():
    cfg = build("evaluate", ["judge=direct", "jury.tie_break=first_juror"])
    s = cfg.judge.strategy
    assert s == "direct" and s in ("direct", "combined") and f"{s}" == "direct" and str(s) == "direct"
    assert {"direct": 1}[s] == 1 and json.dumps({"s": s, s: 1}) == '{"s": "direct", "direct": 1}'
    # what the run folder's config.yaml holds re-composes into the same config
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    assert "strategy: direct" in text and "tie_break: first_juror" in text
    again = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text)))
    assert again == cfg
    json.dumps(dataclasses.asdict(cfg))


def test_a_string_set_in_python_becomes_the_enum():
    judge = JudgeConfig(strategy="direct")  # type: ignore[arg-type]
    judge.check()
    assert judge.strategy is JudgeStrategy.direct


def test_the_enums_list_exactly_what_the_code_implements():
    """A member without an implementation (or the reverse) would pass composition and fail mid-run."""
    from mapo.generation.selection import SELECTORS
    from mapo.judging.debate import AGGREGATES
    from mapo.judging.evaluators import EVALUATORS
    from mapo.judging.judge import STRATEGIES
    from mapo.metrics.agreement import AGGREGATORS
    from mapo.runs.progress import MODES

    for enum, names in [
        (C.JudgeStrategy, STRATEGIES.names()),
        (C.SelectionMethod, SELECTORS.names()),
        (C.JuryAggregate, AGGREGATORS.names()),
        (C.DebateAggregate, AGGREGATES),
        (C.EvaluatorKind, EVALUATORS),
        (C.ProgressMode, MODES),
    ]:
        assert sorted(m.value for m in enum) == sorted(names), enum.__name__


def test_one_tie_break_vocabulary():
    """jury.tie_break's members are the names jury_pick takes; the old spelling ``first`` is still read."""
    from mapo.metrics.agreement import jury_pick

    split = ["model_b", "model_a"]
    picks = {m.value: jury_pick(split, "majority", tie_break=m) for m in C.TieBreak}
    assert picks == {"tie": "tie", "first_juror": "model_b", "abstain": None}
    assert {m: jury_pick(split, "majority", tie_break=m.value) for m in C.TieBreak} == picks
    assert C.TieBreak.parse("first", "jury.tie_break") is C.TieBreak.first_juror
    assert build("evaluate", ["jury.tie_break=first"]).jury.tie_break is C.TieBreak.first_juror
    assert jury_pick(split, "majority", tie_break="first") == "model_b"  # a stored record's old spelling
    with pytest.raises(ConfigError, match="^jury.tie_break='coin'; allowed: tie, first_juror, abstain$"):
        jury_pick(split, "majority", tie_break="coin")


# ---- every number is range-checked, naming the full key ---------------------------------------------

M = "models.gemma3-270m"
BAD_NUMBERS = [
    (f"{M}.max_retries=-1", f"{M}.max_retries must be >= 0, got -1"),
    (f"{M}.max_concurrency=0", f"{M}.max_concurrency must be >= 1, got 0"),
    (f"{M}.timeout_s=0", f"{M}.timeout_s must be > 0, got 0"),
    (f"{M}.timeout_s=-3", f"{M}.timeout_s must be > 0, got -3"),
    (f"{M}.price_in_per_mtok=-1", f"{M}.price_in_per_mtok must be >= 0 or null, got -1"),
    (f"{M}.price_out_per_mtok=-0.5", f"{M}.price_out_per_mtok must be >= 0 or null, got -0.5"),
    (f"{M}.generation.max_tokens=-5", f"{M}.generation.max_tokens must be >= 1, got -5"),
    (f"{M}.generation.max_tokens=0", f"{M}.generation.max_tokens must be >= 1, got 0"),
    (f"{M}.generation.temperature=-0.1", f"{M}.generation.temperature must be >= 0, got -0.1"),
    (f"{M}.generation.top_p=0", f"{M}.generation.top_p must be in (0, 1], got 0"),
    (f"{M}.generation.top_p=1.5", f"{M}.generation.top_p must be in (0, 1], got 1.5"),
    (f"{M}.serve.max_model_len=0", f"{M}.serve.max_model_len must be >= 1, got 0"),
    ("models.llama31-8b.serve.tensor_parallel_size=0", "models.llama31-8b.serve.tensor_parallel_size must be >= 1"),
    ("models.llama31-8b.serve.gpus=-1", "models.llama31-8b.serve.gpus must be >= 0, got -1"),
    ("models.llama31-8b.serve.data_parallel_replicas=0", "models.llama31-8b.serve.data_parallel_replicas must be >= 1"),
    ("judge.reask=-1", "judge.reask must be >= 0, got -1"),
    ("judge.scale=7", "judge.scale must be 5, 10 or 100, got 7"),
    ("judge.version=0", "judge.version must be >= 1, got 0"),
    ("debate.reask=-1", "debate.reask must be >= 0, got -1"),
    ("debate.rounds=-1", "debate.rounds must be >= 0, got -1"),
    ("debate.scale=3", "debate.scale must be 5, 10 or 100, got 3"),
    ("debate.roles=[]", "debate.roles is empty"),
    ("feedback.reask=-1", "feedback.reask must be >= 0, got -1"),
    ("feedback.iterations=0", "feedback.iterations must be >= 1, got 0"),
    ("feedback.early_stop_score=-1", "feedback.early_stop_score must be >= 0 or null, got -1"),
    ("prompts.limit=0", "prompts.limit must be >= 1 or null, got 0"),
    ("prompts.max_chars=0", "prompts.max_chars must be >= 1, got 0"),
    ("prompts.shard_count=0", "prompts.shard_count must be >= 1, got 0"),
    ("prompts.shard_index=-1", "prompts.shard_index=-1 must be in 0..prompts.shard_count-1"),
    ("prompts.shard_index=2", "prompts.shard_index=2 must be in 0..prompts.shard_count-1 (shard_count=1)"),
    ("client.budget_usd=0", "client.budget_usd must be > 0 or null, got 0"),
    ("client.budget_usd=-2", "client.budget_usd must be > 0 or null, got -2"),
    ("max_items_in_flight=0", "max_items_in_flight must be >= 1, got 0"),
    ("eval_data.limit=0", "eval_data.limit must be >= 1 or null, got 0"),
    ("configurations=[{name: 'a|b', generator: x}]", "configurations[0].name='a|b': a non-empty name without '|'"),
    ("configurations=[{name: a, generator: x, reviewers: [p, q, r]}]", "configurations[0].reviewers (a): 0, 1 or 2"),
]


@pytest.mark.parametrize("override,message", BAD_NUMBERS, ids=[o for o, _ in BAD_NUMBERS])
def test_a_number_out_of_range_fails_when_the_config_is_built(override, message):
    composed = compose("evaluate", [override])  # composes: the type is right
    with pytest.raises(ConfigError) as err:
        OmegaConf.to_object(composed)
    assert str(err.value).startswith(message), str(err.value)


def test_the_shipped_configs_are_valid():
    for command in ("build", "evaluate", "winrate"):
        cfg = build(command, [])
        validate(cfg, [])
        assert cfg.models["gpt-4o"].price_in_per_mtok == 5.0 and cfg.models["gpt-4o"].price_out_per_mtok == 15.0
        assert cfg.models["gpt-4o-mini"].price_in_per_mtok == 0.15
        assert cfg.models["gpt-4o-mini"].price_out_per_mtok == 0.6
    # and the boundaries are allowed
    build("evaluate", ["client.budget_usd=0.01", "debate.rounds=0", "judge.reask=0", f"{M}.max_retries=0"])
    build("evaluate", [f"{M}.generation.top_p=1", f"{M}.generation.temperature=0", "prompts.limit=null"])


def test_a_value_changed_in_python_is_checked_by_validate():
    cfg = RunConfig(models={"m": fake_model(FakeServer())})
    cfg.models["m"].generation.max_tokens = -5
    with pytest.raises(ConfigError, match=r"^models\.m\.generation\.max_tokens must be >= 1, got -5$"):
        validate(cfg, [])
    with pytest.raises(ConfigError, match=r"^judge\.reask must be >= 0, got -2$"):
        RunConfig(judge=JudgeConfig(reask=-2))


# ---- run_name stays under runs/ ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/abs", "a\\b", "x..y", ""])
def test_run_name_with_a_path_is_refused(name):
    with pytest.raises(ConfigError, match="run_name="):
        RunConfig(run_name=name)


@pytest.mark.parametrize("name", ["../../x", "a/b"])
def test_run_name_with_a_path_is_refused_before_hydra_makes_the_folder(name):
    from omegaconf.errors import InterpolationResolutionError

    cfg = compose("build", [f"run_name={name}"], hydra=True)
    for key in ("run", "sweep"):
        with pytest.raises(InterpolationResolutionError, match="a plain folder name under runs/"):
            OmegaConf.select(cfg, f"hydra.{key}.dir", throw_on_resolution_failure=True)
    assert OmegaConf.to_container(compose("build", ["run_name=ok-name_1.2"], hydra=True).hydra.run)["dir"]


# ---- the command line: one line, no request ----------------------------------------------------------


@pytest.mark.parametrize(
    "override,code,message",
    [
        ("models.smollm2-135m.max_retries=-1", 2, "models.smollm2-135m.max_retries must be >= 0, got -1"),
        ("judge.reask=-1", 2, "judge.reask must be >= 0, got -1"),
        ("selection.on_tie=maybe", 2, "expected one of [drop, keep]"),
        ("selection.max_length_ratio=0.5", 2, "selection.max_length_ratio must be >= 1 or null, got 0.5"),
        ("run_name=../../outside", 2, "run_name='../../outside': a plain folder name under runs/"),
        ("max_items_in_flight=abc", 2, "Value 'abc' of type 'str' could not be converted to Integer"),
        ("nosuchkey=1", 2, "Could not override 'nosuchkey'"),
        ("judge=nonexistent", 2, "Could not override 'judge'"),
    ],
)
def test_cli_refuses_bad_values_before_any_request(tmp_path, override, code, message):
    with FakeServer() as server:
        args = [sys.executable, "-m", "mapo", "build", "client.progress=off", override]
        for m in ("smollm2-135m", "gemma3-270m"):
            args += [f"models.{m}.endpoint=null", f"models.{m}.base_url={server.base_url}"]
        env = {**os.environ, "MAPO_CACHE": str(tmp_path / "mc"), "HF_DATASETS_OFFLINE": "1"}
        p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert server.n == 0
    out = p.stdout + p.stderr
    assert p.returncode == code, out[-2000:]
    assert message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out  # one line, whoever found the error (Hydra or mapo)
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "outside").exists()


def test_stats_keys_are_range_checked_with_their_names():
    from mapo.core.config import RunConfig, StatsConfig

    with pytest.raises(ConfigError, match=r"stats\.confidence must be in \(0, 1\)"):
        RunConfig(stats=StatsConfig(confidence=1.5))
    with pytest.raises(ConfigError, match=r"stats\.n_resamples must be >= 100"):
        RunConfig(stats=StatsConfig(n_resamples=5))


# ---- eval_data is typed ---------------------------------------------------------------------------


def test_eval_data_is_typed_and_a_key_no_loader_takes_fails_at_compose():
    cfg = build("evaluate", ["eval_data=local", "eval_data.path=x.jsonl", "eval_data.labels={1: model_a, 0: tie}"])
    assert isinstance(cfg.eval_data, C.EvalDataConfig)
    assert cfg.eval_data.loader == "local" and cfg.eval_data.labels == {1: "model_a", 0: "tie"}
    assert cfg.eval_data.loader_kwargs() == {"path": "x.jsonl", "labels": {1: "model_a", 0: "tie"}}
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="eval_data.colour"):
        compose("evaluate", ["eval_data=demo", "eval_data.colour=1"])
    for name in ("faireval", "local", "pandalm", "mt_bench", "alpaca_eval", "demo"):  # every shipped set fits it
        assert build("evaluate", [f"eval_data={name}", "eval_data.path=x"]).eval_data.loader


def test_eval_data_given_as_a_mapping_becomes_typed_and_an_unknown_key_is_named():
    cfg = RunConfig(eval_data={"loader": "local", "path": "x.jsonl", "limit": 2})  # type: ignore[arg-type]
    assert isinstance(cfg.eval_data, C.EvalDataConfig) and cfg.eval_data.limit == 2
    with pytest.raises(ConfigError, match=r"eval_data: unknown key\(s\) eval_data.colour"):
        RunConfig(eval_data={"loader": "local", "colour": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"eval_data.limit must be >= 1"):
        RunConfig(eval_data={"loader": "local", "limit": 0})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "models.smollm2-135m.generation.frequency_penalty=3",
            "models.smollm2-135m.generation.frequency_penalty must be in [-2, 2]",
        ),
        (
            "models.smollm2-135m.generation.repetition_penalty=0",
            "models.smollm2-135m.generation.repetition_penalty must be > 0",
        ),
        (
            "feedback.generator_sampling.presence_penalty=-2.5",
            "feedback.generator_sampling.presence_penalty must be in [-2, 2]",
        ),
        ("feedback.generator_sampling.temperature=-1", "feedback.generator_sampling.temperature must be >= 0"),
    ],
)
def test_a_penalty_out_of_range_is_named(override, message):
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        build("build", [override]).check()


def test_unset_sampling_fields_are_not_fingerprint_keys():
    from mapo.runs.runner import model_keys, section_keys

    unset = ["feedback.generator_sampling.temperature=null", "feedback.generator_sampling.repetition_penalty=null"]
    cfg = build("build", unset)
    keys = {**section_keys("feedback", cfg.feedback), **model_keys(cfg, ["smollm2-135m"])}
    assert not any("penalty" in k or "generator_sampling" in k for k in keys)
    # the README main job's default (conf/build.yaml) sets one field, and only that one is a key
    default = section_keys("feedback", build("build", []).feedback)["feedback.generator_sampling"]
    assert default == {"repetition_penalty": 1.1}
    cfg = build("build", ["feedback.generator_sampling.repetition_penalty=1.2"])
    assert section_keys("feedback", cfg.feedback)["feedback.generator_sampling"] == {"repetition_penalty": 1.2}
