"""What a report needs beyond the agreement tables: per-item verdicts and the evaluated pairs.

The bias diagnostics (:mod:`mapo.metrics.bias`) need each evaluator's per-item verdict, the
human label, and for length and candidate preference the evaluated pairs: the length of each
response and which model wrote it. None of that is in ``agreement.json``; it is read, without
a model call, from:

* a ``mapo evaluate`` run: its ``judgements.jsonl``, and the items named by ``eval_data`` in
  its ``config.yaml`` (:func:`mapo.data.humans.load_items`; local files only, the report
  fetches nothing from the Hub);
* a ``mapo agreement`` output: the record files it names (``sources``), or for ``--authors``
  the authors' strategy folders and the human-label file it names (``source``, ``humans``),
  re-imported through :func:`mapo.data.importers.author_evaluators`, the evaluators ``mapo
  agreement`` scored.

Which model wrote each response comes from the items' ``model_a`` / ``model_b`` columns when
the file has them (FairEval does: Vicuna-13B vs GPT-3.5). Whatever cannot be found is named in
a note, and the diagnostics it would feed are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mapo.core.types import Message, is_judgement
from mapo.metrics.uncertainty import CONFIDENCE, N_RESAMPLES, SEED, Bootstrap
from mapo.report.run import Run, read_records

if TYPE_CHECKING:
    from mapo.data.humans import HumanRow

__all__ = [
    "BIAS_RESAMPLES",
    "Evidence",
    "ItemsOnHub",
    "ItemsUnreadable",
    "bias_diagnostics",
    "by_evaluator",
    "earlier_turns",
    "eval_spec",
    "evidence",
    "families_of",
    "offline_items",
    "settings_of",
]

log = logging.getLogger(__name__)

_LOCAL_LOADERS = ("faireval", "local")
BIAS_RESAMPLES = 10_000
"""Most resamples for the bias intervals (Monte Carlo error of a 95% bound ~0.003 on 80 items)."""


@dataclass
class Evidence:
    """Per-item verdict records and the evaluated pairs of a run, with notes on what is missing."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lengths: dict[str, tuple[int, int]] | None = None
    candidates: dict[str, tuple[str, str]] | None = None
    notes: list[str] = field(default_factory=list)
    families: dict[str, str] = field(default_factory=dict)
    """Model name -> family, from configuration only (:func:`families_of`)."""
    annotators: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Item id -> {annotator: label}, for label files with several annotators."""


def settings_of(tables: Mapping[str, Any] | None) -> Bootstrap:
    """The bootstrap settings the tables were computed with (defaults when they name none)."""
    u = (tables or {}).get("uncertainty") or {}
    return Bootstrap(
        n_resamples=int(u.get("n_resamples", N_RESAMPLES)),
        seed=int(u.get("seed", SEED)),
        confidence=float(u.get("confidence", CONFIDENCE)),
    )


# --------------------------------------------------------------------------- items


def _turns_of(messages: Sequence[Message]) -> list[tuple[str, str | None]]:
    """(user text, the assistant's answer or None) per user turn, in order."""
    out: list[tuple[str, str | None]] = []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        role, text = m.get("role"), str(m.get("content") or "")
        if role == "user":
            out.append((text, None))
        elif role == "assistant" and out and out[-1][1] is None:
            out[-1] = (out[-1][0], text)
    return out


def earlier_turns(
    history: Sequence[Message] | None, history_b: Sequence[Message] | None = None
) -> list[dict[str, Any]]:
    """A multi-turn item's turns before its question (the judged turn is ``len(result) + 1``), one entry per
    user turn, in order: ``{"turn": n, "user": text, "answer": text}`` when both sides' models saw the same
    answer, ``"answer_a"`` / ``"answer_b"`` instead where each gave its own (MT-Bench turn 2: a row's
    ``context_b``), and ``"user_b"`` where B's model was asked something else. Empty for a single-turn item.
    The viewer's item and the report's examples show these (:mod:`mapo.view.data`, report sections)."""
    a = _turns_of(history or ())
    b = _turns_of(history_b) if history_b is not None else None
    if b is None or b == a:
        return [{"turn": n, "user": u, "answer": ans} for n, (u, ans) in enumerate(a, 1)]
    out: list[dict[str, Any]] = []
    for n in range(max(len(a), len(b))):
        (ua, aa), (ub, ab) = (a[n] if n < len(a) else ("", None)), (b[n] if n < len(b) else ("", None))
        turn: dict[str, Any] = {"turn": n + 1, "user": ua, "answer_a": aa, "answer_b": ab}
        if ub != ua:
            turn["user_b"] = ub
        out.append(turn)
    return out


def _candidates(path: Path | None, id_column: str = "id") -> dict[str, tuple[str, str]] | None:
    """item id -> (model_a, model_b) from the file's columns; None when it names no models."""
    if path is None or not path.is_file():
        return None
    from mapo.data.humans import read_objects

    try:
        rows = read_objects(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    out = {}
    for i, r in enumerate(rows):
        a, b = r.get("model_a"), r.get("model_b")
        if isinstance(a, str) and isinstance(b, str) and a and b:
            out[str(r.get(id_column, i))] = (a, b)
    return out or None


def eval_spec(run_dir: Path, config_text: str | None, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``eval_data`` of a run: from its config.yaml, else its manifest (without the counts)."""
    if config_text:
        try:
            cfg = yaml.safe_load(config_text) or {}
        except yaml.YAMLError:
            cfg = {}
        if isinstance(cfg, dict) and isinstance(cfg.get("eval_data"), dict):
            return dict(cfg["eval_data"])
    spec = manifest.get("eval_data")
    if isinstance(spec, dict) and spec.get("loader"):
        return {k: v for k, v in spec.items() if k != "n_items"}
    return None


def _items_path(spec: Mapping[str, Any]) -> Path | None:
    """The local file a spec reads (faireval: the shared copy unless it names one), or None."""
    for key in ("path", "data_files"):
        if isinstance(spec.get(key), str):
            p = Path(spec[key]).expanduser()
            if not p.exists():
                from mapo.core.config import shipped_path

                p = shipped_path(p)
            return p
    if spec.get("loader") == "faireval":
        from mapo.data.humans import default_faireval_path

        return default_faireval_path()
    return None


class ItemsOnHub(Exception):
    """The evaluated items are on the Hugging Face Hub (the message is the loader): readers read no network."""


class ItemsUnreadable(Exception):
    """The evaluated items' local file cannot be read (the message says why)."""


def offline_items(spec: Mapping[str, Any]) -> tuple[list[HumanRow], Path | None]:
    """The evaluated items of ``spec`` (a run's eval_data) read from local files only, and the file read;
    raises :class:`ItemsOnHub` or :class:`ItemsUnreadable`. The report and the viewer both read them so."""
    path = _items_path(spec)
    if spec.get("loader") not in _LOCAL_LOADERS and (path is None or not path.exists()):
        raise ItemsOnHub(str(spec.get("loader")))
    from mapo.core.config import ConfigError
    from mapo.data.humans import load_items

    try:
        rows, _ = load_items(spec)
    except (ConfigError, OSError) as e:
        raise ItemsUnreadable(str(e)) from e
    return rows, path


def _pairs_of(spec: Mapping[str, Any] | None, ev: Evidence) -> None:
    """Fill ``ev.lengths`` and ``ev.candidates`` from the items of ``spec`` (notes when they cannot be read)."""
    if not spec:
        ev.notes.append("The run names no eval_data, so response lengths and candidate models are unknown.")
        return
    from mapo.metrics.bias import lengths_from_rows

    try:
        rows, path = offline_items(spec)
    except ItemsOnHub as e:
        ev.notes.append(
            f"The items come from the Hugging Face Hub (loader {e}); the report reads no network, "
            "so length bias and candidate preference are left out."
        )
        return
    except ItemsUnreadable as e:
        ev.notes.append(
            f"The evaluated items cannot be read ({e}), so length bias and candidate preference are left out."
        )
        return
    ev.lengths = lengths_from_rows(rows)
    columns = spec.get("columns") if isinstance(spec.get("columns"), Mapping) else {}
    ev.candidates = _candidates(path, str((columns or {}).get("id", "id")))
    if ev.candidates is None:
        ev.notes.append(
            "The items name no model_a / model_b columns, so candidate (self / family) preference is left out."
        )


def families_of(
    config_text: str | None, spec: Mapping[str, Any] | None, tables: Mapping[str, Any] | None
) -> dict[str, str]:
    """Model name -> family, from configuration only, never from a name: ``models.<name>.family``
    of the run's config (under the config name and the served name), ``eval_data.families`` (the
    candidate models of a data set) and an agreement output's ``families`` (``--families``)."""
    out: dict[str, str] = {}
    if config_text:
        try:
            cfg = yaml.safe_load(config_text) or {}
        except yaml.YAMLError:
            cfg = {}
        models = cfg.get("models") if isinstance(cfg, dict) else None
        for name, m in (models or {}).items():
            if isinstance(m, dict) and isinstance(m.get("family"), str) and m["family"]:
                out[str(name)] = m["family"]
                if isinstance(m.get("served_name"), str):
                    out[m["served_name"]] = m["family"]
    for extra in ((spec or {}).get("families"), (tables or {}).get("families")):
        if isinstance(extra, Mapping):
            out.update({str(k): str(v) for k, v in extra.items() if v})
    return out


# --------------------------------------------------------------------------- records


def _authors_records(tables: Mapping[str, Any], ev: Evidence) -> None:
    """Re-import the authors' judgements that ``mapo agreement --authors`` read (same labels, same items)."""
    from mapo.data.humans import HumanDataError, human_labels_spec, read_human_labels
    from mapo.data.importers import JudgmentsFormatError, author_evaluators
    from mapo.metrics.bias import lengths_from_rows

    root, humans = Path(str(tables["source"])), Path(str(tables.get("humans") or ""))
    if not root.is_dir() or not humans.is_file():
        ev.notes.append(
            f"The authors' judgements ({root}) or the human labels ({humans}) named by this output are not "
            "here, so the bias diagnostics that need per-item verdicts are left out."
        )
        return
    spec = tables.get("humans_spec") or human_labels_spec(humans)  # older outputs: the defaults they were read with
    try:
        rows = read_human_labels({**spec, "path": str(humans)})
    except HumanDataError as e:
        ev.notes.append(
            f"The human labels cannot be re-read with the columns and labels the kappas used ({e}); "
            "bias diagnostics left out."
        )
        return
    human = {r["id"]: r["human"] for r in rows}
    ev.annotators = {r["id"]: dict(r["annotators"]) for r in rows if "annotators" in r}
    recorded = str(tables.get("labels_from", "")).startswith("recorded")
    try:
        for evaluator in author_evaluators(root, tables.get("strategies") or []):  # as mapo agreement read them
            for item_id, label in evaluator.labels(recorded).items():
                if item_id not in human:
                    continue
                ev.records.append(
                    {
                        "item_id": item_id,
                        "kind": evaluator.kind,
                        "judge": evaluator.name,
                        "setup": evaluator.setup,
                        "models": [evaluator.model],
                        "order": "AB",
                        "pick": None,
                        "label": label,
                        "human": human[item_id],
                    }
                )
    except (JudgmentsFormatError, OSError, ValueError) as e:
        ev.notes.append(f"The authors' judgements cannot be re-read ({e}); bias diagnostics left out.")
        ev.records = []
        return
    if all(r["response_a"] or r["response_b"] for r in rows):
        ev.lengths = lengths_from_rows(rows)
    else:
        ev.notes.append(f"{humans} holds no response texts, so length bias is left out.")
    ev.candidates = _candidates(humans, str((spec.get("columns") or {}).get("id", "id")))
    if ev.candidates is None:
        ev.notes.append(f"{humans} names no model_a / model_b, so candidate preference is left out.")


def evidence(run: Run, tables: Mapping[str, Any] | None = None) -> Evidence:
    """The per-item records and evaluated pairs behind ``run``'s agreement tables (module doc)."""
    ev = Evidence()
    if run.agreement_file is None:
        ev.records = [r for r in run.records("judgements.jsonl") if is_judgement(r)]
        spec = eval_spec(run.dir, run.config_text, run.manifest)
        _pairs_of(spec, ev)
        ev.families = families_of(run.config_text, spec, tables)
        return ev
    tables = tables if tables is not None else (run.json("agreement.json") or {})
    if tables.get("source") and tables.get("humans"):
        _authors_records(tables, ev)
        ev.families = families_of(None, None, tables)
        return ev
    sources = [Path(str(s)) for s in tables.get("sources") or []]
    present = [s for s in sources if s.is_file()]
    if not sources or len(present) < len(sources):
        missing = ", ".join(str(s) for s in sources if not s.is_file()) or "none named"
        ev.notes.append(f"The record files this output was computed from are not here ({missing}).")
        if not present:
            return ev
    for s in present:
        ev.records += [r for r in read_records(s) if is_judgement(r)]
    first = present[0].parent
    cfg = first / "config.yaml"
    manifest = (
        json.loads((first / "manifest.json").read_text(encoding="utf-8")) if (first / "manifest.json").is_file() else {}
    )
    config_text = cfg.read_text(encoding="utf-8") if cfg.is_file() else None
    spec = eval_spec(first, config_text, manifest)
    _pairs_of(spec, ev)
    ev.families = families_of(config_text, spec, tables)
    return ev


# --------------------------------------------------------------------------- diagnostics


def bias_diagnostics(ev: Evidence, tables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Length bias and candidate preference (:mod:`mapo.metrics.bias`) of ``ev``, with ``notes``
    (what was left out and why) and the bootstrap ``settings`` used.

    Position bias is not recomputed: the agreement tables carry it, with its intervals. The
    intervals use at most :data:`BIAS_RESAMPLES` resamples (a diagnostic read to two decimals).
    Families come from configuration only (:func:`families_of`; a model nobody named a family
    for is "unknown"). Family preference is computed only when two candidates share a named
    family; otherwise it is the model preference, with a candidate of the judge's own named
    family marked ``own_family``.
    """
    from mapo.metrics.bias import UNKNOWN, candidate_preference, family_of, length_bias

    base = settings_of(tables)
    settings = Bootstrap(n_resamples=min(base.n_resamples, BIAS_RESAMPLES), seed=base.seed, confidence=base.confidence)
    out: dict[str, Any] = {"notes": list(ev.notes), "settings": settings.to_dict()}
    if not ev.records:
        if not ev.notes:
            out["notes"].append("No per-item verdicts: the bias diagnostics need judgements.jsonl.")
        return out
    if ev.lengths is not None:
        out["length"] = length_bias(ev.records, ev.lengths, settings=settings)
    if ev.candidates is not None:
        fams = ev.families
        out["model_preference"] = candidate_preference(ev.records, ev.candidates, families=fams, settings=settings)
        known = [
            f for m in {m for pair in ev.candidates.values() for m in pair} if (f := family_of(m, fams)) != UNKNOWN
        ]
        if len(set(known)) < len(known):  # two candidates of one named family: a family preference can be measured
            out["family_preference"] = candidate_preference(
                ev.records, ev.candidates, by="family", families=fams, settings=settings
            )
        out["families"] = dict(fams)
    return out


def by_evaluator(rows: Sequence[Mapping[str, Any]] | None) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(judge, setup) -> its row of a bias table."""
    return {(str(r["judge"]), str(r["setup"])): r for r in rows or []}
