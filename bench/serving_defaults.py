"""CPU serving defaults, chosen by measurement: the README main job under each serving variant,
on a quiet machine and with one core kept busy by another process, in one run.

Each variant starts the embedded servers (``python -m mapo.serving up``) with its environment
or extra vLLM arguments, runs ``mapo build`` (the README main job: 20 prompts, N=3, the judge
both orders) with the response cache off, first quiet, then while a spinning process holds one
core, and stops the servers. Variants:

  default      what ``serve up`` does: each server's OpenMP threads bound to its own core,
               1 GiB KV cache, vLLM's batching defaults
  nobind       VLLM_CPU_OMP_THREADS_BIND=nobind: the OS places both servers' threads
  kv4          VLLM_CPU_KVCACHE_SPACE=4 (GiB)
  mbt1024      --max-num-batched-tokens 1024 (smaller prefill chunks between decode steps)
  mbt8192      --max-num-batched-tokens 8192
  shared       one SmolLM2 server for every role (reviewer too), bound to all cores: one server
               vs one per model (the job differs: its reviewer is SmolLM2)

    python bench/serving_defaults.py --out bench/results            # ~40 min on 2 cores
    python bench/serving_defaults.py --variants default nobind      # a subset

Wall times are as ratios inside this one run (machines differ; the CPU is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mapo.core.config import resource_dir  # noqa: E402
from mapo.serving.cpu import cpu_info  # noqa: E402

PY = sys.executable
MAPO = str(Path(PY).with_name("mapo"))


@dataclass
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    overrides: tuple[str, ...] = ()
    """Extra `mapo build` overrides (the shared variant moves the reviewer to SmolLM2)."""


VARIANTS = {
    v.name: v
    for v in (
        Variant("default"),
        Variant("nobind", env={"VLLM_CPU_OMP_THREADS_BIND": "nobind"}),
        Variant("kv4", env={"VLLM_CPU_KVCACHE_SPACE": "4"}),
        Variant("mbt1024", extra_args=["--max-num-batched-tokens", "1024"]),
        Variant("mbt8192", extra_args=["--max-num-batched-tokens", "8192"]),
        Variant(
            "shared",
            env={"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, sorted(os.sched_getaffinity(0))))},
            models=("smollm2-135m",),
            overrides=("roles.reviewers=[smollm2-135m]",),
        ),
    )
}


def conf_dir_with(extra_args: list[str], into: Path) -> Path:
    """A copy of the shipped model configs with ``extra_args`` added to every served model."""
    into.mkdir(parents=True, exist_ok=True)
    for file in sorted((resource_dir("conf") / "model").glob("*.yaml")):
        data = yaml.safe_load(file.read_text()) or {}
        for cfg in data.values():
            if isinstance(cfg, dict) and cfg.get("serve"):
                cfg["serve"]["extra_args"] = list(cfg["serve"].get("extra_args") or []) + extra_args
        (into / file.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return into


def serve(command: str, registry: Path, variant: Variant, work: Path) -> None:
    args = [PY, "-m", "mapo.serving", command, "--registry", str(registry)]
    env = {**os.environ, **variant.env}
    if command == "up":
        for m in variant.models:
            args += ["--model", m]
        if variant.extra_args:
            args += ["--conf-dir", str(conf_dir_with(variant.extra_args, work / f"conf-{variant.name}"))]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"serve {command} ({variant.name}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def main_job(registry: Path, variant: Variant, work: Path, label: str) -> dict:
    run_name = f"{variant.name}-{label}"
    args = [
        MAPO,
        "build",
        f"run_name={run_name}",
        f"client.registry={registry}",
        "client.cache=false",
        "client.progress=off",
        *variant.overrides,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mapo build ({run_name}) failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((work / "runs" / run_name / "manifest.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "run_wall_s": manifest["timings_s"]["wall"],
        "status": manifest["status"],
        "rows": manifest["rows"],
        "completion_tokens_per_s": manifest["throughput"]["completion_tokens_per_s"],
    }


def spinner() -> subprocess.Popen:
    """Another process keeping one core busy (unpinned: the OS places it, as on a laptop)."""
    return subprocess.Popen([PY, "-c", "while True: pass"])


def measure(variant: Variant, work: Path) -> dict:
    registry = work / f"endpoints-{variant.name}.json"
    t0 = time.monotonic()
    serve("up", registry, variant, work)
    started = time.monotonic() - t0
    try:
        quiet = main_job(registry, variant, work, "quiet")
        spin = spinner()
        try:
            busy = main_job(registry, variant, work, "busy")
        finally:
            spin.kill()
            spin.wait()
    finally:
        serve("down", registry, variant, work)
    return {
        "variant": variant.name,
        "env": variant.env,
        "extra_args": variant.extra_args,
        "models": list(variant.models),
        "overrides": list(variant.overrides),
        "server_start_s": round(started, 1),
        "quiet": quiet,
        "busy": busy,
        "busy_over_quiet": round(busy["wall_s"] / quiet["wall_s"], 2),
    }


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["variant"] == "default"), results[0])
    lines = [
        "| variant | quiet s | one core busy s | busy / quiet | quiet vs default | gen tok/s quiet | DPO rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['quiet']['wall_s']} | {r['busy']['wall_s']} | {r['busy_over_quiet']} | "
            f"{r['quiet']['wall_s'] / base['quiet']['wall_s']:.2f} | {r['quiet']['completion_tokens_per_s']} | "
            f"{r['quiet']['rows'].get('dpo')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mapo-serving-defaults-"))
    results = []
    try:
        for name in args.variants:
            result = measure(VARIANTS[name], work)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "cpu": cpu_info(),
        "command": "python bench/serving_defaults.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    (out / "serving_defaults.json").write_text(json.dumps(report, indent=1) + "\n")
    md = (
        f"# CPU serving defaults: the README main job per variant\n\nCPU: {report['cpu']['model']}, "
        f"{report['cpu']['cores']} cores, flags {' '.join(report['cpu']['flags'])}. Command: `{report['command']}`.\n\n"
        + table(results)
        + "\n"
    )
    (out / "serving_defaults.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
