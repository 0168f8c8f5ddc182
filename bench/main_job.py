"""The README main job, timed: ``python -m serve up`` then ``mapo build`` (README command 1 after the install).

Per run: the wall time of ``serve up`` and where it goes (weights conversion, when the converted
folder is not cached yet; per server, from its log: Python and vLLM imports until vLLM's first
line, weights loading, engine init with the KV cache and warm-up, the API server start), then
for each build variant (config overrides; response cache off, a fresh run folder) the wall time
of ``mapo build``, its items done and failed, the responses cut by max_tokens
(``finish_reason: length``), the DPO/KTO rows, retries and requests answered 500 (grammar
compile timeouts) or sent unconstrained. The servers are stopped at the end.

    .venv/bin/python bench/main_job.py --dtype float32 --variant default= --out bench/results

``--dtype float32`` sets ``MAPO_VLLM_DTYPE`` (what ``serve up`` picks on an AVX2-only CPU, where
bfloat16 is emulated): on a CPU with native bfloat16 it estimates the AVX2 path's numeric type,
not its speed (AVX-512 float32 is still wider than AVX2's). ``--variant NAME=k=v,k=v`` adds a
build with those overrides (repeatable; ``default=`` is the README command as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mapo.core import endpoints  # noqa: E402
from mapo.serving import launch, weights  # noqa: E402
from mapo.serving.cpu import cpu_info  # noqa: E402

_STAMP = re.compile(r"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")
_TOOK = re.compile(r"(?i)([A-Za-z][^\]\n]{3,80}?) took ([\d.]+) ?s(?:econds)?")


def server_phases(log_path: Path) -> dict:
    """Where one server's start-up went, from its log (the part after the last ``===`` header)."""
    text = log_path.read_text(errors="replace")
    part = text[text.rfind("\n=== ") + 1 :]
    header = part.splitlines()[0]
    started = datetime.strptime(header[4:23], "%Y-%m-%d %H:%M:%S")

    def at(line: str) -> float | None:
        m = _STAMP.search(line)
        if not m:
            return None
        mo, d, h, mi, s = map(int, m.groups())
        return (started.replace(month=mo, day=d, hour=h, minute=mi, second=s) - started).total_seconds()

    lines = part.splitlines()[1:]
    stamped = [(at(line), line) for line in lines]
    stamped = [(t, line) for t, line in stamped if t is not None]
    ready = next((t for t, line in stamped if "Starting vLLM server on" in line), None)
    procs = {}  # when each process of the server printed its first line: API server, engine core, worker
    for t, line in stamped:
        if line.startswith("(") and ")" in line:
            procs.setdefault(line[1 : line.index(")")].split(" pid=")[0], t)
    took = {}
    for _, line in stamped:
        for what, secs in _TOOK.findall(line):
            took[what.strip()[-60:]] = float(secs)
    return {
        "log": str(log_path),
        "first_vllm_line_s": stamped[0][0] if stamped else None,
        "process_first_line_s": procs,
        "http_server_start_s": ready,
        "took_s": took,
    }


