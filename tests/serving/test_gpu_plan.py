"""The GPU serving plan (mapo/serving/gpu_plan.py): dtype by compute capability and the memory planner,
with the published config.json values of the paper's models (shipped in mapo/serving/model_configs/)."""

from __future__ import annotations

import json
import os

import pytest

from mapo.serving import __main__ as serve_cli
from mapo.serving import gpu_plan, launch, weights
from mapo.serving.gpu_plan import GpuInfo, ModelShape, PlanError, choose_dtype, plan_memory

BF16 = choose_dtype(8.0, "llama")


def shape(repo: str, *, published: bool = True) -> ModelShape:
    config, _ = gpu_plan.load_model_config(repo)
    if not published:
        config = {k: v for k, v in config.items() if k != "_num_parameters"}
    return ModelShape.from_config(config)


LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
GEMMA_9B = "google/gemma-2-9b-it"
GEMMA_27B = "google/gemma-2-27b-it"


@pytest.mark.parametrize(
    ("repo", "card_billions"), [(LLAMA_70B, 70.6), (LLAMA_8B, 8.03), (GEMMA_9B, 9.24), (GEMMA_27B, 27.2)]
)
def test_parameters_computed_from_the_shapes_match_the_model_cards(repo, card_billions):
    computed = shape(repo, published=False)
    assert computed.parameters_from == "computed"
    assert computed.num_parameters == shape(repo).num_parameters  # the shipped count is the computed one
    assert computed.num_parameters / 1e9 == pytest.approx(card_billions, rel=0.005)


def test_kv_bytes_per_token_follow_the_published_shapes():
    llama = shape(LLAMA_70B)
    assert (llama.num_layers, llama.num_kv_heads, llama.head_dim, llama.vocab_size) == (80, 8, 128, 128256)
    assert llama.kv_bytes_per_token(2) == 2 * 80 * 8 * 128 * 2  # 320 KiB
    assert llama.kv_bytes_per_token(2, tp=4) == 80 * 1024
    assert llama.kv_bytes_per_token(2, tp=16) == 40 * 1024  # 8 KV heads: replicated beyond TP 8
    gemma = shape(GEMMA_9B)
    assert (gemma.head_dim, gemma.tie_word_embeddings, gemma.sliding_window, gemma.sliding_layers) == (
        256,
        True,
        4096,
        21,
    )


def test_dtype_follows_the_compute_capability():
    assert choose_dtype(9.0, "gemma2").dtype == "bfloat16"
    assert BF16.dtype == "bfloat16" and BF16.warning is None
    v100_llama = choose_dtype(7.0, "llama")
    assert v100_llama.dtype == "float16" and "overflow" in v100_llama.warning
    v100_gemma = choose_dtype(7.0, "gemma2")  # vLLM 0.32 refuses float16 for Gemma-2: float32, stated
    assert v100_gemma.dtype == "float32" and v100_gemma.bytes == 4 and "twice the weights memory" in v100_gemma.warning
    assert choose_dtype(7.5, "gemma2", forced="float32").dtype == "float32"
    with pytest.raises(PlanError, match="bfloat16 needs compute capability >= 8.0, these GPUs have 7.0"):
        choose_dtype(7.0, "llama", forced="bfloat16")
    with pytest.raises(PlanError, match="float16 for a gemma2 model: Gemma-2's activations overflow"):
        choose_dtype(9.0, "gemma2", forced="float16")


def test_planner_refuses_llama_70b_at_tp4_on_40gb_and_accepts_tp8():
    llama = shape(LLAMA_70B)
    with pytest.raises(PlanError) as refused:
        plan_memory(llama, model="llama31-70b", gpu_mem_gib=40, gpus=4, dtype=BF16, tp=4, max_model_len=16384)
    message = str(refused.value)
    assert "TP 4 x PP 1 (4 GPUs of 40 GiB, bfloat16) does NOT fit" in message
    assert "weights 32.9" in message and "80 KiB/token" in message and "needs 4 x max_model_len 16,384" in message
    assert "TP 8 (8 GPUs) fits" in message
    ok = plan_memory(llama, model="llama31-70b", gpu_mem_gib=40, gpus=8, dtype=BF16, tp=8, max_model_len=16384)
    assert ok.fits and ok.weights_gib == pytest.approx(16.4, abs=0.05) and ok.kv_tokens > 4 * 16384
    chosen = plan_memory(llama, model="llama31-70b", gpu_mem_gib=40, gpus=8, dtype=BF16, max_model_len=16384)
    assert chosen.tp == 8 and "chosen" in chosen.notes[-1]
    with pytest.raises(PlanError, match="largest layout on 4 GPUs"):
        plan_memory(llama, model="llama31-70b", gpu_mem_gib=40, gpus=4, dtype=BF16, max_model_len=16384)
    # The same TP 4 fits on 80 GB cards (the config's layout), and on 40 GB for one full-length sequence only.
    assert plan_memory(llama, model="m", gpu_mem_gib=80, gpus=4, dtype=BF16, tp=4, max_model_len=16384).fits
    one = plan_memory(llama, model="m", gpu_mem_gib=40, gpus=4, dtype=BF16, tp=4, max_model_len=16384, full_sequences=1)
    assert one.fits and 2 * 16384 <= one.kv_tokens < 3 * 16384  # two sequences of 16k, not four


