"""``mapo evaluate``: a judge, a jury, a debate or a reward model over a human-labelled set, and its agreement.

Runs ``evaluator`` (``judge``: ``roles.judge`` with ``judge.*``; ``jury``: ``roles.jurors``,
each judging with ``judge.*``, aggregated by ``jury.*``; ``debate``: ``roles.debaters`` with
``debate.*``; ``reward``: the reward model ``roles.judge`` with ``reward.*``, built by
:mod:`mapo.judging.evaluators`) over every item of ``eval_data`` (a loader of :mod:`mapo.data.humans`), in one or
both presentation orders (``judge.both_orders``; the independent strategy has no order).
Items stream through a bounded pool (``max_items_in_flight``). Config and input are checked
before any model call. A multi-turn item (``context`` in its row: MT-Bench turn 2, a local file's
``conversation`` column) is asked as a :class:`~mapo.core.types.Conversation`: the evaluator's models see
the earlier turns (each side's own, in the order presented); an evaluator without a multi-turn prompt
(a debate, a judge pack) is refused before any call, and the multi-turn templates join the fingerprint
(``prompt_sha.multiturn``) only when the set has such items. A rerun into the same folder resumes: finished keys are skipped and
the response cache answers the rest.

Files written to ``output_dir``:

* ``judgements.jsonl``: one record per (item, judge, setup, order), appended as it finishes;
* ``agreement.json``: Cohen's kappa per judge / juror / jury / debate, confusion matrix,
  failure rate, kappa per order and position bias when both orders were judged, and (for a
  jury) the kappa of every subset of the jurors, best first, computed from the stored
  juror labels with no model call; every kappa and accuracy with its bootstrap interval and
  the verdict against the reference evaluator (``stats.*``: resamples, seed, confidence,
  margin, reference; :mod:`mapo.metrics.uncertainty`);
* ``manifest.json``: status, models, usage per (role, model), timings, throughput, the
  headline agreement with its interval, and ``scoring``: with ``judge.scoring=expected``, how
  many answers were weighed by their logprobs and how many kept as written (and why);
* ``config.yaml``: the composed config.

Record schema of ``judgements.jsonl`` (one JSON object per line):

=================  =========================================================================
key                ``<item_id>|<judge>|<setup>|v<version>|<prompt_sha>|<order>``; resume key
                   (for a juror ``<judge>`` is ``<jury>/<juror>``)
item_id            the item's id in the evaluation set
evaluator          the run's evaluator: judge | jury | debate | reward
kind               what this record is: judge | juror (one jury member) | jury | debate | reward
judge              model name (judge, juror), ``jury[a+b+c]`` or ``debate[a+b+c]``
models             the models behind it (conf/model names)
member_of          the jury's name for a juror record, else null
setup              judging setup: ``combined10``, ``direct``, ``independent10``, for a jury
                   ``combined10/mode-tie``, for a debate ``debate10/r2/mean_score``, for a
                   reward model ``reward/margin<reward.tie_margin>``
strategy, scale    judge strategy (``debate``, ``reward``) and score total (null for a reward)
version            ``judge.version`` (bump when prompts or parsing change)
order              AB = response_a shown first; BA = response_b shown first (swapped)
prompt_sha         hash of the prompt text(s) used (``none``: a reward model sends none)
pick               A | B | tie | null: the verdict in presentation order
label              model_a | model_b | tie | null: the verdict with the swap undone
score_a, score_b   scores of response_a / response_b (dataset terms); null for direct; the raw
                   rewards for a reward model
failure            why there is no verdict (parse failure, rejected request), else null
human              the human label (model_a | model_b | tie)
raw                every raw model text, in the order produced (re-parseable: mapo reparse)
detail             judge / juror: ``attempts`` (per-attempt raw texts and parsed verdicts);
                   jury: ``aggregate``, ``tie_break``, ``members`` (juror labels), ``n_failed``;
                   debate: ``roles``, ``rounds``, ``aggregate``, ``utterances``, ``finals``;
                   reward: ``reward_a``, ``reward_b``, ``margin``, ``tie_margin``
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
from collections.abc import Iterator
from typing import Any

from mapo.core.config import ConfigError, Reference, RunConfig, validate
from mapo.core.registry import UnknownNameError
from mapo.core.store import atomic_write_json, latest_records
from mapo.core.types import Question, swap_question
from mapo.data.humans import HumanRow, item_question, load_items
from mapo.judging.base import Evaluator, Judgement, Probe, RecordContext
from mapo.judging.evaluators import evaluator_class, from_config, models_of
from mapo.judging.judge import judge_setup
from mapo.llm.client import LLMClient, item_failure
from mapo.metrics.tables import agreement_tables, combine_orders, format_table
from mapo.metrics.uncertainty import stats_options
from mapo.runs.runner import RunCommand, execute, model_keys, models_manifest, section_keys, templates_sha

__all__ = ["agreement_tables", "combine_orders", "evaluate", "format_table"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- input


# --------------------------------------------------------------------------- the evaluators


def _judge_setup(cfg: RunConfig) -> str:
    return judge_setup(cfg.judge)


def _orders(cfg: RunConfig, ev: Evaluator) -> list[str]:
    # one order for an evaluator the order cannot change (a pointwise strategy, a reward model; a cascade
    # judges both itself)
    return ["AB", "BA"] if cfg.judge.both_orders and ev.ordered else ["AB"]


def _check(cfg: RunConfig) -> None:
    """Everything that can be checked without a model call (choices and ranges: RunConfig.check)."""
    cfg.check()  # first: a valid evaluator names the role to validate
    validate(cfg, list(evaluator_class(cfg).config_roles))


def _build(cfg: RunConfig, client) -> Evaluator:
    """The configured evaluator (``evaluator``), its prompts loaded: a bad name fails before any call."""
    judge_cfg = dataclasses.replace(cfg.judge, both_orders=False)  # orders are ours: one record per order
    try:
        ev = from_config(cfg, client, judge_cfg)
        _ = ev.prompt_sha  # prompts exist
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    return ev


def _context(cfg: RunConfig, item: HumanRow, order: str) -> RecordContext:
    return RecordContext(
        item_id=item["id"],
        human=item["human"],
        order=order,
        version=cfg.judge.version,
        evaluator=cfg.evaluator,
        annotators=item.get("annotators"),
    )


def _records(cfg: RunConfig, ev: Evaluator, item: HumanRow, order: str, result: Judgement) -> list[dict[str, Any]]:
    """The records of one judged unit (a jury's jurors first); the evaluator's own record is last."""
    return result.records(_context(cfg, item, order))


def _failed_records(cfg: RunConfig, ev: Evaluator, item: HumanRow, order: str, reason: str) -> list[dict[str, Any]]:
    """A per-item fault (e.g. a rejected request) recorded as a failure, so a rerun skips it."""
    return ev.failed_records(_context(cfg, item, order), reason)


def _identity(cfg: RunConfig, ev: Evaluator) -> tuple[str, str, str]:
    """(name, setup, prompt_sha): what keys the evaluator's records."""
    return ev.identity()


MULTITURN_TEMPLATES = ("multiturn_",)
"""Name prefix of the judge's multi-turn templates in ``judge.prompt_set`` (hashed into the fingerprint of a run
with multi-turn items only, so a single-turn run's fingerprint is unchanged)."""


def _unit_question(item: HumanRow, order: str) -> Question:
    """What the evaluator is asked for one unit: the item's question (:func:`~mapo.data.humans.item_question`),
    a conversation's sides exchanged in the swapped order (response B shown first, with its own turns)."""
    question = item_question(item)
    return question if order == "AB" else swap_question(question)


def _check_conversations(cfg: RunConfig, ev: Evaluator, n_multi: int) -> None:
    """A set with multi-turn items needs an evaluator that shows the earlier turns (checked before any call)."""
    if n_multi and not ev.conversations:
        raise ConfigError(
            f"eval_data has {n_multi} multi-turn items but evaluator={cfg.evaluator} (strategy {ev.strategy}) has no "
            "multi-turn prompt (the earlier turns would be lost); use a judge, jury or cascade with "
            "judge.strategy=direct|combined|independent, or a reward model"
        )


REFERENCE_TEMPLATES = ("reference_",)
"""Name prefix of the reference-guided template (in the fingerprint under judge.reference=guided only)."""


def _check_references(cfg: RunConfig, ev: Evaluator, items: list[HumanRow]) -> None:
    """judge.reference=guided needs an evaluator that shows a reference and a reference for every item."""
    if cfg.judge.reference != Reference.guided:
        return
    if not ev.references:
        raise ConfigError(
            f"judge.reference=guided: evaluator={cfg.evaluator} (strategy {ev.strategy}) has no reference-guided "
            "prompt; use a judge, jury or cascade with judge.strategy=direct|combined|independent"
        )
    missing = [r["id"] for r in items if "reference" not in r]
    if missing:
        raise ConfigError(
            f"judge.reference=guided: {len(missing)} of {len(items)} items have no reference answer (a 'reference' "
            f"column; first: {', '.join(map(repr, missing[:3]))})"
        )


def _check_reference(cfg: RunConfig, ev: Evaluator) -> None:
    """``stats.reference`` names this run's evaluator, one of its jurors or a subset of them
    (``a+b``): a name the agreement table will hold, checked before any model call."""
    ref, judge_name = cfg.stats.reference, ev.name
    if ref is None:
        return
    members = set(ev.subset_members)
    if ref == judge_name or (members and set(str(ref).split("+")) <= members):
        return
    known = [judge_name, *sorted(members)]
    raise ConfigError(
        f"stats.reference={ref!r} is not an evaluator of this run; known: {', '.join(known)}"
        + (" (or jurors joined by '+')" if members else "")
        + "; or null for the best in the table"
    )


def _models_of(cfg: RunConfig) -> list[str]:
    return models_of(cfg, evaluator_class(cfg))


# --------------------------------------------------------------------------- agreement

# agreement_tables, combine_orders and format_table live in mapo.metrics.tables (shared with
# `mapo agreement`, `mapo report` and `mapo reparse`); they are imported above and re-exported.


# --------------------------------------------------------------------------- the command


class Evaluate(RunCommand):
    """``mapo evaluate`` on the run skeleton (:mod:`mapo.runs.runner`): one unit per (item, order)."""

    name = "evaluate"
    stores = ("judgements",)
    retried = ("judgements",)  # a failed unit is not done: a rerun judges it again (build's rule, the store's)
    published = ("agreement.json",)
    reads = frozenset({"roles", "evaluator", "eval_data", "judge", "jury", "cascade", "debate", "reward"})

    def check(self) -> None:
        _check(self.cfg)
        self.items_, self.data_info = load_items(self.cfg.eval_data)  # bad input fails before any model call
        self.judging_s = 0.0

    def setup(self, client: LLMClient) -> None:
        self.ev = _build(self.cfg, client)  # unknown names, prompts, debaters: still before any call or file
        self.orders = _orders(self.cfg, self.ev)
        self.units = [(item, order) for item in self.items_ for order in self.orders]
        self.counts = {"units": len(self.units), "resumed_done": 0}
        self.judge_name, self.judge_setup, self.prompt_sha = _identity(self.cfg, self.ev)
        _check_reference(self.cfg, self.ev)
        _check_conversations(self.cfg, self.ev, int(self.data_info.get("multi_turn", 0)))
        _check_references(self.cfg, self.ev, self.items_)

    def models(self) -> list[str]:
        return _models_of(self.cfg)

    def fingerprint(self) -> dict[str, Any]:
        cfg, ev = self.cfg, self.ev
        keys: dict[str, Any] = {
            "evaluator": cfg.evaluator,
            **{f"roles.{role}": self.models() for role in ev.config_roles[:1]},  # none for one that uses no model
            **model_keys(cfg, self.models()),
            **{f"eval_data.{k}": v for k, v in self.data_info.items() if k not in ("limit", "n_items")},
            "prompt_sha": self.prompt_sha,
            **ev.config_keys(),
        }
        if self.data_info.get("multi_turn"):  # only then: a single-turn run's fingerprint is as before
            keys["prompt_sha.multiturn"] = templates_sha(cfg.judge.prompt_set, MULTITURN_TEMPLATES)
        if cfg.judge.reference == Reference.guided:  # (judge.reference joins through the judge section)
            keys["prompt_sha.reference"] = templates_sha(cfg.judge.prompt_set, REFERENCE_TEMPLATES)
        for section, only in ev.sections:  # the config sections that change its verdicts, as it declares them
            keys.update(section_keys(section, getattr(cfg, section), only=only))
        return keys

    def total(self) -> int:
        return len(self.units)

    def probes(self) -> list[Probe]:
        """The evaluator's requests on the first item (its real question and responses)."""
        item = self.items_[0]
        return self.ev.probes(_unit_question(item, "AB"), item["response_a"], item["response_b"])

    def _done_key(self, item: HumanRow, order: str) -> str:
        return "|".join(
            [item["id"], self.judge_name, self.judge_setup, f"v{self.cfg.judge.version}", self.prompt_sha, order]
        )

    def resume(self) -> None:
        self.store = self.run.stores["judgements"]
        self.counts["resumed_done"] = sum(self._done_key(i, o) in self.store for i, o in self.units)
        self.kept = self._kept_members()

    def _kept_members(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """For each incomplete unit (a jury verdict with failed jurors): its members' last records that have
        a verdict, (item id, order) -> member model -> record; one pass over the file, only when there are any."""
        incomplete = set(self.store.incomplete)
        if not incomplete:
            return {}
        units = {self._done_key(i, o): (i["id"], o) for i, o in self.units}
        wanted = {units[k] for k in incomplete if k in units}
        kept: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for r in latest_records(self.store.path):
            unit = (r.get("item_id"), r.get("order"))
            if r.get("member_of") == self.judge_name and unit in wanted and r.get("label") is not None:
                same = r.get("setup") == _judge_setup(self.cfg) and r.get("version") == self.cfg.judge.version
                if same and r.get("prompt_sha") in self.ev.member_prompt_shas:
                    kept.setdefault(unit, {})[r["judge"]] = r
        return kept

    def items(self) -> Iterator[tuple[HumanRow, str]]:
        return _iter_units(self.items_, self.orders)

    async def work(self, unit: tuple[HumanRow, str]) -> None:
        cfg, ev, progress = self.cfg, self.ev, self.run.progress
        item, order = unit
        key = self._done_key(item, order)
        if key in self.store:
            progress.update(resumed=True)
            return
        before = self.store.failed.get(key)  # an earlier run's failure of this unit, judged again now
        first, second = (
            (item["response_a"], item["response_b"]) if order == "AB" else (item["response_b"], item["response_a"])
        )
        kept = self.kept.get((item["id"], order)) if key in self.store.incomplete else None
        t0 = time.perf_counter()
        try:
            question = _unit_question(item, order)
            if kept is not None:  # an incomplete unit: only its failed members are asked again
                result = await ev.judge_again(question, first, second, kept)
            else:
                result = await ev.judge_pair(question, first, second)
        except Exception as e:
            reason = item_failure(e)
            if reason is None:
                raise
            recs = _failed_records(cfg, ev, item, order, reason)
        else:
            recs = _records(cfg, ev, item, order, result)
        self.judging_s += time.perf_counter() - t0
        if recs[-1]["label"] is None and not recs[-1].get("failure"):
            recs[-1]["failure"] = "no verdict"  # a unit without a verdict is a failure: a rerun does it again
        for rec in recs:  # the evaluator's own record goes last: it marks the unit done
            self.store.append(rec)
        self.run.ended(recs[-1]["failure"] if recs[-1]["label"] is None else None, before)

    def fields(self) -> dict[str, Any]:
        cfg, models, store = self.cfg, self.models(), self.run.stores["judgements"]
        named = {r: getattr(cfg.roles, r) for r in self.ev.config_roles[:1]}  # its first role's models, as configured
        done_now = max(1, len(self.units) - self.counts["resumed_done"])
        return {
            "evaluator": cfg.evaluator,
            "judge": self.judge_name,
            "setup": self.judge_setup,
            "orders": self.orders,
            "roles": {r: v if isinstance(v, str) else list(v) for r, v in named.items()},
            "models": models_manifest(cfg, models),
            "eval_data": self.data_info,
            # true after any number of resumes: from the records, whose last word per unit counts
            "items": {
                "total": len(self.items_),
                **self.counts,
                "failed": sum(self._done_key(i, o) in store.failed for i, o in self.units),
                # a verdict without some of its members (a jury with a failed juror): a rerun asks them again
                "incomplete": sum(self._done_key(i, o) in store.incomplete for i, o in self.units),
                "failures_retried": store.superseded,
            },
            # judge.scoring=expected: answers weighed by logprobs, and those kept as written (why), this run
            "scoring": dict(self.ev.scoring_counts),
            # judging_summed adds every unit's time (they overlap); per_unit is its mean
            "timings_s": {"judging_summed": round(self.judging_s, 2), "per_unit": round(self.judging_s / done_now, 3)},
        }

    def publish(self, manifest: dict[str, Any]) -> None:
        """agreement.json from this run's records, its headline figures in the manifest."""
        cfg, name, orders = self.cfg, self.judge_name, self.orders
        wanted = {self._done_key(i, o) for i, o in self.units}
        ids = {i["id"] for i in self.items_}
        # this run's records: the evaluator's own, plus its members' (jurors, a cascade's cheap judge) for the same items/orders
        records = [
            r
            for r in latest_records(self.run.dir / "judgements.jsonl")  # a retried unit's failure is history
            if r["key"] in wanted
            or (
                r.get("member_of") == name
                and r["item_id"] in ids
                and r["setup"] == _judge_setup(cfg)
                and r["order"] in orders
                and r["prompt_sha"] in self.ev.member_prompt_shas
                and r.get("version") == cfg.judge.version
            )
        ]
        tables = agreement_tables(
            records, order_combine=cfg.judge.order_combine, subsets=bool(self.ev.subset_members), **stats_options(cfg)
        )
        tables = {"eval_data": self.data_info, "evaluator": cfg.evaluator, "orders": orders, **tables}
        atomic_write_json(self.run.dir / "agreement.json", tables)
        main = next((e for e in tables["results"] if e["judge"] == name), None)
        if main is not None:
            manifest["agreement"] = {
                k: main.get(k)
                for k in (
                    "kappa",
                    "kappa_ci",
                    "n",
                    "n_failed",
                    "failure_rate",
                    "accuracy",
                    "accuracy_ci",
                    "vs_reference",
                )
            }
            manifest["agreement"]["uncertainty"] = tables.get("uncertainty")
            if "position_bias" in main:
                manifest["agreement"]["position_bias"] = main["position_bias"]
        log.info(
            "agreement with humans (%s, %d items):\n%s",
            self.data_info["loader"],
            len(self.items_),
            format_table(tables),
        )


async def evaluate(cfg: RunConfig) -> dict[str, Any]:
    """Run the configured evaluator over ``eval_data`` and compute its agreement (module doc)."""
    return await execute(Evaluate(cfg))


def _iter_units(items: list[HumanRow], orders: list[str]) -> Iterator[tuple[HumanRow, str]]:
    """Every (item, order) unit, lazily."""
    for item in items:
        for order in orders:
            yield item, order