def timed(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, wall s, CPU s of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, time.perf_counter() - t0, cpu


def group_cpu_s(pgids: set[int]) -> float:
    """CPU seconds (user + system) of every live process in the process groups ``pgids`` (the vLLM
    servers: each is a process group led by its pid). Exact whatever else runs on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # fields after the name: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# A revision that opens by talking to the reviewer instead of answering the question ("I'm glad to hear that
# you're enjoying our conversation!", "Your request was met ...", "It seems ..."): what SmolLM2-135M wrote for
# most revisions after the paper's revision message (the README main job, issue 24 item 5)
_ADDRESSES_FEEDBACK = re.compile(
    r"(?i)^\W*(i'?m glad|i am glad|i'?m happy|i am (pleased|happy)|your (request|answer|enthusiasm|feedback)|"
    r"it seems|thank(s| you)|hi\b|hey\b|dear\b|i'?m ready|i'?ve (made|updated|revised)|i have (made|updated|revised))"
)


def records_check(run_dir: Path) -> dict:
    """From the run's records: responses cut per iteration, reviews that never parsed, items whose responses
    are all the same text, revisions that open by addressing the feedback (_ADDRESSES_FEEDBACK), and whether
    the DPO rows read sensibly (a decisive pair's chosen score above its rejected one; no (prompt, chosen,
    rejected) twice)."""
    cut: dict[int, int] = {}
    review_failures = identical = addressing = 0
    for rec in _jsonl(run_dir / "generations.jsonl"):
        its = rec.get("iterations") or []
        for it in its:
            cut[it["index"]] = cut.get(it["index"], 0) + (it.get("finish_reason") == "length")
            review_failures += sum(r.get("failure") is not None for r in it.get("reviews") or [])
            addressing += it["index"] > 0 and bool(_ADDRESSES_FEEDBACK.match(it["response"]))
        identical += len(its) > 1 and len({it["response"] for it in its}) == 1
    dpo = _jsonl(run_dir / "dpo.jsonl")
    seen = [(json.dumps(r["prompt"]), json.dumps(r["chosen"]), json.dumps(r["rejected"])) for r in dpo]
    decisive = [r for r in dpo if r.get("decisive")]
    texts = [r[side][-1]["content"] for r in dpo for side in ("chosen", "rejected")]
    return {
        "cut_by_iteration": cut,
        "revisions_addressing_feedback": addressing,
        "review_failures": review_failures,
        "items_all_responses_identical": identical,
        "dpo_decisive": len(decisive),
        "dpo_decisive_chosen_above_rejected": sum(r["chosen_score"] > r["rejected_score"] for r in decisive),
        "dpo_duplicate_pairs": len(seen) - len(set(seen)),
        "dpo_same_text_pairs": sum(r["chosen"] == r["rejected"] for r in dpo),
        # a DPO text that stops mid-sentence (see _unfinished); a response cut by max_tokens is never in a pair,
        # so this counts stops the model chose itself
        "dpo_texts": len(texts),
        "dpo_texts_unfinished": sum(_unfinished(t) for t in texts),
    }


def _unfinished(text: str) -> bool:
    """Whether ``text`` ends mid-sentence: empty, a last line ending in , ; : or a last line of prose (8 words
    or more) without a full stop, ! ? or a closing quote or bracket. A haiku or a list item (a short last line)
    and code (a closing fence) read as finished."""
    lines = text.rstrip().splitlines()
    if not lines:
        return True
    last = lines[-1].strip()
    return last[-1] in ",;:" or (len(last.split()) >= 8 and last[-1] not in ".!?\"')]*`")


def build_row(name: str, overrides: list[str], env: dict, tmp: Path, registry: Path) -> dict:
    run_dir = tmp / f"run-{name}"
    cmd = [
        sys.executable,
        "-m",
        "mapo",
        "build",
        f"client.registry={registry}",
        "client.cache=false",
        "client.progress=log",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    pgids = {ep.pid for ep in endpoints.read_all(registry) if ep.pid is not None}
    load = os.getloadavg()[0]
    server_cpu = group_cpu_s(pgids)
    rc, wall, cpu = timed(cmd, env, tmp / f"build-{name}.log")
    row: dict = {
        "variant": name,
        "overrides": overrides,
        "rc": rc,
        "wall_s": round(wall, 1),
        "client_cpu_s": round(cpu, 1),
        "servers_cpu_s": round(group_cpu_s(pgids) - server_cpu, 1),
        "load_avg_1min_before": round(load, 2),
    }
    path = run_dir / "manifest.json"
    if not path.exists():
        row["error"] = (tmp / f"build-{name}.log").read_text()[-2000:]
        return row
    m = json.loads(path.read_text())
    row.update(records_check(run_dir))
    usage = m.get("usage") or []
    row.update(
        status=m["status"],
        items=m["items"]["done"],
        failed=m["items"]["failed"],
        truncated_responses=m.get("truncated_responses"),
        responses=sum(u["requests"] for u in usage if u["role"] == "generator"),
        rows=m.get("rows"),
        dpo_pairs=(m.get("pairs") or {}).get("pairs_written"),
        ties_dropped=(m.get("pairs") or {}).get("ties_dropped"),
        requests=m["throughput"]["requests"],
        retries=m["throughput"]["retries"],
        unconstrained=sum(u.get("unconstrained", 0) for u in usage),
        completion_tokens=sum(u["completion_tokens"] for u in usage),
        tok_per_s=m["throughput"]["completion_tokens_per_s"],
        build_wall_s=m["timings_s"]["wall"],
        usage=[
            {k: u[k] for k in ("role", "model", "requests", "completion_tokens", "retries", "failures")} for u in usage
        ],
        scoring=m.get("scoring"),
        preflight_fallbacks={
            k: v.get("fallbacks") for k, v in (m.get("preflight") or {}).items() if isinstance(v, dict)
        },
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", help="MAPO_VLLM_DTYPE for serve up (float32: the AVX2 path)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=k=v,k=v (repeatable)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--name", default="main_job", help="results file stem")
    args = ap.parse_args()
    variants = [
        (v.split("=", 1)[0], [o for o in v.split("=", 1)[1].split(",") if o]) for v in args.variant or ["default="]
    ]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers (finally)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mapo-mainjob-"))
    registry = tmp / "endpoints.json"
    env = {**os.environ, "MAPO_ENDPOINTS": str(registry)}
    if args.dtype:
        env["MAPO_VLLM_DTYPE"] = args.dtype
    specs = launch.load_specs()
    cached = {n: weights.resolve(n, specs[n].weights) is not None for n in launch.EMBEDDED}
    result: dict = {"cpu": cpu_info(), "dtype": args.dtype or "as serve up chooses", "weights_cached_before": cached}
    rc, wall, _ = timed([sys.executable, "-m", "serve", "up", "--registry", str(registry)], env, tmp / "serve-up.log")
    up_log = (tmp / "serve-up.log").read_text()
    # serve up's own lines (HH:MM:SS serve: ...): weights fetched and converted, servers started, ready
    result["serve_up"] = {"rc": rc, "wall_s": round(wall, 1), "log": up_log.splitlines()[-40:]}
    try:
        if rc == 0:
            servers = []
            for ep in endpoints.read_all(registry):
                phases = server_phases(weights.cache_root() / "logs" / f"{ep.name}-{ep.port}.log")
                servers.append({"model": ep.name, **phases})
            result["serve_up"]["servers"] = servers
            result["builds"] = []
            for name, overrides in variants:
                row = build_row(name, overrides, env, tmp, registry)
                print(json.dumps({k: v for k, v in row.items() if k != "usage"}), flush=True)
                result["builds"].append(row)
                (out / f"{args.name}.json").write_text(
                    json.dumps(result, indent=2) + "\n"
                )  # kept if a later one is cut
    finally:
        subprocess.run([sys.executable, "-m", "serve", "down", "--registry", str(registry)], cwd=REPO, env=env)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
