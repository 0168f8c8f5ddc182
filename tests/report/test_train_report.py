"""Reports of `mapo train` runs (a real tiny DPO training on CPU), the A vs B table of a winrate run of
one configuration against one baseline (a trained model against its base), and the leaderboard
skipping train runs."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import pytest

from mapo.core.config import (
    ClientConfig,
    ProgressMode,
    PromptSource,
    PromptSourceConfig,
    RolesConfig,
    RunConfig,
    WinrateConfiguration,
)
from mapo.report import leaderboard
from mapo.report import render as report
from mapo.report.document import ci
from mapo.runs.winrate import winrate
from tests.conftest import fake_model
from tests.fake_openai import FakeServer
from tests.report.test_report import check_files, evaluate_run, md_name
from tests.training.conftest import write_build


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> Path:
    """A complete DPO run of the tiny Llama: 4 steps, eval at steps 0, 2 and 4 on a quarter of the prompts."""
    pytest.importorskip("trl")
    from tests.training.test_train import FAST, run_train

    root = tmp_path_factory.mktemp("train")
    build = write_build(root / "build")
    run = root / "runs" / "train"
    run_train(
        f"base_model={tiny_model}",
        f"dataset={build}",
        f"output_dir={run}",
        "split.eval_fraction=0.25",
        *FAST,
        "trl.max_steps=4",
        "trl.save_steps=2",
        "trl.learning_rate=1.0e-3",
        "++trl.beta=0.2",
    )
    return run


def test_train_report_shows_setup_progress_metrics_before_after_and_the_model(trained, tmp_path):
    m = json.loads((trained / "manifest.json").read_text())
    assert m["status"] == "complete" and m["eval_before"] and m["eval_after"]
    page, md = check_files(report.write_report(trained, tmp_path / "out"))
    assert "mapo train: DPO of " in page and "Training setup" in page
    for section in ("Training progress", "Training metrics", "Held-out evaluation: before and after training"):
        assert f"## {section}" in md
    # config: method, base model, LoRA, the TRL keys set (with their values)
    assert "| method | DPO |" in md and f"| base model | {md_name(m['base_model'])} |" in md
    assert "| LoRA | off (full fine-tuning) |" in md
    assert "| beta | 0.2 |" in md and "| max\\_steps | 4 |" in md and "| learning\\_rate | 0.001 |" in md
    # status, steps and steps/s
    assert "| status | complete |" in md and "| global step | 4 |" in md
    assert f"| steps / s | {m['steps_per_s']:.4f} |" in md
    # the training metrics figure (train lines and eval points of loss, accuracy, margin)
    assert (tmp_path / "out" / "figures" / "training_metrics.png").stat().st_size > 10_000
    # eval before (step 0) and after (step 4), from the same numbers as the manifest
    b, a = m["eval_before"], m["eval_after"]
    assert "| eval metric | before (step 0) | after (step 4) | change |" in md
    row = (
        f"| rewards/margins | {b['rewards/margins']:.4f} | {a['rewards/margins']:.4f} | "
        f"{a['rewards/margins'] - b['rewards/margins']:+.4f} |"
    )
    assert row in md
    assert f"| rewards/accuracies | {b['rewards/accuracies']:.4f} | {a['rewards/accuracies']:.4f} |" in md
    # where the trained model's config lives, and the command that serves it
    conf = trained / "conf" / "model" / "tiny-llama-dpo.yaml"
    assert conf.is_file() and f"| model config | {md_name(str(conf))} |" in md
    serve = f"python -m serve up --conf-dir {shlex.quote(str(conf.parent))} --model tiny-llama-dpo"
    assert serve in md and serve in page
    assert "mapo winrate" not in md  # the base is a local folder, not a model entry a winrate could name
    assert "Costs: tokens and time per role" not in page  # no model calls: no empty sections


def test_report_of_a_killed_training_reads_metrics_jsonl(tmp_path):
    """Killed before it wrote eval_after (status still running): before/after come from metrics.jsonl."""
    run = tmp_path / "train"
    run.mkdir()
    manifest = {"command": "train", "status": "running", "method": "kto", "base_model": "smollm2-135m"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.yaml").write_text(
        "method: kto\nlora: {enabled: true, r: 8, alpha: 16, dropout: 0.0, "
        "target_modules: [q_proj, v_proj], options: {}}\ntrl: {beta: 0.1}\n"
    )
    recs = [{"split": "eval", "step": 0, "loss": 0.69, "rewards/margins": 0.0}]
    recs += [{"split": "train", "step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.01 * s} for s in (1, 2, 3)]
    recs += [{"split": "eval", "step": 3, "loss": 0.6, "rewards/margins": 0.05}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"split": "tr')  # torn
    _, md = check_files(report.write_report(run))
    assert "This training is not complete (status: running)" in md
    assert "| method | KTO |" in md and "| LoRA | r=8, alpha=16, dropout=0.0, modules q\\_proj, v\\_proj" in md
    assert "| beta | 0.1 |" in md  # the TRL keys of config.yaml when the manifest has none yet
    assert "| loss | 0.6900 | 0.6000 | -0.0900 |" in md and "after (step 3)" in md
    assert "| global step | 3 |" in md
    assert "No trained model yet" in md


# --------------------------------------------------------------------------- A vs B (trained vs base)


def versus_run(server: FakeServer, tmp_path: Path) -> Path:
    models = {n: fake_model(server, served_name=n) for n in ("tiny-dpo", "tiny", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(judge="judge", baselines=["tiny"]),
        configurations=[WinrateConfiguration(name="trained", generator="tiny-dpo", reviewers=[])],
        prompts=PromptSourceConfig(source=PromptSource.builtin, limit=6),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress=ProgressMode.off),
        output_dir=str(tmp_path / "winrate"),
        max_items_in_flight=4,
    )
    asyncio.run(winrate(cfg))
    return tmp_path / "winrate"


def test_one_configuration_against_one_baseline_gets_the_a_vs_b_table(server, tmp_path):
    run = versus_run(server, tmp_path)
    wr = json.loads((run / "winrate.json").read_text())
    cell = wr["table"]["trained"]["tiny"]
    n = cell["n"]
    assert n and n + cell["failed"] == 6
    _, md = check_files(report.write_report(run))
    assert "## A vs B: trained vs tiny" in md
    assert md.index("## A vs B") < md.index("## Win rate against baselines")
    win = md_name(ci(cell["win_rate"], cell.get("win_rate_ci"), percent=True))
    loss = md_name(ci(cell["losses"] / n, cell.get("loss_rate_ci"), percent=True))
    tie = md_name(ci(cell["tie_rate"], cell.get("tie_rate_ci"), percent=True))
    half = cell["win_rate_ties_half"]
    lo, hi = cell.get("win_rate_ties_half_ci") or (None, None)
    a_half = md_name(ci(half, cell.get("win_rate_ties_half_ci"), percent=True))
    b_half = md_name(ci(1 - half, None if lo is None else [1 - hi, 1 - lo], percent=True))
    assert f"| A: configuration | trained (tiny-dpo) | {cell['wins']} | {win} | {a_half} |" in md
    assert f"| B: baseline | tiny | {cell['losses']} | {loss} | {b_half} |" in md
    assert f"| tie |  | {cell['ties']} | {tie} |  |" in md

    # with intervals (as the statistics work writes them): each rate shows its interval, and the verdict
    cell.update(
        wins=5,
        losses=1,
        ties=0,
        failed=0,
        n=6,
        win_rate=5 / 6,
        tie_rate=0.0,
        win_rate_ties_half=5 / 6,
        win_rate_ci=[0.5, 1.0],
        tie_rate_ci=[0.0, 0.0],
        win_rate_ties_half_ci=[0.55, 1.0],
    )
    (run / "winrate.json").write_text(json.dumps(wr))
    _, md = check_files(report.write_report(run))
    assert "| A: configuration | trained (tiny-dpo) | 5 | 83.3% \\[50.0, 100.0\\] | 83.3% \\[55.0, 100.0\\] |" in md
    # no loss_rate_ci in the file: B's bare rate; its share with ties as half mirrors A's interval
    assert "| B: baseline | tiny | 1 | 16.7% | 16.7% \\[0.0, 45.0\\] |" in md
    assert "| tie |  | 0 | 0.0% \\[0.0, 0.0\\] |  |" in md
    assert "The interval lies above 50%: the judge prefers trained (A)." in md
    cell["win_rate_ties_half_ci"] = [0.3, 0.9]
    (run / "winrate.json").write_text(json.dumps(wr))
    _, md = check_files(report.write_report(run))
    assert "The interval includes 50%: these 6 comparisons cannot tell A and B apart." in md


def test_several_configurations_get_no_a_vs_b_table(server, tmp_path):
    from tests.report.test_report import winrate_run

    _, md = check_files(report.write_report(winrate_run(server, tmp_path)))
    assert "A vs B" not in md and "## Win rate against baselines" in md


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_skips_train_runs(trained, server, tmp_path, capsys):
    assert leaderboard.main([str(trained), "--out", str(tmp_path / "lb0")]) == 2  # nothing to rank, no crash
    assert "no `mapo evaluate` runs" in capsys.readouterr().err
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    evaluate_run(server, sweep, "judge", name="eval")
    (sweep / "train").symlink_to(trained, target_is_directory=True)
    assert leaderboard.main([str(sweep), "--out", str(tmp_path / "lb")]) == 0
    assert str(trained) not in (tmp_path / "lb" / "leaderboard.csv").read_text()
