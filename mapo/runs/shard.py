"""Split a prompt set across the tasks of a SLURM job array, merge the shards, summarise a sweep.

Sharding: task ``i`` of ``n`` takes the items whose ``sha256(id) % n == i``
(``prompts.shard_index`` / ``prompts.shard_count``, applied in :func:`mapo.data.sources.iter_prompts`
after ``prompts.limit``, so the shards partition exactly the set an unsharded run would read).
Each task writes its own run folder; :func:`merge` joins them::

    mapo merge runs/NAME/shard-* --out runs/NAME/merged
    mapo summary multirun/NAME

``merge`` refuses incomplete shards, a missing or repeated shard index, shards built with
different configs, and any key in two shards (within a shard the last record of a key counts: a
retried failure is history); it checks that every input key is in the output
exactly once before it rebuilds the DPO/KTO datasets. ``summary`` gathers each run's
``manifest.json`` of a Hydra sweep into ``summary.csv`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mapo.core.store import DamagedLine, read_lines

__all__ = ["MergeError", "main", "merge", "merge_main", "summary", "summary_main"]

RECORD_FILES = ("generations", "selections", "dpo", "kto")
"""JSONL stores of a build run, each keyed by ``key``; all are merged."""
_PER_SHARD_KEYS = ("prompts.shard_index", "output_dir", "run_name")
"""Config keys allowed to differ between the shards of one array."""


class MergeError(RuntimeError):
    """The shards cannot be merged without loss or duplication; the message says which and why."""


# ---- merge ---------------------------------------------------------------------------------


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def _load_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MergeError(f"{run_dir}: no config.yaml; not a mapo run folder")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    """A shard's records with their line numbers (:func:`mapo.core.store.read_lines`): a partial or unreadable
    line is a :class:`MergeError`, never skipped."""
    try:
        yield from read_lines(path, on_damaged="error", torn="error")
    except DamagedLine as e:
        raise MergeError(f"{e}; rerun that shard (it resumes) before merging" if e.partial else str(e)) from None


def _last_lines(path: Path) -> dict[str, int]:
    """Each key's last line in a shard's record file (a rerun appends a retried item's new record after its
    failure, as every reader's :func:`~mapo.core.store.latest_records` reads it); a keyless record is an error."""
    last: dict[str, int] = {}
    for lineno, rec in _read_jsonl(path):
        key = rec.get("key")
        if not isinstance(key, str):
            raise MergeError(f"{path}:{lineno}: record without a string key")
        last[key] = lineno
    return last


def _check_shards(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Every shard complete, one of each index, all built with the same config."""
    configs = []
    for d in run_dirs:
        manifest_path = d / "manifest.json"
        if not manifest_path.is_file():
            raise MergeError(f"{d}: no manifest.json; the shard has not finished (rerun it: it resumes)")
        status = json.loads(manifest_path.read_text(encoding="utf-8")).get("status")
        if status != "complete":
            raise MergeError(f"{d}: manifest status is {status!r}, not 'complete'; rerun that shard (it resumes)")
        configs.append(_load_config(d))
    counts = {int((c.get("prompts") or {}).get("shard_count", 1)) for c in configs}
    if len(counts) != 1:
        raise MergeError(f"the runs disagree on prompts.shard_count: {sorted(counts)}")
    count = counts.pop()
    index_of: dict[int, Path] = {}
    for d, c in zip(run_dirs, configs, strict=True):
        i = int((c.get("prompts") or {}).get("shard_index", 0))
        if i in index_of:
            raise MergeError(f"shard {i} of {count} given twice: {index_of[i]} and {d}")
        index_of[i] = d
    missing = sorted(set(range(count)) - set(index_of))
    if missing:
        raise MergeError(
            f"missing shard(s) {missing} of {count}: the merge would lose their prompts "
            f"(got {', '.join(str(d) for d in run_dirs)})"
        )
    base = {k: v for k, v in _flatten(configs[0]).items() if k not in _PER_SHARD_KEYS}
    for d, c in zip(run_dirs[1:], configs[1:], strict=True):
        flat = {k: v for k, v in _flatten(c).items() if k not in _PER_SHARD_KEYS}
        diff = sorted(k for k in base.keys() | flat.keys() if base.get(k) != flat.get(k))
        if diff:
            raise MergeError(
                f"{d} was built with a different config from {run_dirs[0]} "
                f"(differs in {', '.join(diff[:8])}); these are not shards of one run"
            )
    return configs


def _expand(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Paths as given; an argument with * ? [ is expanded here (a quoted glob in an sbatch line)."""
    out: list[Path] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?[") and not Path(s).is_dir():
            hits = sorted(glob.glob(s))
            if not hits:
                raise MergeError(f"{s}: matches no run folder")
            out.extend(Path(h) for h in hits)
        else:
            out.append(Path(s))
    for d in out:
        if not d.is_dir():
            raise MergeError(f"{d}: no such run folder")
    resolved = [d.resolve() for d in out]
    if len(set(resolved)) != len(resolved):
        raise MergeError("a run folder is given twice")
    return out


def merge(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Join the JSONL stores of the shard run folders into ``out`` and rebuild the datasets.

    Raises :class:`MergeError` (nothing written to ``out``) on an incomplete or missing shard,
    mismatched configs, a key present in two inputs, or an output that does not hold every
    input key exactly once. Returns the merged manifest.
    """
    from mapo.core.store import atomic_write_json
    from mapo.generation.dataset import save_datasets

    dirs = _expand(run_dirs)
    if not dirs:
        raise MergeError("no run folders given")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty; merge into a new folder")
    configs = _check_shards(dirs)

    tmp = out.with_name(f".{out.name}.merge-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts: dict[str, int] = {}
    try:
        for name in RECORD_FILES:
            first_seen: dict[str, str] = {}
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as dst:
                for d in dirs:
                    src = d / f"{name}.jsonl"
                    if not src.exists():
                        continue
                    last = _last_lines(src)
                    for lineno, rec in _read_jsonl(src):
                        key = rec["key"]
                        if last[key] != lineno:  # the shard's own history (a retried failure): its last record counts
                            continue
                        where = f"{src}:{lineno}"
                        if key in first_seen:
                            raise MergeError(f"key {key!r} appears twice: {first_seen[key]} and {where}")
                        first_seen[key] = where
                        dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
            # read back: every input key exactly once, nothing else
            written = [rec["key"] for _, rec in _read_jsonl(tmp / f"{name}.jsonl")]
            if len(written) != len(first_seen) or set(written) != set(first_seen):
                raise MergeError(f"{name}.jsonl: wrote {len(written)} records for {len(first_seen)} input keys")
            counts[name] = len(written)
        prompt_ids = {k for k in _keys(tmp / "selections.jsonl")}
        for name in ("dpo", "kto"):
            stray = {rec.get("prompt_id") for _, rec in _read_jsonl(tmp / f"{name}.jsonl")} - prompt_ids
            if stray:
                raise MergeError(
                    f"{name}.jsonl has rows for prompts with no selection record: {sorted(stray, key=str)[:5]}"
                )
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    manifests = [json.loads((d / "manifest.json").read_text(encoding="utf-8")) for d in dirs]
    manifest: dict[str, Any] = {
        "command": "merge",
        "status": "complete",
        "output_dir": str(out),
        "sources": [str(d) for d in dirs],
        "shard_count": int((configs[0].get("prompts") or {}).get("shard_count", 1)),
        "records": counts,
        "items": {
            "done": counts["selections"],
            "failed": sum(int((m.get("items") or {}).get("failed", 0)) for m in manifests),
        },
        "usage": _sum_usage(manifests),
        "timings_s": {
            "wall_max": max(float((m.get("timings_s") or {}).get("wall", 0.0)) for m in manifests),
            "wall_sum": round(sum(float((m.get("timings_s") or {}).get("wall", 0.0)) for m in manifests), 2),
        },
    }
    card = (
        "# mapo preference dataset (merged shards)\n\n"
        f"Merged from {len(dirs)} shards of one job array: " + ", ".join(str(d) for d in dirs) + ".\n"
    )
    manifest["rows"] = save_datasets(out, card=card)
    for name in ("dpo", "kto"):
        if manifest["rows"].get(name, 0) != counts[name]:
            raise MergeError(f"dataset {name} has {manifest['rows'].get(name)} rows for {counts[name]} records")
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _keys(path: Path) -> list[str]:
    return [rec["key"] for _, rec in _read_jsonl(path)] if path.exists() else []


def _sum_usage(manifests: Sequence[dict]) -> list[dict]:
    total: dict[tuple, dict] = {}
    for m in manifests:
        for row in m.get("usage") or []:
            k = (row.get("role"), row.get("model"))
            acc = total.setdefault(k, {"role": k[0], "model": k[1]})
            for field, value in row.items():
                if field not in ("role", "model") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    acc[field] = acc.get(field, 0) + value
    return list(total.values())


# ---- sweep summary -------------------------------------------------------------------------

_SKIP_PREFIXES = ("models.", "host", "output_dir", "usage")


def _overrides(run_dir: Path) -> dict[str, str]:
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return value


def summary(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per run of a sweep (its overrides + its manifest, flattened); writes
    ``summary.csv`` (every column) and ``summary.md`` (the columns that vary) into ``out``
    (default: the sweep folder). A run with no manifest is a row with status ``no manifest``."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such sweep folder")
    runs: set[Path] = set()
    for pattern in ("**/manifest.json", "**/.hydra"):
        for p in root.glob(pattern):
            if ".submitit" in p.parts or "dataset" in p.relative_to(root).parts:
                continue
            runs.add(p.parent)
    rows: list[dict[str, Any]] = []
    override_cols: list[str] = []
    metric_cols: list[str] = []
    for run in sorted(runs):
        overrides = _overrides(run)
        for k in overrides:
            if k not in override_cols:
                override_cols.append(k)
        row: dict[str, Any] = {"run": str(run.relative_to(root)) if run != root else ".", **overrides}
        mpath = run / "manifest.json"
        if mpath.is_file():
            flat = _flatten(json.loads(mpath.read_text(encoding="utf-8")))
            for k, v in flat.items():
                if k.startswith(_SKIP_PREFIXES) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
                    continue
                if k in override_cols:
                    k = f"manifest.{k}"
                row[k] = _cell(v)
                if k not in metric_cols:
                    metric_cols.append(k)
        else:
            row["status"] = "no manifest"
            if "status" not in metric_cols:
                metric_cols.append("status")
        rows.append(row)
    first = [c for c in ("command", "status") if c in metric_cols]
    columns = ["run", *override_cols, *first, *[c for c in metric_cols if c not in first]]

    out_dir = Path(out) if out is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / "summary.csv").write_text(buf.getvalue(), encoding="utf-8")
    (out_dir / "summary.md").write_text(_markdown(rows, columns), encoding="utf-8")
    return rows


def _markdown(rows: list[dict], columns: list[str]) -> str:
    """Run, status, item and row counts, wall time always; other columns only where the runs differ."""
    if len(rows) > 1:
        fixed = {"run", "status", "items.done", "items.failed", "rows.dpo", "rows.kto", "timings_s.wall"}
        columns = [c for c in columns if c in fixed or len({json.dumps(r[c], default=str) for r in rows if c in r}) > 1]

    def fmt(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---- command line --------------------------------------------------------------------------


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``mapo merge DIRS... --out DIR``: 0 merged, 1 refused (the reason on stderr; nothing written)."""
    parser = argparse.ArgumentParser(
        prog="mapo merge", description="join the run folders of a job array's shards and rebuild DPO/KTO"
    )
    parser.add_argument("run_dirs", nargs="+", help="shard run folders (a quoted glob is expanded)")
    parser.add_argument("--out", required=True, help="new folder for the merged run")
    args = parser.parse_args(argv)
    try:
        manifest = merge(args.run_dirs, args.out)
    except MergeError as e:
        print(f"merge failed: {e}", file=sys.stderr)
        return 1
    print(
        f"merged {len(manifest['sources'])} shards into {manifest['output_dir']}: "
        f"{manifest['items']['done']} prompts, rows {manifest['rows']}"
    )
    return 0


def summary_main(argv: Sequence[str] | None = None) -> int:
    """``mapo summary SWEEP_DIR [--out DIR]``: prints summary.md and names the runs not complete."""
    parser = argparse.ArgumentParser(
        prog="mapo summary", description="one table (CSV + Markdown) of every run's manifest in a sweep"
    )
    parser.add_argument("sweep_dir", help="e.g. multirun/build")
    parser.add_argument("--out", default=None, help="folder for summary.csv / summary.md (default: the sweep folder)")
    args = parser.parse_args(argv)
    rows = summary(args.sweep_dir, args.out)
    out_dir = Path(args.out) if args.out else Path(args.sweep_dir)
    print((out_dir / "summary.md").read_text(encoding="utf-8"), end="")
    bad = [r["run"] for r in rows if r.get("status") != "complete"]
    print(
        f"{len(rows)} runs; summary in {out_dir / 'summary.csv'} and {out_dir / 'summary.md'}"
        + (f"; not complete: {', '.join(bad)}" if bad else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mapo.runs.shard merge|summary ...``: the old spelling of ``mapo merge`` / ``mapo summary``."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"merge": merge_main, "summary": summary_main}
    if not args or args[0] not in commands:
        print("usage: mapo merge DIRS... --out DIR | mapo summary SWEEP_DIR [--out DIR]", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
