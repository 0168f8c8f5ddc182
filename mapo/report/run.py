"""Reading a run folder for a report: its manifest, config and JSONL records, without a model call.

Works on a finished, stopped or resumed run and on a copy of one. A torn last line (a run killed
mid-write) is skipped by :func:`mapo.core.store.read_lines`; a damaged line elsewhere is
reported and skipped, so a report of a damaged run still shows what can be read.

The JSON file ``mapo agreement ... --out FILE`` writes (its tables, and the sources it read)
is read as a run of kind ``agreement`` (:func:`load_agreement`): ``Run.json("agreement.json")``
is that file, and it has no records of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.store import read_lines

__all__ = [
    "AGREEMENT_GLOB",
    "Run",
    "find_runs",
    "find_sources",
    "is_agreement_output",
    "load_agreement",
    "load_run",
    "read_json",
    "read_records",
]

AGREEMENT_GLOB = "agreement*.json"
"""Names ``mapo agreement`` writes by default (agreement.authors.json, agreement.recomputed.json)."""

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, last write per ``key`` winning (at the place of its first), rows without
    a key (dataset rows, metrics) kept in order; [] when the file is absent. A damaged line is named and
    skipped (:func:`mapo.core.store.read_lines`), so a report of a damaged run still shows what can be read."""
    if not path.exists():
        return []
    by_key: dict[Any, dict[str, Any]] = {}
    for n, rec in read_lines(path, on_damaged="skip", keyed=False):
        by_key[rec.get("key", (n,))] = rec
    return list(by_key.values())


@dataclass
class Run:
    """A run folder: its manifest (or one guessed from its files) and its config text."""

    dir: Path
    manifest: dict[str, Any]
    config_text: str | None
    agreement_file: Path | None = None
    """For the output of ``mapo agreement``: that file (``dir`` is its folder)."""

    @property
    def command(self) -> str:
        """build, evaluate, winrate, agreement (manifest ``command``)."""
        return str(self.manifest.get("command", "unknown"))

    @property
    def default_out(self) -> Path:
        """Where its report goes by default: ``RUN/report``, or ``<file>_report`` beside an agreement output."""
        if self.agreement_file is not None:
            return self.agreement_file.with_name(self.agreement_file.name.removesuffix(".json") + "_report")
        return self.dir / "report"

    def records(self, name: str) -> list[dict[str, Any]]:
        """The records of ``name`` (a JSONL file of the run folder); none for an agreement output."""
        return [] if self.agreement_file is not None else read_records(self.dir / name)

    def json(self, name: str) -> Any:
        """The parsed JSON file ``name`` of the run folder, or None (an agreement output: itself)."""
        if self.agreement_file is not None:
            return read_json(self.agreement_file) if name == "agreement.json" else None
        return read_json(self.dir / name)


def is_agreement_output(path: Path) -> bool:
    """``path`` is a JSON file holding agreement tables (a ``results`` list), as ``mapo agreement`` writes."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and isinstance(data.get("results"), list)


def load_agreement(path: str | Path) -> Run:
    """The output of ``mapo agreement`` as a run of kind ``agreement``; raises FileNotFoundError
    when ``path`` is not such a file (naming what it lacks)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileNotFoundError(f"{p} is not a JSON file ({e}); expected the output of `mapo agreement`") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise FileNotFoundError(f"{p} holds no agreement tables (no 'results' list); expected `mapo agreement` output")
    manifest = {
        "command": "agreement",
        "status": "complete",
        "source": data.get("source") or data.get("sources"),
        "humans": data.get("humans"),
        "eval_data": data.get("eval_data") or {},
    }
    return Run(p.parent, manifest, None, agreement_file=p)


def load_run(run_dir: str | Path) -> Run:
    """The run at ``run_dir`` (or the ``mapo agreement`` output file); raises FileNotFoundError
    when it is neither a mapo run folder nor such a file."""
    d = Path(run_dir)
    if d.is_file():
        return load_agreement(d)
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
                f"{d} is not a mapo run folder (no manifest.json, generations.jsonl or judgements.jsonl) "
                f"and holds no `mapo agreement` output ({AGREEMENT_GLOB})"
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


def find_sources(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Run folders and ``mapo agreement`` outputs at or under ``paths``, sorted per path.

    A file is taken when it holds agreement tables; under a folder, run folders (manifest.json)
    and the ``agreement*.json`` files outside them (a run's own agreement.json belongs to it).
    """
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found = [p] if is_agreement_output(p) else []
        elif (p / "manifest.json").exists():
            found = [p]
        else:
            runs = sorted(m.parent for m in p.rglob("manifest.json"))
            inside = {r.resolve() for r in runs}
            files = [
                f
                for f in sorted(p.rglob(AGREEMENT_GLOB))
                if f.name != "agreement.json" and f.parent.resolve() not in inside and is_agreement_output(f)
            ]
            found = sorted([*runs, *files])
        for r in found:
            if r.resolve() not in seen:
                seen.add(r.resolve())
                yield r
