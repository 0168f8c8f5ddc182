"""``mapo evaluate`` end to end through the real Hydra CLI against the fake server, plus the
agreement helpers. (Real-model runs of every strategy/jury/debate: tests/test_e2e_vllm.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapo.core.config import ConfigError
from mapo.data.humans import load_items
from mapo.runs.evaluate import agreement_tables, combine_orders
from tests.conftest import REPO, shared_dir
from tests.fake_openai import FakeServer

MAPO = str(Path(sys.executable).with_name("mapo"))
LABELS = ["model_a", "model_b", "tie", "model_a", "model_b", "model_a"]


def write_items(path: Path, n: int = 6) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": f"Question {i}?",
                        "response_a": f"Answer A to {i}.",
                        "response_b": f"Answer B to {i}, longer.",
                        "human": LABELS[i % len(LABELS)],
                    }
                )
                + "\n"
            )
    return path


def mapo(
    server, tmp_path: Path, *overrides: str, command: str = "evaluate", run: str = "run"
) -> subprocess.CompletedProcess:
    args = mapo_args(server, tmp_path, *overrides, command=command, run=run)
    return subprocess.run(args, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120)


def mapo_args(server, tmp_path: Path, *overrides: str, command: str = "evaluate", run: str = "run") -> list[str]:
    """The `mapo <command>` command line with both embedded models on ``server``."""
    endpoints = []
    for m in ("smollm2-135m", "gemma3-270m"):
        endpoints += [f"models.{m}.endpoint=null", f"models.{m}.base_url={server.base_url}"]
    flags = [o for o in overrides if o.startswith("-")]  # -m must come before the overrides
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    args = [
        MAPO,
        command,
        *flags,
        *endpoints,
        "client.progress=off",
        f"hydra.run.dir={tmp_path / run}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    if command == "evaluate" and not any(o.startswith("eval_data") for o in overrides):
        args += ["eval_data=local", f"eval_data.path={write_items(tmp_path / 'items.jsonl')}"]
    return args


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "judgements.jsonl").read_text().splitlines()]


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_judge_run_writes_records_agreement_and_manifest_and_resumes(fake_server, tmp_path):
    proc = mapo(fake_server, tmp_path, "roles.judge=smollm2-135m", "judge=combined10")
    ok(proc)
    run = tmp_path / "run"
    recs = records(run)
    assert len(recs) == 6 and {r["order"] for r in recs} == {"AB"}
    r = recs[0]
    for field in (
        "key",
        "item_id",
        "evaluator",
        "kind",
        "judge",
        "setup",
        "strategy",
        "scale",
        "order",
        "prompt_sha",
        "pick",
        "label",
        "score_a",
        "score_b",
        "failure",
        "human",
        "raw",
        "detail",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
    ):
        assert field in r, field
    assert (
        r["judge"] == "smollm2-135m" and r["strategy"] == "combined" and r["scale"] == 10 and r["setup"] == "combined10"
    )
    assert {x["human"] for x in recs} == set(LABELS)
    agreement = json.loads((run / "agreement.json").read_text())
    main = agreement["results"][0]
    assert main["judge"] == "smollm2-135m" and main["n"] + main["n_failed"] == 6 and "kappa" in main
    assert len(main["confusion"]) == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["items"]["total"] == 6
    # the judge's requests, and the pre-flight's one constrained probe (mapo.runs.preflight)
    assert {u["role"] for u in manifest["usage"]} == {"judge", "preflight"}
    assert [u["requests"] for u in manifest["usage"] if u["role"] == "preflight"] == [1]
    sent = fake_server.n
    assert sent == 6 + 1  # and the pre-flight probe

    ok(mapo(fake_server, tmp_path, "roles.judge=smollm2-135m", "judge=combined10"))
    assert fake_server.n == sent, "a resumed run sends no request"
    assert len(records(run)) == 6
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["items"]["resumed_done"] == 6 and manifest["throughput"]["requests"] == 0


def test_both_orders_gives_one_record_per_order_and_position_bias(fake_server, tmp_path):
    ok(mapo(fake_server, tmp_path, "judge=direct", "judge.both_orders=true"))
    recs = records(tmp_path / "run")
    assert sorted(r["order"] for r in recs) == ["AB"] * 6 + ["BA"] * 6
    for r in recs:  # label undoes the swap: pick A on a BA record means response_b won
        if r["label"] and r["label"] != "tie":
            assert (
                r["label"]
                == {("AB", "A"): "model_a", ("AB", "B"): "model_b", ("BA", "A"): "model_b", ("BA", "B"): "model_a"}[
                    (r["order"], r["pick"])
                ]
            )
    assert len({r["key"] for r in recs}) == 12 and {r["setup"] for r in recs} == {"direct"}
    main = json.loads((tmp_path / "run" / "agreement.json").read_text())["results"][0]
    assert set(main["by_order"]) == {"AB", "BA"}
    assert main["position_bias"]["n_pairs"] == 6


def test_jury_run_records_every_juror_and_every_subset(fake_server, tmp_path):
    ok(mapo(fake_server, tmp_path, "evaluator=jury", "roles.jurors=[smollm2-135m,gemma3-270m]", "judge=direct"))
    recs = records(tmp_path / "run")
    kinds = [r["kind"] for r in recs]
    assert kinds.count("juror") == 12 and kinds.count("jury") == 6
    jury = next(r for r in recs if r["kind"] == "jury")
    assert jury["judge"] == "jury[smollm2-135m+gemma3-270m]" and set(jury["detail"]["members"]) == {
        "smollm2-135m",
        "gemma3-270m",
    }
    agreement = json.loads((tmp_path / "run" / "agreement.json").read_text())
    names = {e["judge"] for e in agreement["results"]}
    assert names == {"jury[smollm2-135m+gemma3-270m]", "smollm2-135m", "gemma3-270m"}
    subsets = agreement["jury_subsets"][0]["subsets"]
    assert [s["members"] for s in subsets] == [["gemma3-270m", "smollm2-135m"]]


def test_jury_with_a_failed_juror_says_so_in_its_last_line_and_a_rerun_asks_that_juror_again(tmp_path):
    """`mapo evaluate evaluator=jury`: one juror's request rejected on one item. The run completes (the
    jury decided with the other juror) and its last line says a verdict lacks a juror's; after the fix
    the same command asks that juror again (before: never) and ends without the warning."""
    broken = {"on": True}
    asked: list[tuple[str, str]] = []  # (model, question) of every request

    def faults(n: int, body: dict):
        text = json.dumps(body["messages"])
        asked.append((body["model"], next((f"q{i}" for i in range(6) if f"Question {i}?" in text), "?")))
        if broken["on"] and body["model"] == "gemma3-270m" and "Question 2?" in text:
            return (400, {"error": {"message": "prompt is too long for this model", "code": 400}})
        return None

    args = ("evaluator=jury", "roles.jurors=[smollm2-135m,gemma3-270m]", "judge=direct", "client.cache=false")
    with FakeServer(faults=faults) as server:
        first = mapo(server, tmp_path, *args)
        ok(first)
        assert "complete with 1 verdict(s) missing a member's (a failed juror)" in first.stdout + first.stderr
        assert "Traceback" not in first.stdout + first.stderr
        broken["on"] = False
        asked.clear()
        fixed = mapo(server, tmp_path, *args)
        ok(fixed)
        items = [a for a in asked if a[1] != "q0"]  # q0: the pre-flight's probes
        assert items == [("gemma3-270m", "q2")], f"the rerun asks the failed juror only, once: {items}"
        assert "complete with" not in fixed.stdout + fixed.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["items"]["incomplete"] == 0 and manifest["items"]["failures_retried"] == 1


def test_debate_run(fake_server, tmp_path):
    ok(
        mapo(
            fake_server,
            tmp_path,
            "evaluator=debate",
            "roles.debaters=[smollm2-135m]",
            "debate.rounds=1",
            "eval_data.limit=2",
            "eval_data=local",
            f"eval_data.path={write_items(tmp_path / 'items.jsonl')}",
        )
    )
    recs = records(tmp_path / "run")
    assert len(recs) == 2 and all(r["kind"] == "debate" for r in recs)
    assert fake_server.n == 2 * (3 + 3) + 1  # 3 turns + 3 finals per item, the pre-flight's constrained probe
    d = recs[0]["detail"]
    assert [u["role"] for u in d["utterances"]] == ["general_public", "psychologist", "critic"]
    assert len(d["finals"]) == 3 and recs[0]["label"] in ("model_a", "model_b", "tie")


def test_multirun_sweeps_judges_and_strategies(fake_server, tmp_path):
    ok(
        mapo(
            fake_server,
            tmp_path,
            "-m",
            "judge=direct,combined10",
            "roles.judge=smollm2-135m,gemma3-270m",
            "eval_data.limit=2",
            "eval_data=local",
            f"eval_data.path={write_items(tmp_path / 'items.jsonl')}",
        )
    )
    runs = sorted(str(p.parent) for p in (tmp_path / "sweep").rglob("agreement.json"))
    assert len(runs) == 4, runs
    assert all("judge=" in r and "eval_data.path" not in r for r in runs)
    # juries of separate judge runs, formed offline
    from mapo.cli.agreement import main as agreement_main

    rc = agreement_main(
        [r for r in runs if "judge=combined10" in r] + ["--jury-subsets", "--out", str(tmp_path / "a.json")]
    )
    assert rc == 0
    tables = json.loads((tmp_path / "a.json").read_text())
    assert tables["jury_subsets"][0]["subsets"][0]["members"] == ["gemma3-270m", "smollm2-135m"]


def compose(server, tmp_path: Path, *overrides: str):
    """conf/evaluate.yaml composed in-process (the same Hydra composition as the CLI, without a process)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from mapo.core.config import register_configs

    register_configs()
    endpoints = [
        x
        for m in ("smollm2-135m", "gemma3-270m")
        for x in (f"models.{m}.endpoint=null", f"models.{m}.base_url={server.base_url}")
    ]
    data = ["eval_data=local", f"eval_data.path={write_items(tmp_path / 'items.jsonl')}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            "evaluate", [*endpoints, *data, "client.progress=off", f"output_dir={tmp_path / 'run'}", *overrides]
        )
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (("roles.judge=nobody",), "roles.judge='nobody' is not a known model"),
        (("evaluator=debate", "roles.debaters=[smollm2-135m,gemma3-270m]"), "roles.debaters lists 2 models"),
        (("evaluator=jury", "roles.jurors=[smollm2-135m,smollm2-135m]"), "more than once"),
        (("eval_data.limit=0",), "eval_data.limit must be >= 1"),
    ],
)
async def test_config_errors_fail_before_any_model_call(fake_server, tmp_path, overrides, match):
    from mapo.runs.evaluate import evaluate

    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("(", r"\(")):
        await evaluate(compose(fake_server, tmp_path, *overrides))
    assert fake_server.n == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("evaluator=panel", "evaluator", "[judge, jury, debate"),
        ("judge.strategy=vibes", "judge.strategy", "[direct, independent, combined, prometheus_absolute"),
        ("jury.aggregate=median", "jury.aggregate", "[mode, majority, mean_score]"),
    ],
)
def test_a_wrong_choice_fails_when_the_config_is_composed(fake_server, tmp_path, override, key, allowed):
    """Choices are typed (enums): Hydra refuses a wrong one while composing, naming the key and the allowed values."""
    with pytest.raises(Exception) as refused:
        compose(fake_server, tmp_path, override)
    chain = f"{refused.value} {refused.value.__cause__}"
    assert f"expected one of {allowed}" in chain and f"full_key: {key}" in chain, chain
    assert fake_server.n == 0 and not (tmp_path / "run").exists()


