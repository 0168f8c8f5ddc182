"""Client memory is flat in the number of items: the real `mapo build` over N prompts
(1k, 10k, ... ) against a fast fake OpenAI server in another process; peak RSS of the mapo
process (psutil polling) per N.

    python bench/memory.py --sizes 1000 10000 30000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, tmp: Path, port: int) -> dict:
    prompts = tmp / f"prompts-{n}.jsonl"
    with open(prompts, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Write one sentence about the number {i}."}) + "\n")
    overrides = [f"models.{m}.endpoint=null" for m in ("smollm2-135m", "gemma3-270m")]
    overrides += [f"models.{m}.base_url=http://127.0.0.1:{port}/v1" for m in ("smollm2-135m", "gemma3-270m")]
    cmd = [sys.executable, "-m", "mapo", "build", "prompts.source=file", f"prompts.path={prompts}", "prompts.limit=null",
           "feedback.iterations=1", "client.progress=log", f"client.cache_path={tmp}/cache-{n}.sqlite",
           f"hydra.run.dir={tmp}/run-{n}", "max_items_in_flight=64", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"mapo build failed for n={n}"
    done = json.loads((tmp / f"run-{n}" / "manifest.json").read_text())["items"]["done"]
    assert done == n, (done, n)
    return {"items": n, "peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1), "items_per_s": round(n / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", f"import sys,time; sys.path.insert(0, {str(REPO)!r}); "
                               f"from tests.fake_openai import FakeServer; FakeServer(port={port}).start(); time.sleep(10**6)"])
    time.sleep(3)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as d:
            for n in args.sizes:
                rows.append(run(n, Path(d), port))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)}
    (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["items"] for r in rows], [r["peak_rss_mb"] for r in rows], marker="o")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("prompts")
    ax.set_ylabel("peak RSS of mapo build (MB)")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
