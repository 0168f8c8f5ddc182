"""Reading a run folder for a report: its manifest, config and JSONL records, without a model call.

Works on a finished, stopped or resumed run and on a copy of one. A torn last line (a run killed
mid-write) is skipped by :func:`mapo.runs.store.iter_records`; a damaged line elsewhere is
reported and skipped, so a report of a damaged run still shows what can be read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.runs.store import iter_records

__all__ = ["Run", "find_runs", "load_run", "read_json", "read_records"]

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, last write per ``key`` winning; [] when the file is absent."""
    if not path.exists():
        return []
    try:
        records: Iterable[Any] = list(iter_records(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        records = _readable_lines(path)
    by_key: dict[Any, dict[str, Any]] = {}
    for n, rec in enumerate(records):
        by_key[rec.get("key", n) if isinstance(rec, dict) else n] = rec
    return list(by_key.values())


def _readable_lines(path: Path) -> Iterator[Any]:
    # Only for a file the store's reader refused: a report shows what it can and names the rest.
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON (damaged?); skipped", path, n)


@dataclass
class Run:
    """A run folder: its manifest (or one guessed from its files) and its config text."""

    dir: Path
    manifest: dict[str, Any]
    config_text: str | None

    @property
    def command(self) -> str:
        """build, evaluate, winrate (manifest ``command``)."""
        return str(self.manifest.get("command", "unknown"))

    def records(self, name: str) -> list[dict[str, Any]]:
        """The records of ``name`` (a JSONL file of the run folder)."""
        return read_records(self.dir / name)

    def json(self, name: str) -> Any:
        """The parsed JSON file ``name`` of the run folder, or None."""
        return read_json(self.dir / name)


def load_run(run_dir: str | Path) -> Run:
    """The run at ``run_dir``; raises FileNotFoundError when it is not a mapo run folder."""
    d = Path(run_dir)
    manifest = read_json(d / "manifest.json")
    if manifest is None:
        # a run killed before its manifest: tell the kind from its files
        if (d / "judgements.jsonl").exists() and not (d / "baselines.jsonl").exists():
            manifest = {"command": "evaluate", "status": "no manifest (killed?)"}
        elif (d / "baselines.jsonl").exists():
            manifest = {"command": "winrate", "status": "no manifest (killed?)"}
        elif (d / "generations.jsonl").exists():
            manifest = {"command": "build", "status": "no manifest (killed?)"}
        else:
            raise FileNotFoundError(
                f"{d} is not a mapo run folder (no manifest.json, generations.jsonl or judgements.jsonl)"
            )
    cfg = d / "config.yaml"
    return Run(d, manifest, cfg.read_text(encoding="utf-8") if cfg.exists() else None)


def find_runs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Run folders at or under ``paths`` (a run, or a sweep folder holding runs), sorted."""
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        found = [p] if (p / "manifest.json").exists() else sorted(m.parent for m in p.rglob("manifest.json"))
        for r in found:
            if r.resolve() not in seen:
                seen.add(r.resolve())
                yield r
