"""`mapo train` without vLLM: config checks, the split by prompt id, KTO weights, TRL passthrough,
and real (tiny) trainings on CPU: metrics, checkpoints, resume, the exported model entry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mapo.core.config import ConfigError
from mapo.training import data
from mapo.training.config import check
from mapo.training.train import last_checkpoint
from tests.conftest import REPO
from tests.training.conftest import write_build

pytest.importorskip("trl")

FAST = ["trl.logging_steps=1", "++trl.gradient_checkpointing=false", "progress=log"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from mapo.training.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("train", overrides=["output_dir=unused", *overrides]))


def run_train(*overrides: str):
    from mapo.runs.train import train

    return asyncio.run(train(compose(*overrides)))


# ---- config ------------------------------------------------------------------------------


def test_defaults_compose_to_dpo_and_train_kto_switches():
    cfg = compose()
    assert cfg.method == "dpo" and cfg.base_model == "smollm2-135m" and cfg.trl["beta"] == 0.1
    assert "smollm2-135m" in cfg.models
    kto = compose("train=kto", "trl.beta=0.3", "++trl.warmup_steps=2")
    assert kto.method == "kto" and kto.trl["beta"] == 0.3 and kto.trl["warmup_steps"] == 2
    check(kto)


@pytest.mark.parametrize(
    "override,match",
    [
        ("++trl.lerning_rate=1e-5", r"trl\.lerning_rate: not a field of trl\.DPOConfig .*did you mean learning_rate"),
        ("++trl.desirable_weight=2", r"trl\.desirable_weight: not a field of trl\.DPOConfig"),
        ("++trl.output_dir=/tmp/x", r"trl\.output_dir is set by mapo"),
        ("+colour=blue", r"unknown config key\(s\): colour"),
        ("+split.fracton=0.2", r"unknown config key\(s\): split\.fracton"),
        ("split.eval_fraction=1.0", r"split\.eval_fraction must be in \[0, 1\)"),
        ("save_dtype=int8", r"save_dtype='int8'"),
        ("name=a.b", r"name='a\.b'"),
        ("trl.learning_rate=abc", r"trl\.learning_rate='abc': not a number \(trl\.DPOConfig\.learning_rate\)"),
        ("++trl.max_steps=2.5", r"trl\.max_steps=2\.5: not an integer"),
        ("++trl.gradient_checkpointing=maybe", r"trl\.gradient_checkpointing='maybe': not true or false"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        check(compose(override))


def test_trl_numbers_written_as_text_are_read_as_numbers():
    """Before: `trl.learning_rate=abc` loaded the model, trained, and ended `failed` (exit 1) on a TypeError."""
    cfg = compose("++trl.learning_rate='5e-6'", "++trl.max_steps='3'")
    check(cfg)
    assert cfg.trl["learning_rate"] == 5e-6 and cfg.trl["max_steps"] == 3


def test_kto_fields_are_checked_against_kto_config():
    check(compose("train=kto", "++trl.desirable_weight=1.5"))
    with pytest.raises(ConfigError, match=r"trl\.loss_weights: not a field of trl\.KTOConfig"):
        check(compose("train=kto", "++trl.loss_weights=[1.0]"))


def test_lora_options_are_checked_against_peft():
    pytest.importorskip("peft")
    check(compose("lora.enabled=true", "++lora.options.use_rslora=true"))
    with pytest.raises(ConfigError, match=r"lora\.options\.use_rslroa: not a field of peft\.LoraConfig"):
        check(compose("lora.enabled=true", "++lora.options.use_rslroa=true"))


# ---- split and weights -------------------------------------------------------------------


def test_split_never_puts_a_prompt_on_both_sides_and_is_stable():
    ids = [f"p{i}" for i in range(200)]
    split = data.split_by_prompt(ids + ids[:50], 0.2, seed=0)  # repeated ids: rows of one prompt
    assert not set(split.train) & set(split.eval)
    assert set(split.train) | set(split.eval) == set(ids)
    assert 20 <= len(split.eval) <= 60  # ~40 expected
    # a subset (DPO drops tied prompts, KTO keeps them) agrees on every prompt it shares
    sub = data.split_by_prompt(ids[::3], 0.2, seed=0)
    assert set(sub.eval) == set(split.eval) & set(ids[::3])
    assert data.split_by_prompt(ids, 0.2, seed=1).eval != split.eval  # the seed reshuffles


def test_split_of_few_prompts_still_holds_one_out():
    split = data.split_by_prompt(["a", "b"], 0.01, seed=0)
    assert len(split.eval) == 1 and len(split.train) == 1
    assert data.split_by_prompt(["a", "b"], 0.0, seed=0).eval == []


def test_kto_weights_balance_the_label_counts():
    assert data.kto_weights([True] + [False] * 2) == (2.0, 1.0)
    d, u = data.kto_weights([True] * 3 + [False] * 7)
    assert (d, u) == (pytest.approx(7 / 3, abs=1e-6), 1.0)
    assert 1 <= d * 3 / (u * 7) <= 4 / 3  # the KTO paper's range
    with pytest.raises(ConfigError, match="desirable and undesirable"):
        data.kto_weights([True, True])


def test_dataset_of_the_wrong_method_is_refused(tmp_path):
    build = write_build(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"missing column\(s\) chosen, rejected.*KTO dataset"):
        data.load_rows(build / "dataset" / "kto", "dpo")
    with pytest.raises(ConfigError, match="no such file or folder"):
        data.load_rows(tmp_path / "nope", "dpo")
    assert len(data.load_rows(build / "dpo.jsonl", "dpo")) == len(data.load_rows(build, "dpo"))


# ---- real trainings of a tiny Llama on CPU --------------------------------------------------


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_trains_logs_checkpoints_resumes_and_exports(tiny_model, build_dir, tmp_path):
    run = tmp_path / "run"
    common = [f"base_model={tiny_model}", f"dataset={build_dir}", f"output_dir={run}", "split.eval_fraction=0.25"]
    common += [*FAST, "trl.save_steps=2", "++trl.beta=0.2", "trl.learning_rate=1.0e-3"]
    m = run_train(*common, "trl.max_steps=4")
    assert m["status"] == "complete" and m["global_step"] == 4 and m["trl_args"]["beta"] == 0.2
    assert m["precision"] == "fp32" and m["save_dtype"] == "float32"

    # the split: written, disjoint, and the held-out prompts are a winrate prompts file
    split = json.loads((run / "split.json").read_text())
    assert split["eval"] and not set(split["eval"]) & set(split["train"])
    held = [json.loads(line) for line in (run / "eval_prompts.jsonl").read_text().splitlines()]
    assert [h["id"] for h in held] == split["eval"] and all(h["prompt"].startswith("say") for h in held)
    assert m["data"]["eval_rows"] == 2 * len(split["eval"])

    recs = _records(run)
    train = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all("loss" in r and "rewards/margins" in r for r in train)
    evals = {r["step"]: r for r in recs if r["split"] == "eval"}
    assert {0, 4} <= set(evals) and "rewards/accuracies" in evals[4]
    assert m["eval_before"]["step"] == 0 and m["eval_after"]["step"] == 4
    assert m["eval_after"]["rewards/margins"] > m["eval_before"]["rewards/margins"] == 0  # it learned something
    assert (run / "metrics.png").stat().st_size > 10_000
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # the model entry: conf/model-shaped, served from the saved folder in the saved precision
    conf = yaml.safe_load(Path(m["model_config"]).read_text())
    entry = conf["tiny-llama-dpo"]
    assert entry["endpoint"] == entry["served_name"] == "tiny-llama-dpo"
    assert entry["serve"]["weights"] == str((run / "model").resolve()) and entry["serve"]["extra_args"][-2:] == [
        "--dtype",
        "float32",
    ]
    assert Path(m["model_config"]).read_text().startswith("# @package models")
    from mapo.serving import launch

    spec = launch.load_specs(Path(m["model_config"]).parent)["tiny-llama-dpo"]
    assert spec.weights == entry["serve"]["weights"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run / "model")
    assert AutoTokenizer.from_pretrained(run / "model").chat_template

    # a killed run logged past its last checkpoint: those records go, and a larger max_steps resumes
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"split": "train", "step": 5, "loss": 9.9}) + "\n")
    m2 = run_train(*common, "trl.max_steps=6")
    assert m2["resumed_from"].endswith("checkpoint-4") and m2["global_step"] == 6 and m2["steps_this_run"] == 2
    recs = _records(run)
    assert [r["step"] for r in recs if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("loss") != 9.9 for r in recs)
    assert m2["eval_before"]["step"] == 0  # kept from the first start, not re-run on resume

    # a resume that changes what is trained is refused, naming the key
    other = write_build(tmp_path / "other", n_prompts=6)
    with pytest.raises(ConfigError, match=r"holds checkpoints of another training \(dataset: "):
        run_train(*[c if not c.startswith("dataset=") else f"dataset={other}" for c in common], "trl.max_steps=8")


def test_kto_uses_weights_from_label_counts_unless_set(tiny_model, build_dir, tmp_path):
    common = [f"base_model={tiny_model}", f"dataset={build_dir}", "train=kto", *FAST, "trl.max_steps=1"]
    common += ["++trl.save_strategy=no", "trl.per_device_train_batch_size=3"]
    m = run_train(*common, f"output_dir={tmp_path / 'a'}")
    assert m["kto_weights"] == {"desirable": 2.0, "undesirable": 1.0, "auto": True}  # 1 chosen of 3 per prompt
    assert m["data"]["train_desirable"] * 2 == m["data"]["train_undesirable"]
    m = run_train(*common, f"output_dir={tmp_path / 'b'}", "++trl.undesirable_weight=0.5")
    assert m["kto_weights"] == {"desirable": 1.0, "undesirable": 0.5, "auto": False}


def test_lora_adapter_is_merged_into_the_saved_model(tiny_model, build_dir, tmp_path):
    pytest.importorskip("peft")
    import torch
    from safetensors.torch import load_file

    run = tmp_path / "lora"
    m = run_train(
        f"base_model={tiny_model}",
        f"dataset={build_dir}",
        f"output_dir={run}",
        *FAST,
        "trl.max_steps=2",
        "trl.learning_rate=1.0e-2",
        "++trl.save_strategy=no",
        "lora.enabled=true",
        "lora.r=4",
        "lora.target_modules=[q_proj,v_proj]",
    )
    assert m["status"] == "complete" and (run / "adapter" / "adapter_config.json").exists()
    merged, base = load_file(run / "model" / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert set(merged) == set(base)  # plain weights, no lora_A / lora_B left
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_trl_rejects_a_bad_value_as_a_config_error(tiny_model, build_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"trl: DPOConfig refused the settings"):
        run_train(
            f"base_model={tiny_model}", f"dataset={build_dir}", f"output_dir={tmp_path}", "++trl.eval_strategy=often"
        )


def _start_until_checkpoint(cmd: list[str], cwd: Path, env: dict, run: Path, after: str | None = None):
    """Start the command; return it once a complete checkpoint newer than ``after`` exists."""
    # one file: the ending line is logged where Hydra logs (stdout), progress and warnings go to stderr
    log_file = open(cwd / f"train-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 - read back by the caller
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    proc.log_file = log_file  # type: ignore[attr-defined]
    deadline = time.monotonic() + 180
    # a checkpoint folder appears before its trainer_state.json: wait for a complete one (a kill while it is
    # written leaves a torn one, which the resume skips: test_a_checkpoint_torn_by_a_kill_is_skipped)
    step = lambda c: int(c.rsplit("-", 1)[1]) if c else -1  # noqa: E731
    while step(last_checkpoint(run / "checkpoints")) <= step(after) and proc.poll() is None:
        assert time.monotonic() < deadline, "no new complete checkpoint after 180 s"
        time.sleep(0.1)
    assert proc.poll() is None, Path(log_file.name).read_text()[-3000:]
    return proc


@pytest.mark.timeout(420)
def test_ctrl_c_then_a_kill_then_the_same_command_finishes_the_job(tiny_model, build_dir, tmp_path):
    """Ctrl-C mid-training ends as every command's Ctrl-C does (manifest ``interrupted``, exit 130, one
    line); SIGKILL (no chance to clean up) leaves ``running``; the very same command line then resumes
    from the last checkpoint and finishes the job, every step logged once."""
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mapo", "train", f"base_model={tiny_model}", f"dataset={build_dir}"]
    cmd += [f"hydra.run.dir={run}", *FAST, "trl.max_steps=40", "trl.save_steps=2", "trl.per_device_train_batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = _start_until_checkpoint(cmd, tmp_path, env, run)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    err = Path(proc.log_file.name).read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and sum("run interrupted by SIGINT" in line for line in err.splitlines()) == 1, err
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["reason"] == "interrupted by SIGINT", m
    assert "model_dir" not in m and not (run / "model").exists()
    first = last_checkpoint(run / "checkpoints")

    proc = _start_until_checkpoint(cmd, tmp_path, env, run, after=first)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # killed: no chance to update

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "complete" and m["resumed_from"] and m["global_step"] == 40
    assert m["steps_this_run"] < 40
    steps = [r["step"] for r in _records(run) if r["split"] == "train"]
    assert steps == list(range(1, 41))  # every step logged once: nothing lost, nothing doubled


def test_a_checkpoint_torn_by_a_kill_is_skipped(tmp_path):
    from mapo.training.train import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, "{}"), (4, "{}"), (6, None), (8, '{"global_st')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


def test_the_model_entry_of_a_known_base_model_is_written_and_read_back(tmp_path):
    """A base model from conf/model carries StrEnum settings (system_role): the entry must still be plain YAML
    (mapo train base_model=<a conf/model name> ended in RepresenterError after the training)."""
    from mapo.core.config import ModelConfig, SystemRole
    from mapo.training.export import model_entry, write_model_config

    base = ModelConfig(served_name="base", system_role=SystemRole.merge)
    entry = model_entry("base-dpo", tmp_path, "float32", base)
    path = write_model_config(tmp_path, "base-dpo", entry, "test")
    back = yaml.safe_load(path.read_text())["base-dpo"]
    assert back["system_role"] == "merge" and back["served_name"] == "base-dpo"
    assert back["serve"]["extra_args"][-2:] == ["--dtype", "float32"]
