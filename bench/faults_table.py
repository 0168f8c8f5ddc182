"""The faults table (issues 8 and 13): for each injected fault, items in / out, failed (with a
reason), duplicates, lost, wall time, and whether the published dataset (Arrow, parquet,
manifest.rows) equals the JSONL it is built from ("not published" when the run was left
unfinished). It runs tests/runs/test_faults.py (loopback fake servers, the real pipeline and
the real `mapo build` CLI) and prints the rows those tests recorded as a Markdown table.

    python bench/faults_table.py [extra pytest args]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faults.json"
        env = {**os.environ, "MAPO_FAULTS_TABLE": str(out)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/runs/test_faults.py", "-q", "-rf", "-p", "no:cacheprovider", *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        summary = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line]
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
        if not out.exists():
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
            return proc.returncode or 1
        rows = json.loads(out.read_text())
    print(
        "| fault | items in | items out | failed (with reason) | duplicates | lost | time (s) | dataset == jsonl | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['fault']} | {r['items_in']} | {r['items_out']} | {r['failed']} | {r['duplicates']} | {r['lost']} "
            f"| {r['time_s']} | {r.get('dataset_equals_jsonl', '-')} | {r['note']} |"
        )
    print(f"\n{summary[-1] if summary else ''}")
    for line in failed:  # a failed scenario has no row: name it
        print(line)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