def test_planner_covers_pipeline_stages_and_the_smaller_models():
    llama = shape(LLAMA_70B)
    staged = plan_memory(llama, model="m", gpu_mem_gib=40, gpus=8, dtype=BF16, tp=4, pp=2, max_model_len=16384)
    assert staged.fits and staged.kv_bytes_per_token == 40 * 1024  # 40 of 80 layers per stage
    with pytest.raises(PlanError, match="needs 8 GPUs, 4 given"):
        plan_memory(llama, model="m", gpu_mem_gib=80, gpus=4, dtype=BF16, tp=4, pp=2)
    llama8 = shape(LLAMA_8B)
    assert plan_memory(llama8, model="m", gpu_mem_gib=40, gpus=1, dtype=BF16, tp=1, max_model_len=16384).fits
    with pytest.raises(PlanError, match="largest max_model_len for 4 sequences here is 11,749"):
        plan_memory(llama8, model="m", gpu_mem_gib=24, gpus=1, dtype=BF16, tp=1, max_model_len=16384)
    assert plan_memory(llama8, model="m", gpu_mem_gib=24, gpus=1, dtype=BF16, tp=1, max_model_len=8192).fits
    gemma27 = shape(GEMMA_27B)
    with pytest.raises(PlanError, match="weights 50.7"):
        plan_memory(gemma27, model="m", gpu_mem_gib=40, gpus=1, dtype=BF16, tp=1, max_model_len=4096)
    assert plan_memory(gemma27, model="m", gpu_mem_gib=40, gpus=2, dtype=BF16, tp=2, max_model_len=4096).fits
    with pytest.raises(PlanError, match="over the model's max_position_embeddings 8,192"):
        plan_memory(shape(GEMMA_9B), model="m", gpu_mem_gib=80, gpus=1, dtype=BF16, max_model_len=16384)
    with pytest.raises(PlanError, match="does not divide its 16 heads"):
        plan_memory(shape(GEMMA_9B), model="m", gpu_mem_gib=80, gpus=8, dtype=BF16, tp=3)


def test_sliding_window_layers_need_only_the_window():
    gemma = shape(GEMMA_9B)
    at_window = plan_memory(gemma, model="m", gpu_mem_gib=80, gpus=1, dtype=BF16, tp=1, max_model_len=4096)
    longer = plan_memory(gemma, model="m", gpu_mem_gib=80, gpus=1, dtype=BF16, tp=1, max_model_len=8192)
    assert at_window.needed_kv_tokens == 4 * 4096
    assert longer.needed_kv_tokens == 4 * (4096 + 2048)  # half the layers keep 4096 of 8192 tokens


