"""``mapo evaluate``: a judge, a jury or a debate over a human-labelled set, and its agreement.

Runs ``evaluator`` (``judge``: ``roles.judge`` with ``judge.*``; ``jury``: ``roles.jurors``,
each judging with ``judge.*``, aggregated by ``jury.*``; ``debate``: ``roles.debaters`` with
``debate.*``) over every item of ``eval_data`` (a loader of :mod:`mapo.data.humans`), in one or
both presentation orders (``judge.both_orders``; the independent strategy has no order).
Items stream through a bounded pool (``max_items_in_flight``). Config and input are checked
before any model call. A rerun into the same folder resumes: finished keys are skipped and
the response cache answers the rest.

Files written to ``output_dir``:

* ``judgements.jsonl``: one record per (item, judge, setup, order), appended as it finishes;
* ``agreement.json``: Cohen's kappa per judge / juror / jury / debate, confusion matrix,
  failure rate, kappa per order and position bias when both orders were judged, and (for a
  jury) the kappa of every subset of the jurors, best first, computed from the stored
  juror labels with no model call;
* ``manifest.json``: status, models, usage per (role, model), timings, throughput;
* ``config.yaml``: the composed config.

Record schema of ``judgements.jsonl`` (one JSON object per line):

=================  =========================================================================
key                ``<item_id>|<judge>|<setup>|v<version>|<prompt_sha>|<order>``; resume key
                   (for a juror ``<judge>`` is ``<jury>/<juror>``)
item_id            the item's id in the evaluation set
evaluator          the run's evaluator: judge | jury | debate
kind               what this record is: judge | juror (one jury member) | jury | debate
judge              model name (judge, juror), ``jury[a+b+c]`` or ``debate[a+b+c]``
models             the models behind it (conf/model names)
member_of          the jury's name for a juror record, else null
setup              judging setup: ``combined10``, ``direct``, ``independent10``, for a jury
                   ``combined10/mode-tie``, for a debate ``debate10/r2/mean_score``
strategy, scale    judge strategy (``debate`` for a debate) and score total
version            ``judge.version`` (bump when prompts or parsing change)
order              AB = response_a shown first; BA = response_b shown first (swapped)
prompt_sha         hash of the prompt text(s) used
pick               A | B | tie | null: the verdict in presentation order
label              model_a | model_b | tie | null: the verdict with the swap undone
score_a, score_b   scores of response_a / response_b (dataset terms); null for direct
failure            why there is no verdict (parse failure, rejected request), else null
human              the human label (model_a | model_b | tie)
raw                every raw model text, in the order produced (re-parseable: mapo reparse)
detail             judge / juror: ``attempts`` (per-attempt raw texts and parsed verdicts);
                   jury: ``aggregate``, ``tie_break``, ``members`` (juror labels), ``n_failed``;
                   debate: ``roles``, ``rounds``, ``aggregate``, ``utterances``, ``finals``
prompt_tokens,     token and time accounting for this record (cached = every call was a
completion_tokens, cache hit)
latency_s, cached
=================  =========================================================================

A failed judgement is never a tie: ``label`` is null, it is left out of every kappa and
counted in ``n_failed`` / ``failure_rate``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mapo.core.config import REPO_ROOT, ConfigError, RunConfig, validate
from mapo.core.registry import UnknownNameError
from mapo.data.humans import LOADERS, HumanDataError, HumanRow
from mapo.judging.debate import Debate, DebateJudgement
from mapo.judging.judge import STRATEGIES, Judge, PairJudgement
from mapo.judging.jury import TIE_BREAKS, Jury, JuryJudgement
from mapo.llm.client import EndpointUnavailable
from mapo.metrics.tables import agreement_tables, combine_orders, format_table
from mapo.runs.progress import Progress
from mapo.runs.runner import (
    RunStopped,
    item_failure,
    make_client,
    models_manifest,
    run_accounting,
    run_pool,
    write_config,
)
from mapo.runs.store import RecordStore, RunLock, atomic_write_json, iter_records

__all__ = ["EVALUATORS", "agreement_tables", "combine_orders", "evaluate", "format_table", "load_items"]

log = logging.getLogger(__name__)

EVALUATORS = {"judge": "judge", "jury": "jurors", "debate": "debaters"}
"""evaluator -> the role (``roles.<role>``) naming its models."""

_PICK = {"model_a": "A", "model_b": "B", "tie": "tie"}
_SWAP = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}


# --------------------------------------------------------------------------- input


def load_items(spec: Mapping[str, Any]) -> tuple[list[HumanRow], dict[str, Any]]:
    """The human-labelled rows named by ``eval_data`` ({loader, limit, <loader kwargs>}).

    Relative paths are taken from the working directory, else from the repository root.
    Any problem is a :class:`ConfigError` naming the key, file and line.
    """
    spec = dict(spec or {})
    if not spec:
        raise ConfigError("eval_data is empty: choose a set, e.g. eval_data=faireval (conf/eval_data/)")
    loader = spec.pop("loader", None)
    limit = spec.pop("limit", None)
    try:
        fn = LOADERS.get(str(loader), key="eval_data.loader")
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    kwargs = {k: v for k, v in spec.items() if v is not None}
    for key in ("path", "data_files"):
        if isinstance(kwargs.get(key), str):
            p = Path(kwargs[key]).expanduser()
            if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
                p = REPO_ROOT / p
            kwargs[key] = str(p)
    try:
        rows = fn(**kwargs)
    except HumanDataError as e:
        raise ConfigError(f"eval_data ({loader}): {e}") from None
    except TypeError as e:
        raise ConfigError(f"eval_data: loader {loader!r} does not take {sorted(kwargs)} ({e})") from None
    if limit is not None:
        if int(limit) < 1:
            raise ConfigError(f"eval_data.limit must be >= 1 or null, got {limit}")
        rows = rows[: int(limit)]
    if not rows:
        raise ConfigError(f"eval_data ({loader}): no items")
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise ConfigError(f"eval_data ({loader}): duplicate item id {r['id']!r}")
        seen.add(r["id"])
    info = {
        "loader": loader,
        **{k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))},
        "limit": limit,
        "n_items": len(rows),
    }
    return rows, info


# --------------------------------------------------------------------------- the evaluators


def _judge_setup(cfg: RunConfig) -> str:
    return cfg.judge.strategy if cfg.judge.strategy == "direct" else f"{cfg.judge.strategy}{cfg.judge.scale}"


def _orders(cfg: RunConfig) -> list[str]:
    no_order = cfg.evaluator != "debate" and cfg.judge.strategy == "independent"
    return ["AB", "BA"] if cfg.judge.both_orders and not no_order else ["AB"]


def _check(cfg: RunConfig) -> None:
    """Everything that can be checked without a model call."""
    if cfg.evaluator not in EVALUATORS:
        raise ConfigError(f"evaluator={cfg.evaluator!r}; allowed: {', '.join(EVALUATORS)}")
    validate(cfg, [EVALUATORS[cfg.evaluator]])
    try:
        if cfg.evaluator in ("judge", "jury"):
            STRATEGIES.get(cfg.judge.strategy, key="judge.strategy")
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    if cfg.judge.reask < 0:
        raise ConfigError(f"judge.reask must be >= 0, got {cfg.judge.reask}")
    if cfg.evaluator == "jury" and cfg.jury.tie_break not in TIE_BREAKS:
        raise ConfigError(f"jury.tie_break={cfg.jury.tie_break!r}; allowed: {', '.join(TIE_BREAKS)}")


def _build(cfg: RunConfig, client) -> Judge | Jury | Debate:
    judge_cfg = dataclasses.replace(cfg.judge, both_orders=False)  # orders are ours: one record per order
    try:
        if cfg.evaluator == "judge":
            ev: Judge | Jury | Debate = Judge(client, cfg.roles.judge, judge_cfg)
        elif cfg.evaluator == "jury":
            ev = Jury(client, cfg.roles.jurors, judge_cfg, cfg.jury)
        else:
            ev = Debate(client, cfg.roles.debaters, cfg.debate)
        _ = ev.prompt_sha if not isinstance(ev, Jury) else ev.judges[0].prompt_sha  # prompts exist
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    return ev


def _base(
    item: HumanRow, order: str, kind: str, judge: str, setup: str, prompt_sha: str, version: int, evaluator: str
) -> dict[str, Any]:
    return {
        "key": "|".join([item["id"], judge, setup, f"v{version}", prompt_sha, order]),
        "item_id": item["id"],
        "evaluator": evaluator,
        "kind": kind,
        "judge": judge,
    }


def _verdict_fields(result: PairJudgement | JuryJudgement | DebateJudgement, order: str) -> dict[str, Any]:
    """Presentation-order result -> pick (as shown) and label/scores in dataset terms."""
    label = result.label if result.ok else None
    sa, sb = result.score_a, result.score_b
    if order == "BA":
        sa, sb = sb, sa
    return {
        "pick": _PICK[label] if label else None,
        "label": _SWAP[label] if (label and order == "BA") else label,
        "score_a": sa,
        "score_b": sb,
        "failure": result.failure,
    }


def _judge_record(
    cfg: RunConfig, item: HumanRow, order: str, j: PairJudgement, kind: str, member_of: str | None
) -> dict[str, Any]:
    setup = _judge_setup(cfg)
    # a juror's key names its jury: another jury reusing this juror gets its own records (cache hits)
    keyed = f"{member_of}/{j.judge}" if member_of else j.judge
    rec = _base(item, order, kind, keyed, setup, j.prompt_sha, cfg.judge.version, cfg.evaluator)
    rec.update(
        judge=j.judge,
        models=[j.judge],
        member_of=member_of,
        setup=setup,
        strategy=j.strategy,
        scale=j.scale,
        version=cfg.judge.version,
        order=order,
        prompt_sha=j.prompt_sha,
        **_verdict_fields(j, order),
        human=item["human"],
        raw=[t for a in j.attempts for t in a.raw],
        detail={"attempts": j.to_record()["attempts"]},
        prompt_tokens=sum(a.prompt_tokens for a in j.attempts),
        completion_tokens=sum(a.completion_tokens for a in j.attempts),
        latency_s=round(sum(a.latency_s for a in j.attempts), 4),
        cached=bool(j.attempts) and all(a.cached for a in j.attempts),
    )
    return rec


def _jury_setup(cfg: RunConfig) -> str:
    return f"{_judge_setup(cfg)}/{cfg.jury.aggregate}-{cfg.jury.tie_break}"


def _jury_records(cfg: RunConfig, item: HumanRow, order: str, j: JuryJudgement) -> list[dict[str, Any]]:
    out = [_judge_record(cfg, item, order, m, "juror", j.judge) for m in j.members]
    setup = _jury_setup(cfg)
    rec = _base(item, order, "jury", j.judge, setup, j.prompt_sha, cfg.judge.version, cfg.evaluator)
    rec.update(
        models=[m.judge for m in j.members],
        member_of=None,
        setup=setup,
        strategy=j.strategy,
        scale=j.scale,
        version=cfg.judge.version,
        order=order,
        prompt_sha=j.prompt_sha,
        **_verdict_fields(j, order),
        human=item["human"],
        raw=[],  # the jurors' raw texts are in their own records
        detail={
            "aggregate": j.aggregate,
            "tie_break": j.tie_break,
            "n_failed": j.n_failed,
            "members": {m.judge: (_SWAP[m.label] if m.label and order == "BA" else m.label) for m in j.members},
        },
        prompt_tokens=sum(r["prompt_tokens"] for r in out),
        completion_tokens=sum(r["completion_tokens"] for r in out),
        latency_s=max((r["latency_s"] for r in out), default=0.0),
        cached=all(r["cached"] for r in out),
    )
    return [*out, rec]


def _debate_setup(cfg: RunConfig) -> str:
    return f"debate{cfg.debate.scale}/r{cfg.debate.rounds}/{cfg.debate.aggregate}/" + ",".join(cfg.debate.roles)


def _debate_record(cfg: RunConfig, item: HumanRow, order: str, d: DebateJudgement) -> dict[str, Any]:
    setup = _debate_setup(cfg)
    rec = _base(item, order, "debate", d.judge, setup, d.prompt_sha, cfg.judge.version, cfg.evaluator)
    detail = d.to_record()
    rec.update(
        models=list(cfg.roles.debaters),
        member_of=None,
        setup=setup,
        strategy="debate",
        scale=d.scale,
        version=cfg.judge.version,
        order=order,
        prompt_sha=d.prompt_sha,
        **_verdict_fields(d, order),
        human=item["human"],
        raw=d.raw,
        detail={
            "roles": list(cfg.debate.roles),
            "rounds": cfg.debate.rounds,
            "aggregate": d.aggregate,
            "n_failed": d.n_failed,
            "utterances": detail["utterances"],
            "finals": detail["finals"],
        },
        prompt_tokens=d.prompt_tokens,
        completion_tokens=d.completion_tokens,
        latency_s=round(d.latency_s, 4),
        cached=d.cached,
    )
    return rec


def _failed_records(cfg: RunConfig, ev, item: HumanRow, order: str, reason: str) -> list[dict[str, Any]]:
    """A per-item fault (e.g. a rejected request) recorded as a failure, so a rerun skips it."""
    name, setup, sha = _identity(cfg, ev)
    rec = _base(
        item,
        order,
        {"judge": "judge", "jury": "jury", "debate": "debate"}[cfg.evaluator],
        name,
        setup,
        sha,
        cfg.judge.version,
        cfg.evaluator,
    )
    rec.update(
        models=_models_of(cfg),
        member_of=None,
        setup=setup,
        strategy=cfg.judge.strategy if cfg.evaluator != "debate" else "debate",
        scale=cfg.judge.scale if cfg.evaluator != "debate" else cfg.debate.scale,
        version=cfg.judge.version,
        order=order,
        prompt_sha=sha,
        pick=None,
        label=None,
        score_a=None,
        score_b=None,
        failure=reason,
        human=item["human"],
        raw=[],
        detail={},
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=0.0,
        cached=False,
    )
    return [rec]


def _identity(cfg: RunConfig, ev) -> tuple[str, str, str]:
    if isinstance(ev, Judge):
        return ev.model, _judge_setup(cfg), ev.prompt_sha
    if isinstance(ev, Jury):
        return ev.name, _jury_setup(cfg), ev.judges[0].prompt_sha
    return ev.name, _debate_setup(cfg), ev.prompt_sha


def _models_of(cfg: RunConfig) -> list[str]:
    value = getattr(cfg.roles, EVALUATORS[cfg.evaluator])
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------- agreement

# agreement_tables, combine_orders and format_table live in mapo.metrics.tables (shared with
# `mapo agreement`, `mapo report` and `mapo reparse`); they are imported above and re-exported.


# --------------------------------------------------------------------------- the command


async def evaluate(cfg: RunConfig) -> dict[str, Any]:
    """Run the configured evaluator over ``eval_data`` and compute its agreement (module doc)."""
    _check(cfg)
    items, data_info = load_items(cfg.eval_data)  # bad input fails here, before any model call
    orders = _orders(cfg)
    client = make_client(cfg)
    try:
        ev = _build(cfg, client)  # unknown names, prompts, debaters: still before any call or file
        return await _run(cfg, client, ev, items, data_info, orders)
    finally:
        await client.aclose()
        if client.cache is not None:
            client.cache.close()


async def _run(
    cfg: RunConfig, client, ev, items: list[HumanRow], data_info: dict[str, Any], orders: list[str]
) -> dict[str, Any]:
    run_dir = Path(cfg.output_dir)
    with RunLock(run_dir):
        write_config(cfg, run_dir)
        t_start = time.time()
        models = _models_of(cfg)
        store = RecordStore(run_dir / "judgements.jsonl")
        name, setup, sha = _identity(cfg, ev)
        done_key = lambda item, order: "|".join([item["id"], name, setup, f"v{cfg.judge.version}", sha, order])  # noqa: E731
        units = [(item, order) for item in items for order in orders]
        counts = {"units": len(units), "resumed_done": sum(done_key(i, o) in store for i, o in units), "failed": 0}
        progress = Progress("evaluate", len(units), client.stats, cfg.client.progress)
        judging_s = [0.0]
        status = "complete"

        async def work(unit: tuple[HumanRow, str]) -> None:
            item, order = unit
            if done_key(item, order) in store:
                progress.update()
                return
            first, second = (
                (item["response_a"], item["response_b"]) if order == "AB" else (item["response_b"], item["response_a"])
            )
            t0 = time.perf_counter()
            try:
                result = await ev.judge_pair(item["question"], first, second)
            except Exception as e:
                reason = item_failure(e)
                if reason is None:
                    raise
                recs = _failed_records(cfg, ev, item, order, reason)
            else:
                if isinstance(result, JuryJudgement):
                    recs = _jury_records(cfg, item, order, result)
                elif isinstance(result, DebateJudgement):
                    recs = [_debate_record(cfg, item, order, result)]
                else:
                    recs = [_judge_record(cfg, item, order, result, "judge", None)]
            judging_s[0] += time.perf_counter() - t0
            for rec in recs:  # the evaluator's own record goes last: it marks the unit done
                store.append(rec)
            failed = recs[-1]["label"] is None
            counts["failed"] += failed
            progress.update(failed=failed)

        try:
            if cfg.client.check_endpoints:
                await client.check(models)
            await run_pool(iter_units(items, orders), work, cfg.max_items_in_flight)
        except EndpointUnavailable as e:
            status = "stopped"
            raise RunStopped(
                f"run stopped: {e}. {len(store)} records are saved in {run_dir}; rerun the same command to resume."
            ) from e
        finally:
            progress.close()
            store.close()
            wall = time.time() - t_start
            manifest: dict[str, Any] = {
                "command": "evaluate",
                "status": status,
                "output_dir": str(run_dir),
                "evaluator": cfg.evaluator,
                "judge": name,
                "setup": setup,
                "orders": orders,
                "roles": {EVALUATORS[cfg.evaluator]: cfg.roles.judge if cfg.evaluator == "judge" else models},
                "models": models_manifest(cfg, models),
                "eval_data": data_info,
                "items": {"total": len(items), **counts},
                # judging_summed adds every unit's time (they overlap); per_unit is its mean
                "timings_s": {
                    "wall": round(wall, 2),
                    "judging_summed": round(judging_s[0], 2),
                    "per_unit": round(judging_s[0] / max(1, len(units) - counts["resumed_done"]), 3),
                },
                **run_accounting(client, wall),
            }
            if status == "complete":
                wanted = {done_key(i, o) for i, o in units}
                ids = {i["id"] for i in items}
                # this run's records: the evaluator's own, plus (jury) its jurors' for the same items/orders
                records = [
                    r
                    for r in iter_records(run_dir / "judgements.jsonl")
                    if r["key"] in wanted
                    or (
                        r.get("member_of") == name
                        and r["item_id"] in ids
                        and r["setup"] == _judge_setup(cfg)
                        and r["order"] in orders
                        and r["prompt_sha"] == sha
                        and r.get("version") == cfg.judge.version
                    )
                ]
                tables = agreement_tables(
                    records, order_combine=cfg.judge.order_combine, subsets=cfg.evaluator == "jury"
                )
                tables = {"eval_data": data_info, "evaluator": cfg.evaluator, "orders": orders, **tables}
                atomic_write_json(run_dir / "agreement.json", tables)
                main = next((e for e in tables["results"] if e["judge"] == name), None)
                if main is not None:
                    manifest["agreement"] = {
                        k: main.get(k) for k in ("kappa", "n", "n_failed", "failure_rate", "accuracy")
                    }
                    if "position_bias" in main:
                        manifest["agreement"]["position_bias"] = main["position_bias"]
                log.info(
                    "agreement with humans (%s, %d items):\n%s", data_info["loader"], len(items), format_table(tables)
                )
            atomic_write_json(run_dir / "manifest.json", manifest)
    return manifest


def iter_units(items: list[HumanRow], orders: list[str]) -> Iterator[tuple[HumanRow, str]]:
    for item in items:
        for order in orders:
            yield item, order
