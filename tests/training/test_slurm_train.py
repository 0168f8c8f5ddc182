"""slurm/train.sbatch on the real local SLURM cluster: two processes (one per allocated fake GPU)
train the tiny Llama under `accelerate launch` with a CPU accelerate config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_slurm import jobs, slurm_cluster  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slurm

CONFIG = Path(__file__).with_name("accelerate-cpu.yaml")


@pytest.mark.timeout(600)
def test_train_sbatch_runs_one_process_per_gpu(jobs, tiny_model, build_dir):  # noqa: F811
    job = jobs.sbatch(
        "--gres=gpu:2",
        "--cpus-per-task=2",
        "--mem=6G",
        "--time=15:00",
        "slurm/train.sbatch",
        f"base_model={tiny_model}",
        f"dataset={build_dir}",
        "run_name=slurm-train",
        "trl.max_steps=4",
        "trl.save_steps=2",
        "trl.logging_steps=1",
        "++trl.gradient_checkpointing=false",
        env={"MAPO_ACCELERATE_CONFIG": str(CONFIG)},
    )
    assert jobs.wait(job, 540) == [("COMPLETED", "0:0")], jobs.log_tail()
    run = jobs.workdir / "runs" / "slurm-train"
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "complete" and m["world_size"] == 2 and m["global_step"] == 4, m
    assert (run / "checkpoints" / "checkpoint-4").is_dir() and (run / "model" / "model.safetensors").is_file()
    log = jobs.log_tail(20000)
    assert "mapo-train: 2 process(es)" in log
    # one process writes: every step logged once
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
