"""Client memory is flat in the number of items: the real `mapo build` over N distinct prompts
against a fast fake OpenAI server (tests/fake_openai.FakeServer) in another process, so only
mapo's own memory is counted. Per N: peak RSS of the mapo process (psutil polling every
0.1 s), wall time, items/s, and the RSS at 25/50/75 % of the run (growth within one run).

    .venv/bin/python bench/memory.py --sizes 1000 10000 100000 --out bench/results

The claim: peak RSS at the largest N is within ~1.5x of the smallest (the ~250 MB of imports
is constant; what is left per item is the keys of the record stores and the prompt ids seen).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m", "gemma3-270m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    """FakeServer in its own process: its memory and CPU are not the client's."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(REPO)!r}); "
        f"from tests.fake_openai import FakeServer; FakeServer(port={port}).start(); time.sleep(10**7)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake server did not start")


def build_command(prompts: Path, tmp: Path, n: int, port: int, iterations: int, width: int) -> list[str]:
    overrides = [f"models.{m}.endpoint=null" for m in MODELS]
    overrides += [f"models.{m}.base_url=http://127.0.0.1:{port}/v1" for m in MODELS]
    return [
        sys.executable,
        "-m",
        "mapo",
        "build",
        "prompts.source=file",
        f"prompts.path={prompts}",
        "prompts.limit=null",
        f"feedback.iterations={iterations}",
        "client.progress=log",
        f"client.cache_path={tmp}/cache-{n}.sqlite",
        f"hydra.run.dir={tmp}/run-{n}",
        f"max_items_in_flight={width}",
        *overrides,
    ]


def run(
    n: int,
    tmp: Path,
    port: int,
    iterations: int,
    width: int,
    log_dir: Path,
    server: psutil.Process,
    profile: Path | None = None,
    resume: bool = False,
) -> dict:
    prompts = tmp / f"prompts-{n}.jsonl"
    with open(prompts, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Write one sentence about the number {i}."}) + "\n")
    cmd = build_command(prompts, tmp, n, port, iterations, width)
    if profile is not None:  # the same command under cProfile (slower: for where the time goes, not for figures)
        cmd[1:1] = ["-m", "cProfile", "-o", str(profile / f"build-{n}.prof")]
    log_path = log_dir / f"memory-{n}.log"
    samples: list[tuple[float, int]] = []
    marks: list[tuple[float, float, int]] = []
    """(wall s, the build's CPU s, items done): items done counted from selections.jsonl as it grows."""
    sels = tmp / f"run-{n}" / "selections.jsonl"
    counted = [0, 0]  # bytes read, lines seen
    server_cpu0 = sum(server.cpu_times()[:2])
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        while True:  # wait4: the child's own CPU time (user + system), exact, whatever else runs on the machine
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                now = time.perf_counter() - t0
                samples.append((now, ps.memory_info().rss))
                if not marks or now - marks[-1][0] >= 1.0:
                    times = ps.cpu_times()
                    marks.append((now, times.user + times.system, _lines(sels, counted)))
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    server_cpu = sum(server.cpu_times()[:2]) - server_cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"mapo build failed for n={n} (rc {proc.returncode}); see {log_path}")
    manifest = json.loads((tmp / f"run-{n}" / "manifest.json").read_text())
    done = manifest["items"]["done"]
    assert done == n, (done, n)
    mb = 2**20

    def rss_at(frac: float) -> float:
        t = frac * wall
        return round(min(samples, key=lambda s: abs(s[0] - t))[1] / mb, 1)

    resumed = resume_run(cmd, tmp / f"run-{n}", log_dir / f"memory-{n}-resume.log", n) if resume else {}
    return {
        "items": n,
        "peak_rss_mb": round(max(r for _, r in samples) / mb, 1),
        "wall_s": round(wall, 1),
        "items_per_s": round(n / wall, 1),
        "wall_ms_per_item": round(1000 * wall / n, 3),
        "cpu_s": round(cpu, 1),
        "cpu_ms_per_item": round(1000 * cpu / n, 3),
        "server_cpu_ms_per_item": round(1000 * server_cpu / n, 3),
        "rss_mb_at_25_50_75pct": [rss_at(f) for f in (0.25, 0.5, 0.75)],
        "requests": manifest["throughput"]["requests"],
        "rows": manifest.get("rows"),
        "build_wall_s": manifest["timings_s"]["wall"],
        "marginal": marginal(marks, n),
        **phases(marks, n, cpu, wall),
        **resumed,
    }


def resume_run(cmd: list[str], run_dir: Path, log_path: Path, n: int) -> dict:
    """The same command again into the finished folder: every record store scanned, every item skipped
    as done, the datasets published again. Its CPU per item is the resume scan's (flat, or growing)."""
    samples: list[int] = []
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                samples.append(ps.memory_info().rss)
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the resumed build failed for n={n}; see {log_path}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["items"]["resumed_done"] == n, manifest["items"]
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "resume_cpu_s": round(cpu, 1),
        "resume_cpu_ms_per_item": round(1000 * cpu / n, 3),
        "resume_wall_s": round(wall, 1),
        "resume_peak_rss_mb": round(max(samples, default=0) / 2**20, 1),
        "resume_requests": manifest["throughput"]["requests"],
    }


