"""The vLLM-CPU dtype follows the CPU: float32 where bfloat16 is emulated, bfloat16 where it is native;
MAPO_VLLM_DTYPE and a --dtype in serve.extra_args win. Fake /proc/cpuinfo texts, the real plan code."""

from __future__ import annotations

import logging

import pytest

from mapo.serving import cpu, launch

# Abridged /proc/cpuinfo of two real machines (first processor entry; the rest repeats it).
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu avx2 avx512_bf16
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
"""


def test_cpu_info_reads_model_and_relevant_flags_of_the_first_cpu():
    epyc = cpu.cpu_info(EPYC_AVX2)
    assert epyc["model"] == "AMD EPYC 7B12"
    assert epyc["flags"] == ["avx2"] and epyc["bf16_native"] is False  # the second entry is not read
    spr = cpu.cpu_info(SAPPHIRE_RAPIDS)
    assert spr["model"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert spr["flags"] == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
    assert spr["bf16_native"] is True and spr["cores"] >= 1
    arm = cpu.cpu_info(GRAVITON)
    assert arm["flags"] == [] and arm["bf16_native"] is False and arm["model"]  # from platform


def test_dtype_follows_the_cpu_and_explicit_choices_win():
    epyc, spr = cpu.cpu_info(EPYC_AVX2), cpu.cpu_info(SAPPHIRE_RAPIDS)
    dtype, why = cpu.choose_dtype([], epyc, env={})
    assert dtype == "float32" and "AMD EPYC 7B12 has no native bfloat16" in why
    dtype, why = cpu.choose_dtype([], spr, env={})
    assert dtype == "bfloat16" and "avx512_bf16, amx_bf16" in why
    assert cpu.choose_dtype([], epyc, env={"MAPO_VLLM_DTYPE": "bfloat16"})[0] == "bfloat16"
    for extra in (["--dtype", "float16"], ["--max-num-seqs", "8", "--dtype=half"]):
        dtype, why = cpu.choose_dtype(extra, epyc, env={"MAPO_VLLM_DTYPE": "bfloat16"})
        assert dtype is None and "extra_args" in why


@pytest.mark.parametrize(("text", "expected"), [(EPYC_AVX2, "float32"), (SAPPHIRE_RAPIDS, "bfloat16")])
def test_cpu_plan_passes_the_dtype_and_logs_cpu_and_choice(tmp_path, monkeypatch, caplog, text, expected):
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    monkeypatch.setattr(cpu, "CPUINFO", fake)
    monkeypatch.delenv(cpu.DTYPE_ENV, raising=False)
    specs = launch.load_specs()
    with caplog.at_level(logging.INFO, logger="mapo.serving.launch"):
        plans = launch._plan([specs["smollm2-135m"], specs["gemma3-270m"]], gpus=[])
    for _, _, args in plans:
        assert args[args.index("--dtype") + 1] == expected and args.count("--dtype") == 1
    assert cpu.cpu_info(text)["model"] in caplog.text and f"smollm2-135m: dtype {expected}" in caplog.text

    monkeypatch.setenv(cpu.DTYPE_ENV, "float16")
    ((_, _, args),) = launch._plan([specs["smollm2-135m"]], gpus=[])
    assert args[args.index("--dtype") + 1] == "float16"
    spec = launch.ServeSpec(name="m", served_name="m", weights="x", extra_args=["--dtype", "bfloat16"])
    ((_, _, args),) = launch._plan([spec], gpus=[])
    assert "--dtype" not in args, "the model's own --dtype (in extra_args, appended later) is the only one"


def test_gpu_plan_leaves_the_dtype_to_vllm(monkeypatch):
    monkeypatch.setenv(cpu.DTYPE_ENV, "float32")
    spec = launch.ServeSpec(name="m", served_name="m", weights="x")
    ((_, _, args),) = launch._plan([spec], gpus=["0"])
    assert "--dtype" not in args