def test_a_config_error_exits_2_with_the_message(fake_server, tmp_path):
    proc = mapo(fake_server, tmp_path, "roles.judge=nobody")
    assert proc.returncode == 2
    assert "roles.judge='nobody' is not a known model" in proc.stdout + proc.stderr
    assert fake_server.n == 0


@pytest.mark.parametrize("override", ["selection.on_tie=keep", "feedback.iterations=3", "+prompts.limit=4"])
def test_a_key_evaluate_does_not_read_exits_2_naming_it(fake_server, tmp_path, override):
    """Accepted and ignored would be worse than refused: the user believes it changed the run."""
    proc = mapo(fake_server, tmp_path, override)
    out = proc.stdout + proc.stderr
    key = override.lstrip("+").split("=")[0]
    assert proc.returncode == 2 and f"{key}: mapo evaluate does not read {key.split('.')[0]}" in out, out[-2000:]
    assert fake_server.n == 0 and not (tmp_path / "run" / "judgements.jsonl").exists()


def test_bad_input_fails_before_any_model_call(fake_server, tmp_path):
    bad = write_items(tmp_path / "bad.jsonl")
    with open(bad, "a") as fh:
        fh.write('{"id": "x", "question": "q", "response_a": "a", "response_b": "b", "human": "A>B"}\n')
    proc = mapo(fake_server, tmp_path, "eval_data=local", f"eval_data.path={bad}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "line 7" in out and "'A>B'" in out
    assert fake_server.n == 0


@pytest.mark.skipif(
    shared_dir() is None or not (shared_dir() / "data/faireval/fair_eval.jsonl").is_file(),
    reason="FairEval is not in ../shared (set MAPO_SHARED)",
)
def test_faireval_default_set(fake_server, tmp_path):
    ok(mapo(fake_server, tmp_path, "eval_data.limit=4", "eval_data=faireval"))
    recs = records(tmp_path / "run")
    assert [r["item_id"] for r in recs] == ["0", "1", "2", "3"] or sorted(r["item_id"] for r in recs) == [
        "0",
        "1",
        "2",
        "3",
    ]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["eval_data"]["loader"] == "faireval" and manifest["eval_data"]["n_items"] == 4


# ---- helpers, no server -----------------------------------------------------------------


def test_combine_orders_mirrors_the_judge():
    a, b, t = (
        {"label": "model_a", "score_a": 8, "score_b": 2},
        {"label": "model_b", "score_a": 4, "score_b": 6},
        {"label": "tie", "score_a": 5, "score_b": 5},
    )
    assert combine_orders([a, a]) == ("model_a", 8, 2)
    assert combine_orders([a, b])[0] == "tie"  # inconsistent orders
    assert combine_orders([a, b], "mean_score")[0] == "model_a"  # 6 vs 4
    assert combine_orders([a, {"label": None}]) == ("model_a", 8, 2)  # a failed order is left out
    assert combine_orders([{"label": None}]) == (None, None, None)
    assert combine_orders([t, a])[0] == "tie"


def test_agreement_tables_leave_failures_out():
    recs = [
        {
            "key": str(i),
            "item_id": str(i),
            "kind": "judge",
            "judge": "j",
            "setup": "direct",
            "order": "AB",
            "label": lab,
            "pick": None,
            "human": h,
            "models": ["j"],
        }
        for i, (lab, h) in enumerate([("model_a", "model_a"), ("model_b", "model_b"), (None, "tie"), ("tie", "tie")])
    ]
    e = agreement_tables(recs)["results"][0]
    assert e["n"] == 3 and e["n_failed"] == 1 and e["kappa"] == pytest.approx(1.0)


def test_a_one_item_set_gets_its_kappa_and_no_interval(fake_server, tmp_path):
    """One item: the bootstrap has nothing to resample (it raised, an internal error, exit 1); now the run completes
    with the point estimate and says why there is no interval."""
    one = write_items(tmp_path / "one.jsonl", n=1)
    proc = mapo(fake_server, tmp_path, "eval_data=local", f"eval_data.path={one}")
    ok(proc)
    agreement = json.loads((tmp_path / "run" / "agreement.json").read_text())
    assert agreement["intervals_skipped"] == "1 item(s): a bootstrap needs at least 2; no interval, no verdict"
    assert "uncertainty" not in agreement and all("kappa_ci" not in e for e in agreement["results"])
    assert agreement["results"][0]["n"] == 1 and "[low, high]: none (1 item(s)" in proc.stdout + proc.stderr


def test_load_items_errors(tmp_path):
    with pytest.raises(ConfigError, match="eval_data is empty"):
        load_items({})
    with pytest.raises(ConfigError, match="unknown human-labelled set 'nope'"):
        load_items({"loader": "nope"})
    with pytest.raises(ConfigError, match="no such file"):
        load_items({"loader": "local", "path": str(tmp_path / "missing.jsonl")})
    rows, info = load_items({"loader": "local", "path": str(write_items(tmp_path / "x.jsonl")), "limit": 2})
    assert len(rows) == 2 and info["n_items"] == 2


@pytest.mark.skipif(
    shared_dir() is None or not (shared_dir() / "data/faireval/mapo-judgments").is_dir(),
    reason="the authors' FairEval judgments are not in ../shared (set MAPO_SHARED)",
)
def test_agreement_cli_on_the_authors_outputs_gives_the_published_kappas(tmp_path, capsys):
    from mapo.cli.agreement import main as agreement_main

    data = shared_dir() / "data" / "faireval"
    out = tmp_path / "authors.json"
    assert (
        agreement_main(
            [
                "--authors",
                str(data / "mapo-judgments"),
                "--humans",
                str(data / "fair_eval.jsonl"),
                "--jury-subsets",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "jury subsets" in printed and f"wrote {out}" in printed
    tables = json.loads(out.read_text())
    kappa = {e["judge"]: e["kappa"] for e in tables["results"]}
    assert kappa["gpt-4o"] == pytest.approx(0.3265, abs=1e-4)
    assert kappa["gemma-2-27b"] == pytest.approx(0.3886, abs=1e-4)
    assert kappa["debate[gpt-4o]"] == pytest.approx(0.4043, abs=1e-4)
    best = tables["jury_subsets"][0]["subsets"][0]
    assert best["kappa"] == pytest.approx(0.4283, abs=1e-4)
    assert best["members"] == ["gemma-2-27b", "gemma-2-9b", "gpt-4o-mini", "llama31-8b"]
    assert len(tables["jury_subsets"][0]["subsets"]) == 57  # every subset of 6 judges of size 2..6


def test_agreement_cli_usage_errors(tmp_path, capsys):
    from mapo.cli.agreement import main as agreement_main

    assert agreement_main([]) == 2
    assert agreement_main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


async def test_a_resume_with_another_judge_config_is_refused_naming_the_keys(fake_server, tmp_path):
    from mapo.core.config import ClientConfig, RolesConfig, RunConfig
    from mapo.runs.evaluate import evaluate
    from tests.conftest import fake_model

    def config(**judge) -> RunConfig:
        cfg = RunConfig(
            models={"j1": fake_model(fake_server, served_name="j1")},
            roles=RolesConfig(judge="j1"),
            eval_data={"loader": "local", "path": str(write_items(tmp_path / "items.jsonl", 4))},
            client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
            output_dir=str(tmp_path / "run"),
        )
        for k, v in judge.items():
            setattr(cfg.judge, k, v)
        return cfg

    await evaluate(config())
    sent = fake_server.n
    with pytest.raises(ConfigError, match=r"judge\.reask: 1 -> 2") as refused:
        await evaluate(config(reask=2))
    assert "judge.version" not in str(refused.value) and fake_server.n == sent
    again = await evaluate(config())  # the same config resumes
    assert again["items"]["resumed_done"] == 4 and fake_server.n == sent


# ---- uncertainty and scoring in the run's outputs ------------------------------------------


async def test_agreement_json_and_manifest_carry_the_configured_intervals_and_scoring(fake_server, tmp_path, caplog):
    """stats.* reach agreement.json (intervals, verdicts) and the printed table; the manifest
    counts how judge.scoring=expected scored (the fake server sends no logprobs: every answer kept as written)."""
    import logging

    from mapo.runs.evaluate import evaluate

    cfg = compose(
        fake_server,
        tmp_path,
        "roles.judge=smollm2-135m",
        "judge=combined10",
        "judge.scoring=expected",
        "stats.n_resamples=300",
        "stats.seed=7",
        "stats.margin=0.1",
    )
    with caplog.at_level(logging.INFO, logger="mapo"):
        manifest = await evaluate(cfg)
    agreement = json.loads((tmp_path / "run" / "agreement.json").read_text())
    u = agreement["uncertainty"]
    assert (u["n_resamples"], u["seed"], u["margin"]) == (300, 7, 0.1)
    main = agreement["results"][0]
    assert len(main["kappa_ci"]) == 2 and main["vs_reference"]["verdict"] == "reference"
    assert manifest["agreement"]["kappa_ci"] == main["kappa_ci"]
    assert manifest["agreement"]["uncertainty"]["n_resamples"] == 300
    assert "300 resamples, seed 7" in caplog.text
    assert manifest["scoring"] == {"argmax: the server sent no logprobs": 6}
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk["scoring"] == manifest["scoring"]


async def test_a_reference_not_in_the_run_fails_before_any_model_call(fake_server, tmp_path):
    from mapo.runs.evaluate import evaluate

    with pytest.raises(ConfigError, match=r"stats.reference='gpt-4o' is not an evaluator of this run"):
        await evaluate(compose(fake_server, tmp_path, "roles.judge=smollm2-135m", "stats.reference=gpt-4o"))
    assert fake_server.n == 0 and not (tmp_path / "run").exists()


BATCH_JUDGE = (
    "roles.judge=smollm2-135m",
    "judge=combined10",
    "models.smollm2-135m.batch.enabled=true",
    "models.smollm2-135m.batch.flush_s=0.2",
    "models.smollm2-135m.batch.poll_s=0.05",
    "models.smollm2-135m.price_in_per_mtok=2.0",
    "models.smollm2-135m.price_out_per_mtok=8.0",
)


def test_a_batch_api_judge_run_killed_while_waiting_resumes_and_pays_once(tmp_path):
    """`mapo evaluate` with the judge on the Batch API: SIGKILL while the batch is at the API, the same
    command again waits for that batch (no second batch, no online request), completes, and the
    manifest prices the judge at half."""
    with FakeServer(batch_hold=True) as server:
        args = mapo_args(server, tmp_path, *BATCH_JUDGE)
        proc = subprocess.Popen(args, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (server.batches and all(b.get("metadata") for b in server.batches.values())):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.05)
            time.sleep(0.5)  # the batch id is recorded in the cache
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert server.batches_created == 1
        manifest = tmp_path / "run" / "manifest.json"
        assert not manifest.exists() or json.loads(manifest.read_text())["status"] != "complete"
        server.batch_hold = False
        ok(subprocess.run(args, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120))
    assert server.batches_created == 1 and server.completed == 0  # no request sent twice, none online
    m = json.loads(manifest.read_text())
    assert m["status"] == "complete" and len(records(tmp_path / "run")) == 6
    (row,) = [u for u in m["usage"] if u["model"] == "smollm2-135m"]
    full = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
    assert row["requests"] == 6 and row["cost_usd"] == pytest.approx(full / 2, abs=1e-6)