def phases(marks: list[tuple[float, float, int]], n: int, cpu: float, wall: float) -> dict:
    """CPU and wall before the first item was done (imports, config, pre-flight) and after the last
    one (publishing the datasets, quality indicators, manifest): a one-off cost, or one that grows with N."""
    first = next((m for m in marks if m[2] > 0), None)
    last = next((m for m in marks if m[2] >= n), None)
    return {
        "startup_cpu_s": None if first is None else round(first[1], 1),
        "startup_wall_s": None if first is None else round(first[0], 1),
        "finish_cpu_s": None if last is None else round(cpu - last[1], 1),
        "finish_wall_s": None if last is None else round(wall - last[0], 1),
    }


def _lines(path: Path, counted: list[int]) -> int:
    """Lines of ``path`` so far, reading only what was appended since the last call."""
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(counted[0])
        data = fh.read()
        counted[0] += len(data)
        counted[1] += data.count(b"\n")
    return counted[1]


def marginal(marks: list[tuple[float, float, int]], n: int, parts: int = 10) -> list[dict]:
    """CPU and wall ms per item within each tenth of the items (by items done): a cost that grows
    with the work shows as a rising row within one run, whatever the start-up and the final write cost."""
    out = []
    for i in range(parts):
        lo, hi = n * i // parts, n * (i + 1) // parts
        a = next((m for m in marks if m[2] >= lo), None)
        b = next((m for m in marks if m[2] >= hi), None)
        if a is None or b is None or b[2] <= a[2]:
            continue
        items = b[2] - a[2]
        out.append(
            {
                "items": [a[2], b[2]],
                "cpu_ms_per_item": round(1000 * (b[1] - a[1]) / items, 3),
                "wall_ms_per_item": round(1000 * (b[0] - a[0]) / items, 3),
            }
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [r["items"] for r in rows]
    ax.plot(xs, [r["peak_rss_mb"] for r in rows], marker="o", label="peak RSS")
    ax.plot(xs, [r["rss_mb_at_25_50_75pct"][1] for r in rows], marker="s", ls="--", label="RSS mid-run")
    for r in rows:
        ax.annotate(
            f"{r['peak_rss_mb']:.0f} MB",
            (r["items"], r["peak_rss_mb"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_ylim(0, max(r["peak_rss_mb"] for r in rows) * 1.3)
    ax.set_xlabel("prompts (N)")
    ax.set_ylabel("mapo build RSS (MB)")
    ax.set_title("client memory vs number of prompts", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--iterations", type=int, default=1, help="feedback.iterations")
    ap.add_argument("--width", type=int, default=64, help="max_items_in_flight")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--profile", type=Path, help="run each build under cProfile, writing DIR/build-N.prof")
    ap.add_argument(
        "--resume", action="store_true", help="then rerun each build into its finished folder (resume scan)"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(port)
    log_dir = Path(tempfile.mkdtemp(prefix="mapo-memory-logs-"))  # kept: each run's log
    rows = []
    try:
        with tempfile.TemporaryDirectory() as d:
            for n in sorted(args.sizes):
                rows.append(
                    run(
                        n,
                        Path(d),
                        port,
                        args.iterations,
                        args.width,
                        log_dir,
                        psutil.Process(server.pid),
                        args.profile,
                        args.resume,
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
                write(rows, args, out)  # after each row: a long run cut short keeps the rows it finished
    finally:
        server.terminate()
        server.wait(10)
    result = write(rows, args, out)
    plot(rows, out / "memory.png")
    print(json.dumps(result, indent=2))


def cpu_facts() -> dict:
    """lscpu's model name and the vector flags (every figure is quoted with its CPU)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor() or "unknown", "flags": []}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    keep = ("avx", "amx", "fma", "sse4")
    return {
        "model": fields.get("Model name", "unknown").strip(),
        "flags": [f for f in flags if f.startswith(keep)],
    }


def write(rows: list[dict], args: argparse.Namespace, out: Path) -> dict:
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    result = {
        "command": " ".join(
            [
                "python bench/memory.py",
                "--sizes",
                *map(str, args.sizes),
                "--iterations",
                str(args.iterations),
                "--width",
                str(args.width),
                *(["--resume"] if args.resume else []),
            ]
        ),
        "mapo_command": " ".join(
            build_command(Path("<prompts.jsonl>"), Path("<tmp>"), 0, 0, args.iterations, args.width)[1:]
        ),
        "host": {
            "cpus": psutil.cpu_count(),
            "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "cpu": cpu_facts(),
        },
        "rows": rows,
        "ratio_largest_to_smallest": round(ratio, 3),
        "per_item_kb": round(
            (rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]) * 1024 / max(1, rows[-1]["items"] - rows[0]["items"]), 3
        ),
        "flat": ratio <= 1.5,
        "cpu_per_item_ratio_largest_to_smallest": round(rows[-1]["cpu_ms_per_item"] / rows[0]["cpu_ms_per_item"], 3),
        "cpu_flat": rows[-1]["cpu_ms_per_item"] <= 1.15 * rows[0]["cpu_ms_per_item"],
    }
    (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
