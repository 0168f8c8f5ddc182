"""``mapo reparse RUN_DIR``: re-run today's parsers over the raw texts a run stored. No model call.

Reads whichever of these the run folder holds:

* ``judgements.jsonl`` (``mapo evaluate`` / ``mapo winrate``): judge and juror records are
  re-parsed attempt by attempt (the first raw text of an attempt that parses is its answer,
  as the judge would have stopped there), orders recombined; an attempt of a
  ``judge.scoring=expected`` run keeps that scoring: its re-parsed text is its ``argmax`` and
  its verdict is recomputed from the logprobs it kept (:func:`mapo.judging.scoring.stored_verdict`;
  the written value where it kept none, as the judge does live); jury records are re-aggregated
  from the re-parsed jurors; debate records from the re-parsed referees' finals.
* ``selections.jsonl`` (``mapo build``): the judge calls of each best-of-N selection; a
  tournament whose re-parsed verdicts would have sent a different pair to the judge is
  flagged ``needs_model_call`` (the stored calls no longer answer it) and keeps its choice.
* ``generations.jsonl`` (``mapo build`` / ``mapo winrate``): every review's score.

Writes ``RUN_DIR/reparsed.jsonl`` (each record as stored, with the re-parsed fields replaced
and a ``reparse`` entry: ``changed``, ``before``, ``note``) and prints how many verdicts
changed per file. ``mapo agreement RUN_DIR/reparsed.jsonl`` gives the kappas after reparse.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mapo.core.registry import UnknownNameError
from mapo.core.store import atomic_write_text, iter_records, latest_records
from mapo.core.types import Label, is_judgement, record_kind
from mapo.core.verdicts import combine_orders, label_pick, order_row, swap_label
from mapo.judging.debate import FinalScore, aggregate_finals
from mapo.judging.judge import STRATEGIES
from mapo.judging.jury import combine_jurors, jury_incomplete
from mapo.judging.strategy import INDEPENDENT, Strategy, first_ok, verdict_dict

__all__ = ["ReparseError", "main", "reparse_attempt", "reparse_run"]


class ReparseError(ValueError):
    """A stored record that cannot be replayed (e.g. its strategy is not registered): nothing is written."""


def _strategy(name: object, where: str) -> Strategy:
    """The registered strategy a record names; a clear refusal for one that is not registered."""
    try:
        return STRATEGIES.get(str(name))
    except UnknownNameError as e:
        raise ReparseError(
            f"{where}: {e}; it cannot be replayed (register it in mapo.judging.judge.STRATEGIES)"
        ) from None


def reparse_attempt(attempt: Mapping[str, Any], strategy: str, scale: int) -> tuple[dict[str, Any], str | None]:
    """A stored attempt ({order, raw, verdict}) re-parsed by its strategy -> (verdict dict, note)
    (:meth:`mapo.judging.strategy.Strategy.replay`); :class:`ReparseError` for an unregistered strategy."""
    return _strategy(strategy, "attempt").replay(attempt, scale)


def _combine_attempts(attempts: list[dict[str, Any]], rule: str) -> tuple[Label | None, float | None, float | None]:
    """Attempts (presentation order each) -> dataset-terms verdict, by the judge's own rule
    (:func:`mapo.core.verdicts.combine_orders`)."""
    rows = [
        order_row(v.get("pick"), v.get("score_a"), v.get("score_b"), v.get("failure"), a.get("order") or "AB")
        for a in attempts
        for v in [a["verdict"]]
    ]
    return combine_orders(rows, rule)


def _reparse_judged(rec: dict[str, Any], rule: str, where: str) -> tuple[dict[str, Any], list[str]]:
    """A record with detail.attempts (evaluate judge/juror, winrate, build selections)."""
    new = copy.deepcopy(rec)
    attempts = (new.get("detail") or {}).get("attempts") if "detail" in new else new.get("attempts")
    notes: list[str] = []
    if not attempts:
        return new, notes
    strategy = _strategy(new.get("strategy"), f"{where} (record {new.get('key')!r})")
    for a in attempts:
        v, note = strategy.replay(a, new["scale"])
        if note:
            notes.append(note)
        elif "scoring" in a:  # judge.scoring=expected: the written text re-parsed, the kept logprobs weigh it
            a["argmax"] = v
            weighted, how = strategy.stored_verdict(a, new["scale"], "expected")
            if how == "expected" or not str(a["scoring"]).startswith("argmax"):
                a["scoring"] = how  # else: the written value stood live too, for the reason recorded then
            v = verdict_dict(weighted)
        a["verdict"] = v
    label, sa, sb = _combine_attempts(attempts, rule)
    failure = None if label is not None else "; ".join(a["verdict"].get("failure") or "" for a in attempts)
    evaluated = is_judgement(new)  # mapo evaluate's: pick in presentation order, label in dataset terms
    outer_swap = new.get("order") == "BA" and evaluated
    if outer_swap:  # evaluate's BA records: the pair was judged swapped, stored in dataset terms
        new["pick"] = label_pick(label)
        label, sa, sb = swap_label(label), sb, sa
    elif evaluated:
        new["pick"] = label_pick(label)
    new.update(label=label, score_a=sa, score_b=sb, failure=failure)
    if "outcome" in new:  # mapo winrate's: the configuration's outcome follows the label
        new["outcome"] = {"model_a": "win", "model_b": "loss", "tie": "tie", None: "failed"}[label]
    return new, notes


def _reparse_debate(rec: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(rec)
    finals = []
    for f in new["detail"]["finals"]:
        r = first_ok(f["raw"], "debate_final", scale=new["scale"])
        f.update(
            score_a=float(r.value[0]) if r.ok else None,
            score_b=float(r.value[1]) if r.ok else None,
            failure=None if r.ok else r.error,
        )
        finals.append(FinalScore(f["role"], f["model"], f["raw"], f["score_a"], f["score_b"], f["failure"]))
    label: str | None
    label, sa, sb = aggregate_finals(finals, new["detail"]["aggregate"])
    new["detail"]["n_failed"] = sum(not f.ok for f in finals)
    new["pick"] = label_pick(label)
    if new.get("order") == "BA":
        label, sa, sb = swap_label(label), sb, sa
    failure = None if label is not None else "every referee's final scores failed to parse"
    new.update(label=label, score_a=sa, score_b=sb, failure=failure)
    return new


def _reparse_jury(rec: dict[str, Any], jurors: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    new = copy.deepcopy(rec)
    detail = new.get("detail") or {}
    members = list(detail.get("members") or new.get("models") or [])
    if not members or "aggregate" not in detail:
        return new, []
    missing = [m for m in members if m not in jurors]
    if missing:
        return new, [f"juror records missing for {', '.join(missing)}; kept"]
    try:
        v = combine_jurors(
            [(jurors[m].get("label"), jurors[m].get("score_a"), jurors[m].get("score_b")) for m in members],
            detail["aggregate"],
            detail.get("tie_break", "tie"),
        )
    except (ValueError, KeyError) as e:  # a tie_break or an aggregate that is not known (UnknownNameError)
        raise ReparseError(f"jury record {rec.get('key')!r}: {e}") from None
    detail["members"] = {m: jurors[m].get("label") for m in members}
    detail["n_failed"] = v.n_failed
    pick_label = swap_label(v.label) if new.get("order") == "BA" else v.label
    new.update(label=v.label, score_a=v.score_a, score_b=v.score_b, pick=label_pick(pick_label), failure=v.failure)
    new.pop("incomplete", None)
    failed = [(m, jurors[m].get("failure")) for m in members if jurors[m].get("label") is None]
    if why := jury_incomplete(failed, len(members), v.failure):  # the live jury's rule: not done
        new["incomplete"] = why
    return new, []


def _summary(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("label", "score_a", "score_b", "failure")}


def _judgements(
    path: Path, rule: str, damaged: list[int]
) -> Iterable[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    records = list(latest_records(path, on_damaged="skip", damaged=damaged))  # a retried failure is history
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for rec in records:
        replay = record_kind(rec.get("kind")).replay  # how its kind is derived again (core.types.RECORD_KINDS)
        if replay == "finals":
            out[rec["key"]] = (_reparse_debate(rec), [])
        elif replay == "attempts":
            out[rec["key"]] = _reparse_judged(rec, rec.get("order_combine", rule), path.name)
        elif replay is None:  # e.g. a reward model's (no text to re-parse) or a kind without a replay: kept as is
            kept = [] if not rec.get("raw") else [f"kind {rec.get('kind')}: no re-parse rule for its raw texts; kept"]
            out[rec["key"]] = (copy.deepcopy(rec), kept)
    jurors: dict[tuple, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for new, _ in out.values():
        if record_kind(new.get("kind")).member:
            jurors[(new.get("member_of"), new["item_id"], new["order"], new["prompt_sha"])][new["judge"]] = new
    for rec in records:
        if record_kind(rec.get("kind")).replay == "members":
            out[rec["key"]] = _reparse_jury(
                rec, jurors[(rec["judge"], rec["item_id"], rec["order"], rec["prompt_sha"])]
            )
    for rec in records:
        if rec["key"] in out:
            new, notes = out[rec["key"]]
            yield rec, new, notes


def _selections(
    path: Path, rule: str, damaged: list[int]
) -> Iterable[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    for rec in latest_records(path, on_damaged="skip", damaged=damaged):  # a retried failure is history
        new = copy.deepcopy(rec)
        notes: list[str] = []
        js = new.get("judgements") or []
        if new.get("method") == "tournament":
            best: int | None = 0
            for j in js:
                j2, n = _reparse_judged(j, rule, path.name)
                j.update(j2)
                notes += n
            for j in js:
                if j["a"] != best:
                    notes.append(
                        f"a re-parsed verdict changes which pair is judged next ({best} vs {j['b']}); "
                        "needs_model_call: choice kept"
                    )
                    best = rec.get("best")
                    break
                if j.get("label") is None:
                    best = None
                    break
                if j["label"] == "model_b":
                    best = j["b"]
            new["best"] = best
            new["failure"] = None if best is not None else new.get("failure") or "judge failed"
        elif new.get("method") == "score_all":
            scale = 10
            scores = []
            for j in js:
                if "tie_margin" in j:  # a pointwise evaluator's score (a reward): no text to re-parse
                    scores.append(j.get("score"))
                    continue
                r = first_ok(j.get("raw") or [], INDEPENDENT.parser, scale=scale)  # Judge.score_single's ask
                j["score"], j["failure"] = (float(r.value), None) if r.ok else (None, r.error)
                scores.append(j["score"])
            new["scores"] = scores
            new["best"] = (
                None
                if not scores or any(s is None for s in scores)
                else max(range(len(scores)), key=lambda i: (scores[i], -i))
            )
        yield rec, new, notes


def _generations(path: Path, damaged: list[int]) -> Iterable[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    for rec in iter_records(path, on_damaged="skip", damaged=damaged):
        new = copy.deepcopy(rec)
        for it in new.get("iterations") or []:
            for rv in it.get("reviews") or []:
                r = first_ok(rv.get("raw") or [], "review")
                if r.ok:
                    rv.update(
                        score=float(r.value.score),
                        evaluation=r.value.evaluation,
                        feedback=r.value.feedback,
                        failure=None,
                    )
                else:
                    rv.update(score=None, evaluation=None, feedback=None, failure=r.error)
            scores = [rv["score"] for rv in it.get("reviews") or [] if rv.get("score") is not None]
            it["score"] = sum(scores) / len(scores) if scores else None
        yield rec, new, []


def _gen_summary(rec: Mapping[str, Any]) -> list:
    return [[rv.get("score") for rv in it.get("reviews") or []] for it in rec.get("iterations") or []]


def reparse_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-parse every stored raw text in ``run_dir``; write reparsed.jsonl; return the counts."""
    run_dir = Path(run_dir)
    rule = "inconsistent_tie"
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        rule = ((cfg.get("judge") or {}).get("order_combine")) or rule
    files = {
        "judgements.jsonl": lambda p, d: _judgements(p, rule, d),
        "selections.jsonl": lambda p, d: _selections(p, rule, d),
        "generations.jsonl": _generations,
    }
    present = [name for name in files if (run_dir / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{run_dir}: no judgements.jsonl, selections.jsonl or generations.jsonl to reparse")
    lines: list[str] = []
    summary: dict[str, Any] = {}
    for name in present:
        c: Counter = Counter()
        damaged: list[int] = []  # unreadable lines: warned about and skipped, as `mapo report` does
        before: Any
        after: Any
        for old, new, notes in files[name](run_dir / name, damaged):
            if name == "generations.jsonl":
                before, after = _gen_summary(old), _gen_summary(new)
                c["reviews"] += sum(len(x) for x in before)
                c["reviews_changed"] += sum(
                    a != b for x, y in zip(before, after, strict=False) for a, b in zip(x, y, strict=False)
                )
                changed = before != after
            elif name == "selections.jsonl":
                before, after = {"best": old.get("best")}, {"best": new.get("best")}
                changed = before != after
            else:
                before, after = _summary(old), _summary(new)
                changed = (before["label"], before["failure"] is None) != (after["label"], after["failure"] is None)
                c["failures_before"] += before["failure"] is not None
                c["failures_after"] += after["failure"] is not None
                c["scores_changed"] += (before["score_a"], before["score_b"]) != (after["score_a"], after["score_b"])
            c["records"] += 1
            c["changed"] += changed
            c["notes"] += bool(notes)
            c["needs_model_call"] += any("needs_model_call" in n for n in notes)
            new["reparse"] = {"file": name, "changed": changed, "before": before, "note": "; ".join(notes) or None}
            lines.append(json.dumps(new, ensure_ascii=False))
        if damaged:
            c["damaged_lines_skipped"] = len(damaged)
        summary[name] = dict(c)
    atomic_write_text(run_dir / "reparsed.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapo reparse", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", help="a run folder (runs/<name>) holding judgements/selections/generations.jsonl")
    args = ap.parse_args(argv)
    try:
        summary = reparse_run(args.run_dir)
    except (OSError, ReparseError) as e:  # no record file; a record it cannot replay; reparsed.jsonl unwritable
        print(f"mapo reparse: {e}", file=sys.stderr)
        return 2
    for name, c in summary.items():
        what = "reviews" if name == "generations.jsonl" else "verdicts"
        line = f"{name}: {c.get('records', 0)} records, {c.get('changed', 0)} {what} changed"
        if name == "judgements.jsonl":
            line += f" (failures {c.get('failures_before', 0)} -> {c.get('failures_after', 0)}, scores changed {c.get('scores_changed', 0)})"
        if name == "generations.jsonl":
            line += f" ({c.get('reviews_changed', 0)} of {c.get('reviews', 0)} review scores)"
        if c.get("needs_model_call"):
            line += f"; {c['needs_model_call']} would need a model call (choice kept)"
        elif c.get("notes"):
            line += f"; {c['notes']} with notes (see reparse.note)"
        if c.get("damaged_lines_skipped"):
            line += f"; {c['damaged_lines_skipped']} damaged lines skipped (named above)"
        print(line)
    print(f"wrote {Path(args.run_dir) / 'reparsed.jsonl'}")
    return 0
