"""``python -m serve {up,down,status,prepare}``: run vLLM servers for the models in conf/model/.

python -m serve up                          # both embedded CPU models, detached
python -m serve up --model llama31-8b --host 0.0.0.0 --foreground   # in a SLURM job
python -m serve status
python -m serve down [--model NAME]
python -m serve prepare --model gemma3-270m # fetch + convert weights only
python -m serve plan --model llama31-70b --gpu-mem-gib 40 --gpus 8   # GPU dtype + memory plan, before sbatch
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time

from mapo.core import endpoints

from . import gpu_plan, launch, weights

log = logging.getLogger("serve")


def main(argv: list[str] | None = None) -> int:
    """``python -m serve``: run the sub-command; 1 on a launch or weights error."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (launch.LaunchError, weights.WeightsError, gpu_plan.PlanError) as exc:
        log.error("%s", exc)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def parallel(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tensor-parallel-size", type=int, metavar="N", help="override the config's (this launch)")
        p.add_argument("--pipeline-parallel-size", type=int, metavar="N", help="pipeline stages, one per node with Ray")

    def common(p: argparse.ArgumentParser, models_help: str) -> None:
        p.add_argument("--model", action="append", dest="models", metavar="NAME", help=models_help)
        p.add_argument(
            "--registry",
            metavar="PATH",
            help="endpoint registry (default $MAPO_ENDPOINTS or $MAPO_CACHE/endpoints.json)",
        )

    p = sub.add_parser("up", help="start servers and register them")
    common(p, f"model from conf/model/ (repeatable; default: {' '.join(launch.EMBEDDED)})")
    p.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 registers the hostname")
    p.add_argument("--port", type=int, default=0, help="first port; 0 picks free ports")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for readiness")
    p.add_argument("--conf-dir", metavar="DIR", help="model configs from DIR, not conf/model/ (a mapo train run's)")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached: unregister and stop the servers on SIGTERM/SIGINT or exit",
    )
    parallel(p)
    p.add_argument(
        "--distributed-executor-backend",
        choices=["ray", "mp"],
        help="vLLM's executor; ray for a server spanning nodes (slurm/serve-multinode.sbatch)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command of each server; start nothing")
    p.set_defaults(func=_up)

    p = sub.add_parser(
        "plan",
        help="GPU serving plan: dtype from the compute capability, weights + KV cache vs GPU memory",
        description="Checks (or with --tensor-parallel-size auto chooses) each model's tensor parallelism "
        "against the GPUs' memory; exit 1 with the numbers when a plan cannot fit. Shapes come from the "
        "model's config.json (local folder, HF cache) or the published values in mapo/serving/model_configs/.",
    )
    common(p, "model from conf/model/ (repeatable)")
    p.add_argument("--gpu-mem-gib", type=float, help="memory of one GPU in GiB (default: nvidia-smi here)")
    p.add_argument("--gpus", type=int, help="GPUs available to one server (default: nvidia-smi here)")
    p.add_argument(
        "--compute-capability", type=float, help="e.g. 7.0 (V100), 8.0 (A100), 9.0 (H100); default nvidia-smi, else 8.0"
    )
    p.add_argument("--tensor-parallel-size", metavar="N|auto", help="check N, or choose (auto); default: the config's")
    p.add_argument("--pipeline-parallel-size", type=int, default=None, metavar="N", help="stages (nodes); default 1")
    p.add_argument("--max-model-len", type=int, help="default: the config's serve.max_model_len")
    p.add_argument("--gpu-memory-utilization", type=float, help="default: the config's, else vLLM's 0.92")
    p.add_argument("--full-sequences", type=int, help="max_model_len sequences the KV cache must hold (default 4)")
    p.add_argument("--conf-dir", metavar="DIR", help="model configs from DIR, not conf/model/")
    p.set_defaults(func=_plan)

    p = sub.add_parser("down", help="stop servers started on this host and unregister them")
    common(p, "model to stop (repeatable; default: all)")
    p.set_defaults(func=_down)

    p = sub.add_parser("status", help="list registered servers and whether they answer")
    p.add_argument("--registry", metavar="PATH")
    p.set_defaults(func=_status)

    p = sub.add_parser("prepare", help="download and convert weights, start nothing")
    common(p, "model to prepare (repeatable; default: the embedded ones)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=_prepare)
    return parser


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_grace() -> float:
    """Seconds ``serve up --foreground`` gives its vLLM servers between SIGTERM and SIGKILL when it stops: 5 s
    less than slurm/env.sh's MAPO_KILL_WAIT (default 20), at most 30. ``run_one`` KILLs this process's group
    MAPO_KILL_WAIT s after its TERM; were the grace longer, a vLLM slow to stop (its own session: not in
    that group) would outlive us unkilled, reparented out of the job."""
    try:
        wait = float(os.environ.get("MAPO_KILL_WAIT") or 20)
    except ValueError:
        wait = 20.0
    return max(1.0, min(30.0, wait - 5))


class _StopOnce:
    """``serve up --foreground``'s signal handler: the first signal raises SystemExit(128 + signum), every
    later one returns. CPython runs a handler again for a signal that arrives while the first one's
    exception unwinds, so ignoring the signals in the ``finally`` is not enough on its own."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, _frame: object) -> None:
        if self.stopping:
            log.info("signal %d while stopping: ignored", signum)
            return
        self.stopping = True
        raise SystemExit(128 + signum)


def _up(args: argparse.Namespace) -> int:
    overrides = {
        "tensor_parallel_size": args.tensor_parallel_size,
        "pipeline_parallel_size": args.pipeline_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
    }
    if args.dry_run:
        for line in launch.dry_run(
            args.models, host=args.host, port=args.port or 8000, conf_dir=args.conf_dir, overrides=overrides
        ):
            print(line, flush=True)
        return 0
    up = functools.partial(
        launch.up,
        args.models,
        registry=args.registry,
        host=args.host,
        port=args.port,
        timeout=args.timeout,
        conf_dir=args.conf_dir,
        overrides=overrides,
    )
    if not args.foreground:
        detached = up()
        _print(detached)
        return 0

    # Foreground: the first signal becomes SystemExit, so the finally below always runs; any later one
    # is ignored (_StopOnce), or it would raise a second SystemExit inside the finally, before the
    # unregister (a SLURM scancel signals every process of the job and slurm/env.sh's run_one signals
    # this group again: two TERMs moments apart).
    _exit = _StopOnce()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _exit)
    servers: list[launch.Server] = []
    try:
        servers = up(detach=False)
        _print(servers)
        while servers:
            for server in servers:
                if server.proc is not None and (rc := server.proc.poll()) is not None:
                    log.error(
                        "%s exited with code %s; end of %s:\n%s",
                        server.endpoint.name,
                        rc,
                        server.log_path,
                        launch.tail(server.log_path),
                    )
                    return 1
            time.sleep(2)
        return 0
    finally:
        _exit.stopping = True  # a signal from here on (before the ignores below take) does nothing
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        grace = _stop_grace()
        for server in servers:
            launch.stop_server(server, registry=args.registry, grace=grace)
        if servers:
            log.info("stopped and unregistered %d server(s)", len(servers))


def _down(args: argparse.Namespace) -> int:
    stopped, skipped = launch.down(args.models, registry=args.registry)
    for ep in stopped:
        print(f"stopped {ep.name} {ep.base_url} (pid {ep.pid})")
    for ep in skipped:
        job = f", SLURM job {ep.job_id}: scancel it" if ep.job_id else ""
        print(f"skipped {ep.name} {ep.base_url}: runs on {ep.host}{job}")
    if not stopped and not skipped:
        print("nothing to stop")
    return 0


def _status(args: argparse.Namespace) -> int:
    dropped = endpoints.prune(args.registry)
    entries = endpoints.read_all(args.registry)
    print(f"registry {endpoints.registry_path(args.registry)}" + (f" (pruned {dropped} dead)" if dropped else ""))
    for ep in entries:
        state = "up" if launch._healthy(ep) else "DOWN"
        age = time.time() - ep.started_at
        job = f" job={ep.job_id}" if ep.job_id else ""
        print(
            f"{state:4} {ep.name:16} {ep.base_url:32} served={ep.served_name} host={ep.host} "
            f"pid={ep.pid}{job} age={age / 60:.0f}m"
        )
    if not entries:
        print("no servers registered")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    for spec in launch.select(args.models, launch.load_specs()):
        started = time.monotonic()
        path = weights.prepare(spec.name, spec.weights, force=args.force)
        print(f"{spec.name}: {path} ({time.monotonic() - started:.1f} s)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    if not args.models:
        raise launch.LaunchError("plan needs --model NAME (a model of conf/model/ with serve.weights)")
    here = gpu_plan.detect_gpu_info()
    mem = args.gpu_mem_gib or (here.memory_gib if here else None)
    count = args.gpus or (here.count if here else None)
    if mem is None or count is None:
        raise launch.LaunchError(
            "no nvidia-smi here: give --gpu-mem-gib and --gpus (the GPUs of the nodes you submit to)"
        )
    capability = args.compute_capability or (here.capability if here else 8.0)
    gpu = gpu_plan.GpuInfo(count=count, memory_gib=mem, capability=capability, name=here.name if here else "")
    choose = args.tensor_parallel_size == "auto"
    overrides: dict[str, object] = {
        "tensor_parallel_size": None if choose or args.tensor_parallel_size is None else int(args.tensor_parallel_size),
        "pipeline_parallel_size": args.pipeline_parallel_size,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "full_sequences": args.full_sequences,
    }
    refused = 0
    configured = launch.select(args.models, launch.load_specs(args.conf_dir))
    for spec, config_tp in zip(
        launch.with_overrides(configured, overrides), [s.tensor_parallel_size for s in configured], strict=True
    ):
        try:
            dtype, plan = launch.gpu_serving_plan(spec, gpu, choose_tp=choose)
        except gpu_plan.PlanError as exc:
            print(f"REFUSED {spec.name}: {exc}")
            refused += 1
            continue
        print(f"{spec.name}: dtype {dtype.dtype} ({dtype.why})")
        if plan is None:
            print(f"{spec.name}: no config.json to plan memory with; vLLM will decide at start-up")
            continue
        print(f"OK {plan.summary()}")
        for note in plan.notes:
            print(f"  note: {note}")
        tp_arg = f" --tensor-parallel-size {plan.tp}" if plan.tp != config_tp else ""
        if plan.pp > 1:
            print(f"  submit: sbatch --nodes={plan.pp} --gres=gpu:{plan.tp} slurm/serve-multinode.sbatch {spec.name}")
        else:
            print(f"  submit: sbatch --gres=gpu:{plan.tp} slurm/serve.sbatch {spec.name}{tp_arg}")
    return 1 if refused else 0


def _print(servers: list[launch.Server]) -> None:
    for server in servers:
        ep = server.endpoint
        print(
            f"{ep.name} {ep.base_url} served={ep.served_name} pid={ep.pid} key_file={ep.api_key_file} "
            f"log={server.log_path}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
