"""Run folders as the viewer's tables: one small row per item, and the whole item on demand.

Read-only, no model call. A :class:`View` is one table of the page: every build run, winrate
run and train run is its own view; every evaluate run and ``mapo agreement`` output given
together is joined into one evaluate view, item by item, one column per evaluator, so judges
of a sweep compare side by side.

An evaluate run's ``judgements.jsonl`` is read once, keeping per record only what a row shows
(labels, failure) and its byte offset: opening an item reads its records again from the file,
so 100,000 items cost a few bytes each (:class:`_RecordIndex`). The items' texts come from the
run's ``eval_data`` (local files only, as for the report: :mod:`mapo.report.evidence`).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapo.core.store import read_at, read_lines_at
from mapo.core.types import is_judgement, record_kind
from mapo.core.verdicts import PICK_OF_LABEL, combine_orders
from mapo.report.run import Run, find_sources, load_run, read_json

__all__ = ["RunRef", "View", "load_views", "word_diff"]

SNIPPET = 160
"""Characters of a text shown in a table cell (the item's page has all of it)."""
DIFF_WORDS = 4000
"""Most words per side a word diff compares (longer texts: the rest is shown unmarked)."""
_FIRST = (
    *("prompt_id", "configuration", "baseline", "outcome", "label", "score_a", "score_b", "failure"),
    *("split", "step", "epoch", "loss", "eval_loss", "learning_rate"),
)
"""Columns a records view shows first (winrate verdicts, training metrics), when present."""
_SHORT: dict[str | None, str] = {**{str(k): v for k, v in PICK_OF_LABEL.items()}, None: "–"}


def _snippet(text: Any, n: int = SNIPPET) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass
class RunRef:
    """A run folder (or agreement output) given on the command line, as the page links it."""

    index: int
    label: str
    path: str
    command: str
    status: str
    report: str | None
    """The folder of its report (``mapo report``) when report.html is there, else None."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "path": self.path,
            "command": self.command,
            "status": self.status,
            "report": f"/r/{self.index}/report/report.html" if self.report else None,
        }


def col(field: str, title: str, kind: str = "text", width: int | None = None, tip: str = "") -> dict[str, Any]:
    """A table column for the page: ``kind`` text | number | label (a verdict, coloured)."""
    return {"field": field, "title": title, "kind": kind, "width": width, "tip": tip}


@dataclass
class View:
    """One table of the page: its columns, filters (a filter ``x`` keeps rows whose ``f_x`` is true)
    and sorts (fields a button sorts by, descending), its rows and the detail of each item."""

    id: str
    title: str
    kind: str
    runs: list[RunRef]
    columns: list[dict[str, Any]] = field(default_factory=list)
    filters: list[dict[str, str]] = field(default_factory=list)
    sorts: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "runs": [r.to_dict() for r in self.runs],
            "columns": self.columns,
            "filters": self.filters,
            "sorts": self.sorts,
            "notes": self.notes,
        }

    def rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def item(self, item_id: str) -> dict[str, Any] | None:
        raise NotImplementedError


# --------------------------------------------------------------------------- record files

SUMMARY = ("item_id", "kind", "judge", "setup", "order", "label", "human", "failure")
"""The fields of a judgement record a table row needs (the rest is read when the item is opened)."""


class _RecordIndex:
    """A JSONL record file, grouped by item as byte offsets (last write per ``key`` wins, as the
    report reads it); :meth:`read` reads one item's records again from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, list[int]] = defaultdict(list)

    def scan(self, item_of: str = "item_id") -> Iterator[dict[str, Any]]:
        """Every record (the last write of each key) as its :data:`SUMMARY` fields, noting its offset
        under its item: the full records are never all in memory. Read through the one JSONL reader
        (``core.store.read_lines_at``): damaged lines are skipped with a warning, a torn last line is left out."""
        latest: dict[Any, tuple[int, dict[str, Any]]] = {}
        for line in read_lines_at(self.path, on_damaged="skip", keyed=False):
            rec = line.record
            latest[rec.get("key", line.lineno)] = (line.start, {k: rec.get(k) for k in SUMMARY if k in rec})
        for start, rec in latest.values():
            self.offsets[str(rec.get(item_of))].append(start)
            yield rec

    def read(self, item_id: str) -> list[dict[str, Any]]:
        return read_at(self.path, self.offsets.get(item_id, []))


# --------------------------------------------------------------------------- conversations


def _conversation(
    history: Sequence[Any] | None, history_b: Sequence[Any] | None = None, reference: Any = None
) -> dict[str, Any]:
    """An item's earlier turns for its page: ``turns`` (:func:`mapo.report.evidence.earlier_turns`, each side's
    own answers where they differ) and ``turn``, the judged turn's number (the last); a reference answer as
    ``reference``. Nothing for a single-turn item without a reference (its page is as before)."""
    from mapo.report.evidence import earlier_turns

    out: dict[str, Any] = {}
    turns = earlier_turns(history, history_b)
    if turns:
        out.update(turns=turns, turn=len(turns) + 1)
    if isinstance(reference, str) and reference:
        out["reference"] = reference
    return out


def _question_cell(text: Mapping[str, Any], question: str = "question") -> str:
    """The table cell of an item's question; a multi-turn item's says which turn it is (``[turn 2 of 2]``)."""
    history = text.get("context") or text.get("history")
    n = sum(1 for m in history or () if isinstance(m, Mapping) and m.get("role") == "user")
    if not n:
        return _snippet(text.get(question))
    return _snippet(f"[turn {n + 1} of {n + 1}] {text.get(question) or ''}")


# --------------------------------------------------------------------------- evaluate and agreement


@dataclass
class _Source:
    """One judgements file (or the authors' records of an agreement output) of the evaluate view."""

    ref: RunRef
    records: _RecordIndex | None = None
    memory: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def read(self, item_id: str) -> list[dict[str, Any]]:
        return self.records.read(item_id) if self.records else list(self.memory.get(item_id, []))

    def scan(self) -> Iterator[dict[str, Any]]:
        if self.records:
            yield from self.records.scan()
        else:
            for recs in self.memory.values():
                yield from recs


def _label_of(labels: Mapping[str, str | None]) -> str:
    """One cell for an evaluator's verdicts in each order: ``A``, ``B``, ``tie``, ``failed``, or
    ``AB:A BA:B`` when the two presentation orders disagree."""
    shown = {o: ("failed" if lab is None else _SHORT.get(lab, str(lab))) for o, lab in sorted(labels.items())}
    values = set(shown.values())
    if len(values) == 1:
        return values.pop()
    return " ".join(f"{o}:{v}" for o, v in shown.items())


class EvaluateView(View):
    """Evaluate runs and agreement outputs, joined by item id: one column per evaluator."""

    def __init__(self, refs_runs: Sequence[tuple[RunRef, Run]]) -> None:
        super().__init__("evaluate", "Evaluate: items, human labels and every evaluator's verdict", "evaluate", [])
        self.runs = [r for r, _ in refs_runs]
        self.sources: list[_Source] = []
        self.items: dict[str, Mapping[str, Any]] = {}
        for ref, run in refs_runs:
            self._add(ref, run)
        self._index()

    def _add(self, ref: RunRef, run: Run) -> None:
        from mapo.report import evidence

        if run.agreement_file is None:
            path = run.dir / "judgements.jsonl"
            if path.exists():
                self.sources.append(_Source(ref, _RecordIndex(path)))
            self._texts(run.dir, run.config_text, run.manifest)
            return
        tables = run.json("agreement.json") or {}
        files = [Path(str(s)) for s in tables.get("sources") or []]
        if files:
            for f in files:
                if f.is_file():
                    self.sources.append(_Source(ref, _RecordIndex(f)))
                    cfg = f.parent / "config.yaml"
                    text = cfg.read_text(encoding="utf-8") if cfg.is_file() else None
                    self._texts(f.parent, text, read_json(f.parent / "manifest.json") or {})
                else:
                    self.notes.append(f"{ref.label}: the record file {f} it was computed from is not here.")
            return
        ev = evidence.evidence(run, tables)  # the authors' outputs, re-imported as `mapo agreement` read them
        memory: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for n, r in enumerate(ev.records):
            memory[str(r["item_id"])].append({**r, "key": n, "raw": []})
        self.sources.append(_Source(ref, memory=dict(memory)))
        self.notes += [f"{ref.label}: {n}" for n in ev.notes]
        humans = Path(str(tables.get("humans") or ""))
        if humans.is_file():
            from mapo.data.humans import HumanDataError, load_local

            try:
                for row in load_local(humans, columns={"human": "winner"}, need_text=False):
                    self.items.setdefault(str(row["id"]), row)
            except HumanDataError as e:
                self.notes.append(f"{ref.label}: the items cannot be read ({e}).")

    def _texts(self, run_dir: Path, config_text: str | None, manifest: Mapping[str, Any]) -> None:
        """The evaluated items (question, both responses) named by the run's eval_data, local files only."""
        from mapo.report.evidence import ItemsOnHub, ItemsUnreadable, eval_spec, offline_items

        spec = eval_spec(run_dir, config_text, manifest)
        if not spec:
            self.notes.append(f"{run_dir}: the run names no eval_data; item texts are not shown.")
            return
        try:
            rows, _ = offline_items(spec)
        except ItemsOnHub as e:
            self.notes.append(
                f"{run_dir}: items come from the Hugging Face Hub ({e}); the viewer reads no "
                "network, so item texts are not shown."
            )
            return
        except ItemsUnreadable as e:
            self.notes.append(f"{run_dir}: the evaluated items cannot be read ({e}); item texts are not shown.")
            return
        for row in rows:
            self.items.setdefault(str(row["id"]), row)

    def _index(self) -> None:
        """One pass over every record: the evaluators (columns) and each item's row."""
        evaluators: dict[tuple[int, str, str], int] = {}
        cells: dict[str, dict[int, dict[str, str | None]]] = defaultdict(lambda: defaultdict(dict))
        human: dict[str, Any] = {}
        failed: set[str] = set()
        for s, src in enumerate(self.sources):
            for r in src.scan():
                item = str(r.get("item_id"))
                if r.get("human") is not None:
                    human.setdefault(item, r.get("human"))
                if r.get("failure"):
                    failed.add(item)
                if not _evaluator_record(r):
                    continue
                key = (s, str(r.get("judge")), str(r.get("setup")))
                column = evaluators.setdefault(key, len(evaluators))
                cells[item][column][str(r.get("order") or "AB")] = r.get("label")
        self.evaluators: list[dict[str, Any]] = [
            {"source": s, "judge": j, "setup": setup, "field": f"e{n}"} for (s, j, setup), n in evaluators.items()
        ]
        many_runs = len({e["source"] for e in self.evaluators}) > 1
        names = Counter(e["judge"] for e in self.evaluators)
        for e in self.evaluators:
            ref = self.sources[e["source"]].ref
            name = e["judge"] if names[e["judge"]] == 1 else f"{e['judge']} ({e['setup']})"
            e["name"] = f"{ref.label}: {name}" if many_runs else name
        self._rows = []
        for item in dict.fromkeys([*self.items, *cells]):
            text = self.items.get(item) or {}
            h = human.get(item, text.get("human"))
            row: dict[str, Any] = {"id": item, "human": _SHORT.get(h, h), "question": _question_cell(text)}
            labels = []
            inconsistent = disagree = False
            for n, by_order in cells.get(item, {}).items():
                row[f"e{n}"] = _label_of(by_order)
                decided = {v for v in by_order.values() if v is not None}
                inconsistent |= len(decided) > 1
                combined = combine_orders([{"label": v} for _, v in sorted(by_order.items())])[0]
                row[f"f_disagree_e{n}"] = h is not None and combined is not None and combined != h
                disagree |= row[f"f_disagree_e{n}"]
                labels.append(row[f"e{n}"])
            row["f_disagree"] = disagree
            row["f_inconsistent"] = inconsistent
            row["f_failed"] = item in failed
            row["f_split"] = len(set(labels)) > 1
            self._rows.append(row)
        self.columns = [
            col("id", "item", width=110),
            col("human", "human", "label", width=95, tip="the human label: A = response_a, B = response_b"),
            col("question", "question", width=320),
            *[col(e["field"], e["name"], "label", tip=f"{e['judge']} · {e['setup']}") for e in self.evaluators],
        ]
        self.filters = [
            {"id": "disagree", "title": "judge ≠ human" if len(self.evaluators) < 2 else "any evaluator ≠ human"},
            # orders combined as the agreement tables combine them: two orders that disagree are a tie
            {"id": "inconsistent", "title": "order inconsistent (AB ≠ BA)"},
            {"id": "failed", "title": "parse / request failures"},
        ]
        if len(self.evaluators) > 1:
            self.filters.append({"id": "split", "title": "evaluators disagree"})
            self.filters += [{"id": f"disagree_{e['field']}", "title": f"{e['name']} ≠ human"} for e in self.evaluators]

    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def item(self, item_id: str) -> dict[str, Any] | None:
        text = self.items.get(item_id)
        by_source = [src.read(item_id) for src in self.sources]
        if text is None and not any(by_source):
            return None
        evaluators = []
        for e in self.evaluators:
            recs = by_source[e["source"]]
            mine = [r for r in recs if str(r.get("judge")) == e["judge"] and str(r.get("setup")) == e["setup"]]
            mine = [r for r in mine if _evaluator_record(r)]
            if not mine:
                continue
            jurors = [r for r in recs if record_kind(r.get("kind")).member and r.get("member_of") == e["judge"]]
            evaluators.append(
                {
                    "name": e["name"],
                    "run": self.sources[e["source"]].ref.label,
                    "judge": e["judge"],
                    "setup": e["setup"],
                    "records": sorted(mine, key=lambda r: str(r.get("order"))),
                    "jurors": sorted(jurors, key=lambda r: (str(r.get("judge")), str(r.get("order")))),
                }
            )
        human = next((r.get("human") for recs in by_source for r in recs if r.get("human")), None)
        text = text or {}
        out = {
            "kind": "evaluate",
            "id": item_id,
            "human": human or text.get("human"),
            "question": text.get("question"),
            "response_a": text.get("response_a"),
            "response_b": text.get("response_b"),
            "evaluators": evaluators,
        }
        out.update(_conversation(text.get("context"), text.get("context_b"), text.get("reference")))
        return out


# --------------------------------------------------------------------------- build


def word_diff(rejected: str, chosen: str) -> dict[str, list[list[Any]]]:
    """A word-level diff: each side as [[changed, text], ...] (whitespace kept, so the texts read as written)."""
    a, b = re.findall(r"\s+|\S+", rejected or ""), re.findall(r"\s+|\S+", chosen or "")
    tail_a, tail_b = "".join(a[DIFF_WORDS:]), "".join(b[DIFF_WORDS:])
    a, b = a[:DIFF_WORDS], b[:DIFF_WORDS]
    left: list[list[Any]] = []
    right: list[list[Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        changed = op != "equal"
        if i2 > i1:
            left.append([changed, "".join(a[i1:i2])])
        if j2 > j1:
            right.append([changed, "".join(b[j1:j2])])
    if tail_a:
        left.append([False, tail_a])
    if tail_b:
        right.append([False, tail_b])
    return {"rejected": left, "chosen": right}


def _text_of(messages: Any) -> str:
    if isinstance(messages, list):
        return "\n\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return str(messages or "")


def _margin(pair: Mapping[str, Any]) -> float:
    m = pair.get("margin")
    return float(m) if isinstance(m, (int, float)) else float("-inf")


class BuildView(View):
    """A build run: one row per prompt, with its outcome (decisive / tie / failed / no pair)."""

    def __init__(self, ref: RunRef, run: Run) -> None:
        super().__init__(f"run{ref.index}", f"Build {ref.label}: prompts, iterations, judge and pairs", "build", [ref])
        self.gens = {str(g.get("key")): g for g in run.records("generations.jsonl")}
        self.sels = {str(s.get("key")): s for s in run.records("selections.jsonl")}
        self.pairs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in run.records("dpo.jsonl"):
            self.pairs[str(row.get("prompt_id", row.get("key")))].append(row)
        self._rows = [self._row(key) for key in dict.fromkeys([*self.gens, *self.sels])]
        self.columns = [
            col("id", "prompt id", width=150),
            col("prompt", "prompt", width=300),
            col("scores", "reviewer scores", width=150, tip="per feedback iteration"),
            col("best", "chosen", "number", width=80, tip="the iteration the judge chose"),
            col("outcome", "outcome", "label", width=100),
            col("pairs", "pairs", "number", width=70),
            col("margin", "margin", "number", width=80, tip="judge score margin of the widest DPO pair"),
            col("length_ratio", "length ratio", "number", width=100, tip="chosen / rejected characters, widest pair"),
            col("reason", "why no pair", width=220),
        ]
        self.filters = [
            {"id": "decisive", "title": "decisive"},
            {"id": "tie", "title": "tie"},
            {"id": "failed", "title": "failed"},
            {"id": "truncated", "title": "truncated"},
        ]
        self.sorts = [{"field": "margin", "title": "margin"}, {"field": "length_ratio", "title": "length ratio"}]

    def _no_pair_reason(self, key: str) -> tuple[str, str]:
        """(outcome, why) for a prompt: decisive, or tie / failed / no pair with the reason."""
        g, s = self.gens.get(key) or {}, self.sels.get(key)
        if g.get("failure"):
            return "failed", f"generation: {g['failure']}"
        if s is None:
            return "failed", "not selected (the run stopped before the judge)"
        if s.get("best") is None:
            return "failed", f"selection: {s.get('failure') or 'no choice'}"
        if any(p.get("decisive", True) for p in self.pairs.get(key, [])):
            return "decisive", ""
        from mapo.generation.selection import losses

        lost = losses(str(s.get("method")), s["best"], s.get("judgements") or [], s.get("scores") or [])
        ties = sorted({str(x.reason) for x in lost.values() if not x.decisive})
        if ties:
            return "tie", "tie: " + ", ".join(ties)
        if any(j.get("failure") for j in s.get("judgements") or []):
            return "failed", "judge: " + "; ".join(str(j["failure"]) for j in s["judgements"] if j.get("failure"))
        its = g.get("iterations") or []
        if any(it.get("finish_reason") == "length" for it in its):
            return "no pair", "responses cut by max_tokens were left out"
        return "no pair", "identical chosen / rejected, or a single response"

    def _row(self, key: str) -> dict[str, Any]:
        g, s = self.gens.get(key) or {}, self.sels.get(key) or {}
        its = g.get("iterations") or []
        outcome, why = self._no_pair_reason(key)
        pairs = self.pairs.get(key, [])
        widest = max(pairs, key=_margin, default=None)
        ratio = None
        if widest:
            lc, lr = len(_text_of(widest.get("chosen"))), len(_text_of(widest.get("rejected")))
            ratio = round(lc / lr, 3) if lr else None
        scores = " → ".join("–" if it.get("score") is None else f"{it['score']:g}" for it in its)
        truncated = any(it.get("finish_reason") == "length" for it in its)
        best = s.get("best")
        return {
            "id": key,
            "prompt": _question_cell(g, "prompt"),
            "scores": scores,
            "best": None if best is None else best + 1,
            "outcome": outcome,
            "pairs": len(pairs),
            "margin": widest.get("margin") if widest else None,
            "length_ratio": ratio,
            "reason": why,
            "f_decisive": outcome == "decisive",
            "f_tie": outcome == "tie",
            "f_failed": outcome == "failed",
            "f_truncated": truncated,
        }

    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def item(self, item_id: str) -> dict[str, Any] | None:
        g, s = self.gens.get(item_id), self.sels.get(item_id)
        if g is None and s is None:
            return None
        outcome, why = self._no_pair_reason(item_id)
        pairs = []
        for p in self.pairs.get(item_id, []):
            chosen, rejected = _text_of(p.get("chosen")), _text_of(p.get("rejected"))
            pairs.append(
                {
                    "chosen_iteration": p.get("chosen_iteration"),
                    "rejected_iteration": p.get("rejected_iteration"),
                    "chosen_score": p.get("chosen_score"),
                    "rejected_score": p.get("rejected_score"),
                    "margin": p.get("margin"),
                    "decisive": p.get("decisive", True),
                    "diff": word_diff(rejected, chosen),
                }
            )
        out = {
            "kind": "build",
            "id": item_id,
            "prompt": (g or {}).get("prompt"),
            "outcome": outcome,
            "reason": why,
            "generation": g,
            "selection": s,
            "pairs": pairs,
        }
        out.update(_conversation((g or {}).get("history"), None, (g or {}).get("reference")))
        if (g or {}).get("unanswered") and "turns" in out:
            out["answered_by"] = "generator"  # user turns given without answers: the generator answered them
        return out


# --------------------------------------------------------------------------- winrate, train, anything else


class RecordsView(View):
    """Any run's main record file listed: one row per record, its scalar fields as columns."""

    def __init__(self, ref: RunRef, run: Run, file: str, title: str, id_field: str = "key") -> None:
        super().__init__(f"run{ref.index}", title, ref.command, [ref])
        self.records = run.records(file) if (run.dir / file).exists() else []
        self.id_field = id_field
        self.extra: dict[str, dict[str, Any]] = {}
        if run.command == "winrate":  # the two responses each verdict compared
            for name in ("generations.jsonl", "baselines.jsonl"):
                self.extra.update({str(r.get("key")): r for r in run.records(name)})
        fields: dict[str, None] = {}
        for r in self.records[:500]:
            for k, v in r.items():
                if k not in ("config_fingerprint", "prompt_sha") and (v is None or isinstance(v, (str, int, float))):
                    fields.setdefault(k, None)
        first = [k for k in _FIRST if k in fields]
        shown = [k for k in [*first, *fields] if k != id_field]
        shown = list(dict.fromkeys(shown))[:12]
        self.columns = [col("id", id_field, width=200)] + [
            col(k, k, "number" if isinstance(self.records[0].get(k), (int, float)) else "text") for k in shown
        ]
        self._rows = []
        for n, r in enumerate(self.records):
            row: dict[str, Any] = {"id": str(r.get(id_field, n))}
            row.update({k: _snippet(r.get(k)) if isinstance(r.get(k), str) else r.get(k) for k in shown})
            row["f_failed"] = bool(r.get("failure"))
            self._rows.append(row)
        self.by_id = {row["id"]: r for row, r in zip(self._rows, self.records, strict=True)}
        if any(row["f_failed"] for row in self._rows):
            self.filters = [{"id": "failed", "title": "failed"}]
        if not self.records:
            self.notes.append(f"{ref.label}: no records in {file}.")

    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def item(self, item_id: str) -> dict[str, Any] | None:
        r = self.by_id.get(item_id)
        if r is None:
            return None
        out: dict[str, Any] = {"kind": "record", "id": item_id, "record": r}
        if self.kind == "winrate":
            prompt = r.get("prompt_id")
            conf, base = (
                self.extra.get(f"{r.get('configuration')}|{prompt}"),
                self.extra.get(f"{r.get('baseline')}|{prompt}"),
            )
            out["texts"] = [
                ["prompt", (conf or base or {}).get("prompt")],
                [f"configuration {r.get('configuration')} (A)", (conf or {}).get("final")],
                [f"baseline {r.get('baseline')} (B)", (base or {}).get("response")],
            ]
        return out


# --------------------------------------------------------------------------- loading


def _refs(paths: Sequence[str | Path]) -> list[tuple[RunRef, Run]]:
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        found = list(find_sources([p]))
        if not found:
            load_run(p)  # raises, naming what a run folder holds
        runs += [load_run(f) for f in found]
    labels = Counter(r.dir.name if r.agreement_file is None else r.agreement_file.name for r in runs)
    out = []
    for n, run in enumerate(runs):
        name = run.dir.name if run.agreement_file is None else run.agreement_file.name
        if labels[name] > 1:
            name = f"{run.dir.parent.name}/{name}" if run.agreement_file is None else f"{run.dir.name}/{name}"
        report = run.default_out
        out.append(
            (
                RunRef(
                    n,
                    name,
                    str(run.agreement_file or run.dir),
                    run.command,
                    str(run.manifest.get("status", "?")),
                    str(report) if (report / "report.html").is_file() else None,
                ),
                run,
            )
        )
    return out


def load_views(paths: Sequence[str | Path]) -> tuple[list[View], list[tuple[RunRef, Run]]]:
    """The views of the run folders, sweep folders and agreement outputs at ``paths``; raises
    FileNotFoundError naming a path that holds none."""
    refs = _refs(paths)
    views: list[View] = []
    evaluate = [(ref, run) for ref, run in refs if run.command in ("evaluate", "agreement")]
    if evaluate:
        views.append(EvaluateView(evaluate))
    for ref, run in refs:
        if run.command == "build":
            views.append(BuildView(ref, run))
        elif run.command == "winrate":
            views.append(RecordsView(ref, run, "judgements.jsonl", f"Winrate {ref.label}: verdicts"))
        elif run.command == "train":
            views.append(RecordsView(ref, run, "metrics.jsonl", f"Train {ref.label}: metrics"))
        elif run.command not in ("evaluate", "agreement"):
            views.append(RecordsView(ref, run, "judgements.jsonl", f"{run.command} {ref.label}"))
    return views, refs


def _evaluator_record(record: dict[str, Any]) -> bool:
    """An evaluator's own verdict on an item, of any kind (judge, jury, debate, reward, ...), not a juror's."""
    return is_judgement(record) and not record_kind(record.get("kind")).member