def test_config_json_is_read_from_a_local_folder_then_the_hf_cache(tmp_path, monkeypatch):
    folder = tmp_path / "mymodel"
    folder.mkdir()
    config = dict(json.loads((gpu_plan.MODEL_CONFIGS / "meta-llama--Llama-3.1-8B-Instruct.json").read_text()))
    config["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    found, source = gpu_plan.load_model_config(str(folder))
    assert found["num_hidden_layers"] == 2 and source == str(folder / "config.json")

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found, source = gpu_plan.load_model_config("org/tiny")
    assert found["num_hidden_layers"] == 2 and source.endswith("snapshots/abc/config.json")
    assert "published values" in gpu_plan.load_model_config(LLAMA_8B)[1]  # not cached: the shipped values
    with pytest.raises(PlanError, match="no config.json for 'org/unknown'.*serve prepare"):
        gpu_plan.load_model_config("org/unknown")


def _gpus(monkeypatch, memory_gib: float, capability: float = 8.0) -> None:
    monkeypatch.setattr(
        gpu_plan, "detect_gpu_info", lambda ids=None: GpuInfo(len(ids or [0]), memory_gib, capability, "TEST")
    )


def test_serve_up_refuses_an_impossible_plan_before_it_starts_anything(monkeypatch):
    specs = launch.load_specs()
    _gpus(monkeypatch, 40)
    with pytest.raises(launch.LaunchError, match="llama31-70b: .*TP 4 .*does NOT fit.*TP 8 \\(8 GPUs\\) fits"):
        launch._plan([specs["llama31-70b"]], gpus=[str(i) for i in range(8)])
    ((_, env, args),) = launch._plan(
        launch.with_overrides([specs["llama31-70b"]], {"tensor_parallel_size": 8}), gpus=[str(i) for i in range(8)]
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # the override's GPUs, not the config's 4
    assert args == ["--tensor-parallel-size", "8", "--dtype", "bfloat16"]
    _gpus(monkeypatch, 32, capability=7.0)  # V100: Gemma-2 in float32, told
    with pytest.raises(launch.LaunchError, match=r"float32\) does NOT fit.*weights 34.4.*TP 2 \(2 GPUs\) fits"):
        launch._plan([specs["gemma-2-9b"]], gpus=["0"])
    ((_, _, args),) = launch._plan(
        launch.with_overrides([specs["gemma-2-9b"]], {"tensor_parallel_size": 2}), ["0", "1"]
    )
    assert args[args.index("--dtype") + 1] == "float32"
    forced = launch.ServeSpec(name="g", served_name="g", weights=GEMMA_9B, extra_args=["--dtype", "float16"])
    with pytest.raises(launch.LaunchError, match="g: serve.dtype float16 for a gemma2 model"):
        launch._plan([forced], gpus=["0"])


def test_dry_run_prints_the_multinode_vllm_command(monkeypatch):
    monkeypatch.setattr(launch, "detect_gpus", lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what SLURM sets for --gres=gpu:2
    monkeypatch.setattr(gpu_plan, "detect_gpu_info", lambda ids=None: None)
    overrides = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}
    (line,) = launch.dry_run(["llama31-70b"], host="0.0.0.0", port=8000, overrides=overrides)
    assert "CUDA_VISIBLE_DEVICES" not in line  # Ray places the workers
    assert "vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-70B-Instruct" in line
    for part in ("--tensor-parallel-size 2", "--pipeline-parallel-size 2", "--distributed-executor-backend ray"):
        assert part in line
    assert "VLLM_API_KEY=<per-server key>" in line  # the real key is never printed


def test_plan_cli_exits_1_with_the_numbers_and_0_with_a_submit_line(capsys):
    assert serve_cli.main(["plan", "--model", "llama31-70b", "--gpu-mem-gib", "40", "--gpus", "4"]) == 1
    assert "REFUSED llama31-70b: llama31-70b at TP 4" in capsys.readouterr().out
    assert (
        serve_cli.main(
            ["plan", "--model", "llama31-70b", "--gpu-mem-gib", "40", "--gpus", "8", "--tensor-parallel-size", "auto"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "OK llama31-70b at TP 8" in out
    assert "submit: sbatch --gres=gpu:8 slurm/serve.sbatch llama31-70b --tensor-parallel-size 8" in out
    assert (
        serve_cli.main(
            [
                "plan",
                "--model",
                "gemma-2-9b",
                "--gpu-mem-gib",
                "32",
                "--gpus",
                "2",
                "--compute-capability",
                "7.0",
                "--tensor-parallel-size",
                "auto",
            ]
        )
        == 0
    )
    assert "dtype float32" in capsys.readouterr().out


def test_an_uncached_hf_model_on_an_offline_node_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.is_hf_id(LLAMA_8B) and weights.hf_cached(LLAMA_8B) is None
    with pytest.raises(
        weights.WeightsError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set.*serve prepare"
    ):
        weights.prepare("llama31-8b", LLAMA_8B)


def test_up_downloads_an_uncached_hf_model_before_the_readiness_wait_starts(tmp_path, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(launch.weights, "hf_cached", lambda repo: None)
    monkeypatch.setattr(launch.weights, "prepare", lambda name, source: calls.append(("download", name, source)))
    monkeypatch.setattr(
        launch, "start_servers", lambda specs, **kw: calls.append(("start", [s.name for s in specs], kw["timeout"]))
    )
    launch.up(["llama31-8b", "smollm2-135m"], registry=tmp_path / "endpoints.json", timeout=1234)
    assert calls[0] == ("download", "llama31-8b", LLAMA_8B)
    assert calls[-1] == ("start", ["llama31-8b", "smollm2-135m"], 1234)  # the wait starts after the download


FAKE_NVIDIA_SMI = """#!/bin/sh
# nvidia-smi of a node with four A100-SXM4-40GB
case "$*" in
  -L) for i in 0 1 2 3; do echo "GPU $i: NVIDIA A100-SXM4-40GB (UUID: GPU-$i)"; done ;;
  *query-gpu=index,name,memory.total,compute_cap*) for i in 0 1 2 3; do echo "$i, NVIDIA A100-SXM4-40GB, 40960, 8.0"; done ;;
  *) exit 9 ;;
esac
"""


def test_serve_up_on_a_node_whose_nvidia_smi_shows_four_40gb_gpus(tmp_path, monkeypatch, capsys):
    """The GPU path end to end up to the vLLM command: nvidia-smi's answer -> GPUs, dtype, memory plan."""
    (tmp_path / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_plan.detect_gpu_info(["2", "3"]) == GpuInfo(2, 40.0, 8.0, "NVIDIA A100-SXM4-40GB")
    assert serve_cli.main(["up", "--model", "llama31-70b", "--dry-run"]) == 1  # the config's TP 4: refused
    assert serve_cli.main(["up", "--model", "llama31-8b", "--model", "gemma-2-27b", "--dry-run"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("CUDA_VISIBLE_DEVICES=0 ") and "--tensor-parallel-size 1 --dtype bfloat16" in first
    assert second.startswith("CUDA_VISIBLE_DEVICES=1,2 ") and "--tensor-parallel-size 2 --dtype bfloat16" in second
