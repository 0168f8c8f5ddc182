"""``mapo winrate`` on the fake server: table shape, half-win arithmetic, baselines, resume."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapo.core.config import (
    ClientConfig,
    ConfigError,
    PromptSourceConfig,
    RolesConfig,
    RunConfig,
    StatsConfig,
    WinrateConfiguration,
)
from mapo.report.winrate import render_folder, winrate_table
from mapo.runs.winrate import tally, winrate
from tests.conftest import REPO, fake_model


def outcomes(**counts):
    out = []
    for outcome, n in counts.items():
        out += [{"configuration": "X", "baseline": "Y", "outcome": outcome}] * n
    return out


def test_half_win_arithmetic():
    cell = tally(outcomes(win=3, tie=1, loss=1, failed=1))["X"]["Y"]
    assert (cell["wins"], cell["ties"], cell["losses"], cell["failed"], cell["n"]) == (3, 1, 1, 1, 5)
    assert cell["win_rate"] == pytest.approx(0.6)  # failures are not in n
    assert cell["tie_rate"] == pytest.approx(0.2)
    assert cell["win_rate_ties_half"] == pytest.approx(0.7)
    only_failed = tally(outcomes(failed=2))["X"]["Y"]
    assert only_failed["n"] == 0 and only_failed["win_rate"] is None


def test_table_shape_rows_configurations_columns_baselines():
    recs = [
        {"configuration": c, "baseline": b, "outcome": o}
        for c, b, o in [("c1", "b1", "win"), ("c1", "b2", "tie"), ("c2", "b1", "loss"), ("c2", "b2", "win")]
    ]
    t = winrate_table(tally(recs), ["c1", "c2"], ["b1", "b2"])
    rows = list(csv.reader(io.StringIO(t["csv"])))
    assert [r[0] for r in rows] == ["configuration", "c1", "c2"]
    assert rows[0][1:4] == ["vs b1 win%", "vs b1 tie%", "vs b1 win% (ties as half)"]
    assert rows[1][1] == "100.0" and rows[1][6:9] == ["0.0", "100.0", "50.0"]  # c1 vs b2: one tie = half a win
    assert "ties reported separately" in t["md"] and "ties counted as half-wins" in t["md"]
    assert "| c2 | 0.0% (ties 0.0%, n=1) | 100.0% (ties 0.0%, n=1) |" in t["md"]


def run_config(server, tmp_path, **kw) -> RunConfig:
    models = {name: fake_model(server, served_name=name) for name in ("gen", "rev", "base1", "base2", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(judge="judge", baselines=["base1", "base2"]),
        configurations=[
            WinrateConfiguration(name="gen+rev", generator="gen", reviewers=["rev"]),
            WinrateConfiguration(name="gen alone", generator="gen", reviewers=[]),
        ],
        prompts=PromptSourceConfig(source="builtin", limit=4),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_winrate_end_to_end_and_resume(fake_server, tmp_path):
    manifest = await winrate(run_config(fake_server, tmp_path))
    run = tmp_path / "run"
    for name in ("winrate.csv", "winrate.md", "winrate.json", "winrate.png", "manifest.json"):
        assert (run / name).is_file(), name
    assert (run / "winrate.png").read_bytes()[:4] == b"\x89PNG"
    # the command writes the data; the Markdown and CSV are the report's rendering of winrate.json alone
    written = {n: (run / n).read_bytes() for n in ("winrate.md", "winrate.csv")}
    for n in written:
        (run / n).unlink()
    render_folder(run)
    assert {n: (run / n).read_bytes() for n in written} == written
    table = json.loads((run / "winrate.json").read_text())
    assert table["rows"] == ["gen+rev", "gen alone"] and table["columns"] == ["base1", "base2"]
    for c in table["rows"]:
        for b in table["columns"]:
            cell = table["table"][c][b]
            assert cell["n"] + cell["failed"] == 4
            assert cell["win_rate_ties_half"] == pytest.approx((cell["wins"] + cell["ties"] / 2) / cell["n"])
    gens = lines(run / "generations.jsonl")
    loop = [g for g in gens if g["configuration"] == "gen+rev"]
    assert len(loop) == 4 and all(
        len(g["iterations"]) == 3 and g["final"] == g["iterations"][-1]["response"] for g in loop
    )
    single = [g for g in gens if g["configuration"] == "gen alone"]
    assert all(len(g["iterations"]) == 1 and g["iterations"][0]["reviews"] == [] for g in single)
    # a baseline is one fresh generation by the baseline model: the prompt alone, nothing else
    bases = lines(run / "baselines.jsonl")
    assert sorted(b["baseline"] for b in bases) == ["base1"] * 4 + ["base2"] * 4
    judgements = lines(run / "judgements.jsonl")
    assert len(judgements) == 2 * 2 * 4
    assert all(j["outcome"] in ("win", "loss", "tie", "failed") and j["judge"] == "judge" for j in judgements)
    # the length-controlled win rate is fitted on the run's own judgements, with the lengths recorded
    assert all(j["length_a"] > 0 and j["length_b"] > 0 for j in judgements)
    for c in table["rows"]:
        for b in table["columns"]:
            cell = table["table"][c][b]
            if cell["n"] >= 3:
                assert 0 <= cell["lc_win_rate"] <= 1 and cell["lc_win_rate_ci"][0] <= cell["lc_win_rate_ci"][1]
    assert "Length-controlled win rate" in (run / "winrate.md").read_text()
    roles = {(u["role"], u["model"]) for u in manifest["usage"]}
    assert {
        ("baseline", "base1"),
        ("baseline", "base2"),
        ("judge", "judge"),
        ("reviewer", "rev"),
        ("generator", "gen"),
    } <= roles
    from mapo.runs.reparse import reparse_run

    summary = reparse_run(run)  # stored raw texts re-parse to the stored verdicts
    assert summary["judgements.jsonl"]["changed"] == 0 and summary["generations.jsonl"]["reviews_changed"] == 0
    sent = fake_server.n
    manifest = await winrate(run_config(fake_server, tmp_path))
    assert fake_server.n == sent and manifest["throughput"]["requests"] == 0
    assert len(lines(run / "judgements.jsonl")) == 16


async def test_identical_responses_are_a_tie_without_a_judge_call(fake_server, tmp_path):
    # the single generation by "gen" and the baseline "gen" are the same request: same text
    cfg = run_config(
        fake_server,
        tmp_path,
        roles=RolesConfig(judge="judge", baselines=["gen"]),
        configurations=[WinrateConfiguration(name="gen alone", generator="gen")],
    )
    await winrate(cfg)
    judgements = lines(tmp_path / "run" / "judgements.jsonl")
    assert all(j["identical"] and j["outcome"] == "tie" and j["raw"] == [] for j in judgements)
    cell = json.loads((tmp_path / "run" / "winrate.json").read_text())["table"]["gen alone"]["gen"]
    assert cell["win_rate"] == 0 and cell["win_rate_ties_half"] == pytest.approx(0.5)


async def test_both_orders(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path)
    cfg.judge.both_orders = True
    await winrate(cfg)
    j = next(x for x in lines(tmp_path / "run" / "judgements.jsonl") if not x["identical"])
    assert [a["order"] for a in j["detail"]["attempts"]] == ["AB", "BA"] and j["setup"] == "combined10/both"


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"roles": RolesConfig(judge="judge", baselines=[])}, "roles.baselines is empty"),
        ({"configurations": []}, "configurations is empty"),
        (
            {"configurations": [WinrateConfiguration(name="x", generator="ghost", reviewers=[])]},
            r"configurations\[0\].generator='ghost'",
        ),
        (
            {"configurations": [WinrateConfiguration(name="x", generator="gen", reviewers=["rev", "rev", "rev"])]},
            "0, 1 or 2 reviewers",
        ),
        (
            {
                "configurations": [
                    WinrateConfiguration(name="x", generator="gen"),
                    WinrateConfiguration(name="x", generator="rev"),
                ]
            },
            "used twice",
        ),
        ({"stats": StatsConfig(reference="nobody")}, "stats.reference='nobody' is not a configuration"),
    ],
)
async def test_config_errors_before_any_call(fake_server, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        await winrate(run_config(fake_server, tmp_path, **kw))
    assert fake_server.n == 0


def test_cli_composes_conf_winrate(fake_server, tmp_path):
    endpoints = [
        x
        for m in ("smollm2-135m", "gemma3-270m")
        for x in (f"models.{m}.endpoint=null", f"models.{m}.base_url={fake_server.base_url}")
    ]
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("mapo")),
            "winrate",
            *endpoints,
            "client.progress=off",
            "prompts.limit=2",
            "feedback.iterations=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((tmp_path / "run" / "winrate.json").read_text())
    assert table["rows"] == ["smollm2+gemma3", "gemma3+smollm2", "smollm2+both"]
    assert table["columns"] == ["smollm2-135m", "gemma3-270m"]


def test_cli_a_hub_dataset_that_cannot_be_loaded_is_a_config_error_before_any_call(fake_server, tmp_path):
    """`mapo winrate prompts.source=hf prompts.path=<not on the Hub>` (offline here): exit 2, one line naming
    prompts.path, no model call, no manifest. Before: the run started, then ended `failed` (exit 1)
    with "internal error ConnectionError"."""
    endpoints = [
        x
        for m in ("smollm2-135m", "gemma3-270m")
        for x in (f"models.{m}.endpoint=null", f"models.{m}.base_url={fake_server.base_url}")
    ]
    args = [str(Path(sys.executable).with_name("mapo")), "winrate", *endpoints, "client.progress=off"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sent = fake_server.n
    proc = subprocess.run(
        [*args, "prompts.source=hf", "prompts.path=no-such-org/no-such-set", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "internal error" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "prompts.path=no-such-org/no-such-set" in line]
    assert len(errors) == 1 and "cannot load this Hugging Face dataset" in errors[0], out[-3000:]
    assert fake_server.n == sent and not (tmp_path / "run" / "manifest.json").exists()


async def test_a_resume_with_another_config_is_refused_naming_the_keys(fake_server, tmp_path):
    await winrate(run_config(fake_server, tmp_path))
    sent = fake_server.n
    changed = run_config(fake_server, tmp_path)
    changed.configurations[0].reviewers = ["base1"]
    changed.models["base2"].generation.temperature = 0.7
    with pytest.raises(ConfigError) as refused:
        await winrate(changed)
    for key in ('configurations.gen+rev.reviewers: ["rev"] -> ["base1"]', "models.base2.generation.temperature: 0.0"):
        assert key in str(refused.value), str(refused.value)
    assert fake_server.n == sent
    changed.on_config_change = "new_run"
    manifest = await winrate(changed)
    assert manifest["status"] == "complete" and manifest["output_dir"] == str(tmp_path / "run-2")
    stamps = {r["config_fingerprint"] for r in lines(tmp_path / "run-2" / "judgements.jsonl")}
    assert stamps == {manifest["config_fingerprint"]}


async def test_every_win_rate_has_its_interval_and_the_paired_comparison(fake_server, tmp_path):
    """winrate.json/md/csv carry each rate's bootstrap interval (stats.* settings) and each configuration's
    paired comparison with the reference configuration; `mapo report` shows both."""
    from mapo.report import render

    stats = StatsConfig(n_resamples=500, seed=3, margin=0.1, reference="gen alone")
    manifest = await winrate(run_config(fake_server, tmp_path, stats=stats))
    run = tmp_path / "run"
    wr = json.loads((run / "winrate.json").read_text())
    assert (wr["uncertainty"]["n_resamples"], wr["uncertainty"]["seed"]) == (500, 3)
    assert wr["uncertainty"]["reference"] == "gen alone"
    for c in wr["rows"]:
        for b in wr["columns"]:
            cell = wr["table"][c][b]
            for rate in ("win_rate", "tie_rate", "win_rate_ties_half"):
                lo, hi = cell[f"{rate}_ci"]
                assert lo <= cell[rate] <= hi, (c, b, rate)
    assert wr["comparisons"]["gen alone"]["base1"]["verdict"] == "reference"
    comp = wr["comparisons"]["gen+rev"]["base1"]
    win = {c: wr["table"][c]["base1"]["win_rate"] for c in wr["rows"]}
    assert comp["diff"] == pytest.approx(win["gen+rev"] - win["gen alone"]) and comp["margin"] == 0.1
    assert comp["verdict"] in ("not_worse", "worse", "cannot_tell") and len(comp["diff_ci"]) == 2
    assert manifest["comparisons"] == wr["comparisons"]
    md = (run / "winrate.md").read_text()
    assert "[95% CI]" in md and "## Win rate against the reference configuration (gen alone)" in md
    rows = list(csv.reader(io.StringIO((run / "winrate.csv").read_text())))
    assert rows[0][1:6] == [
        "vs base1 win%",
        "vs base1 tie%",
        "vs base1 win% (ties as half)",
        "vs base1 n",
        "vs base1 failed",
    ]
    assert "vs base1 win% ci low" in rows[0] and "vs base2 verdict" in rows[0]
    assert rows[2][rows[0].index("vs base1 verdict")] == "reference"
    render.write_report(run)
    page = (run / "report" / "report.md").read_text()
    assert "Δ win rate vs reference" in page and "| gen+rev | base1 |" in page and "reference |" in page


def test_table_with_intervals_and_comparisons():
    cells = {"c1": {"b": {**tally(outcomes(win=1))["X"]["Y"], "win_rate_ci": [0.5, 1.0], "tie_rate_ci": [0.0, 0.0]}}}
    comps = {
        "c1": {
            "b": {
                "reference": "c0",
                "diff": -0.2,
                "diff_ci": [-0.5, 0.1],
                "n": 4,
                "margin": 0.05,
                "verdict": "cannot_tell",
                "n_needed": 40,
            }
        }
    }
    t = winrate_table(cells, ["c1"], ["b"], comps)
    assert "| c1 | 100.0% [50.0, 100.0] (ties 0.0% [0.0, 0.0], n=1) |" in t["md"]
    assert "| c1 | -20.0 pts [-50.0, +10.0]: cannot tell with n=4 (~40 needed) |" in t["md"]


async def test_winrate_compares_with_any_registered_evaluator(fake_server, tmp_path):
    """evaluator=jury: the comparisons are judged by the jury (judging.evaluators.from_config), named by it."""
    cfg = run_config(fake_server, tmp_path, evaluator="jury")
    cfg.models["judge2"] = fake_model(fake_server, served_name="judge2")
    cfg.roles.jurors = ["judge", "judge2", "rev"]
    manifest = await winrate(cfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "judgements.jsonl").read_text().splitlines()]
    assert recs and {r["judge"] for r in recs} == {"jury[judge+judge2+rev]"} and manifest["judge"] == recs[0]["judge"]
    fp = json.loads((tmp_path / "run" / "fingerprint.json").read_text())["keys"]
    assert fp["evaluator"] == "jury" and fp["roles.jurors"] == ["judge", "judge2", "rev"] and "jury.aggregate" in fp
