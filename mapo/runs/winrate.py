"""``mapo winrate``: feedback-loop configurations against single-model baselines (paper Table 6).

For every prompt (``prompts.*``), every configuration X in ``configurations`` (a generator
and one or two reviewers running :class:`~mapo.generation.feedback.FeedbackLoop`; no reviewers = a
single generation) gives its **final** response (the last iteration), and every baseline Y in
``roles.baselines`` gives a fresh single generation (the prompt alone, one call; never taken
from a feedback loop). The judge (``roles.judge`` with ``judge.*``: combined scoring out of
10 by default, ``judge.both_orders`` to judge both presentation orders) compares X (shown
as A) with Y (shown as B).

Per (X, Y): ``wins``, ``losses``, ``ties`` and ``failed`` (no verdict: left out of ``n``);
``n = wins + losses + ties``;

* ``win_rate = wins / n`` with ties reported separately as ``tie_rate = ties / n``;
* ``win_rate_ties_half = (wins + ties / 2) / n``: ties counted as half-wins;
* ``lc_win_rate``: the length-controlled win rate (alpaca_eval's regression fitted on these
  judgements, :mod:`mapo.metrics.length_control`; read its assumptions there), with the judge's
  length preference ``length_coef``.

Each rate carries its bootstrap interval over prompts (``win_rate_ci``, ``tie_rate_ci``,
``win_rate_ties_half_ci``), and each configuration's win rate against a baseline is compared,
paired by prompt, with the reference configuration's against the same baseline
(``comparisons``: configuration -> baseline -> difference, its interval and the verdict; the
reference is ``stats.reference`` or the configuration with the highest mean win rate).
``stats.*`` set the resamples, seed, confidence and margin (:mod:`mapo.metrics.uncertainty`).

Identical responses are a tie without a judge call (``identical: true`` in the record).

Files in ``output_dir``: ``generations.jsonl`` (one feedback-loop record per (X, prompt),
every iteration and review kept), ``baselines.jsonl`` (one per (Y, prompt)),
``judgements.jsonl`` (one per (X, Y, prompt): raw texts, attempts, label, outcome),
``winrate.json`` (the data: rows = configurations, columns = baselines), ``winrate.{csv,md,png}`` rendered
from it by :mod:`mapo.report.winrate`, and
``manifest.json``. Rerunning the same command resumes (keyed stores + the response cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mapo.core.config import ConfigError, PromptSourceConfig, RunConfig, WinrateConfiguration, validate
from mapo.core.store import atomic_write_json, iter_records, latest_records
from mapo.core.types import Message
from mapo.data.sources import PromptItem, SourceStats, check_source, iter_prompts, validate_prompts
from mapo.generation.feedback import FEEDBACK_TEMPLATES, FeedbackLoop
from mapo.judging.base import Probe
from mapo.judging.evaluators import evaluator_class, from_config, models_of, selection_keys
from mapo.judging.jury import warn_self_judging
from mapo.llm.client import LLMClient, item_failure
from mapo.metrics.length_control import ASSUMPTIONS as LC_ASSUMPTIONS
from mapo.metrics.length_control import length_controlled_cells
from mapo.metrics.uncertainty import (
    MARGIN,
    Bootstrap,
    stats_options,
    winrate_comparisons,
    winrate_intervals,
)
from mapo.report.winrate import write_files
from mapo.runs.runner import (
    RunCommand,
    execute,
    model_keys,
    models_manifest,
    section_keys,
    templates_sha,
)

__all__ = ["OUTCOMES", "tally", "winrate", "write_tables"]

log = logging.getLogger(__name__)

OUTCOMES = {"model_a": "win", "model_b": "loss", "tie": "tie", None: "failed"}
"""Judge label (A = the configuration, B = the baseline) -> outcome for the configuration."""


# --------------------------------------------------------------------------- checks


def _check(cfg: RunConfig) -> list[WinrateConfiguration]:
    configs = list(cfg.configurations)
    if not configs:
        raise ConfigError(
            "configurations is empty: list the feedback-loop setups to compare "
            "(configurations: [{name, generator, reviewers}], conf/winrate.yaml)"
        )
    if not cfg.roles.baselines:
        raise ConfigError(
            "roles.baselines is empty: name the single-model baselines (e.g. roles.baselines=[gpt-4o,llama31-8b])"
        )
    cfg.check()  # first: a valid evaluator names the roles to validate
    validate(cfg, [*evaluator_class(cfg).config_roles, "baselines"])
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"configurations: name {', '.join(dupes)} is used twice; names label the table rows")
    if cfg.stats.reference is not None and cfg.stats.reference not in names:
        raise ConfigError(
            f"stats.reference={cfg.stats.reference!r} is not a configuration; known: {', '.join(names)} "
            "(or null: the configuration with the highest mean win rate)"
        )
    base_dupes = sorted({b for b in cfg.roles.baselines if list(cfg.roles.baselines).count(b) > 1})
    if base_dupes:
        raise ConfigError(f"roles.baselines lists {', '.join(base_dupes)} twice")
    for i, c in enumerate(configs):
        for key, model in [("generator", c.generator)] + [(f"reviewers[{j}]", r) for j, r in enumerate(c.reviewers)]:
            if model not in cfg.models:
                raise ConfigError(
                    f"configurations[{i}].{key}={model!r} ({c.name}) is not a known model; "
                    f"known: {', '.join(sorted(cfg.models))}"
                )
            m = cfg.models[model]
            if bool(m.base_url) == bool(m.endpoint):
                raise ConfigError(f"models.{model}: set exactly one of base_url and endpoint")
    return configs


# --------------------------------------------------------------------------- tables


def tally(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """configuration -> baseline -> {wins, losses, ties, failed, n, win_rate, tie_rate, win_rate_ties_half}."""
    counts: dict[tuple[str, str], Counter] = {}
    for r in records:
        counts.setdefault((r["configuration"], r["baseline"]), Counter())[r["outcome"]] += 1
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (c, b), k in counts.items():
        n = k["win"] + k["loss"] + k["tie"]
        out.setdefault(c, {})[b] = {
            "wins": k["win"],
            "losses": k["loss"],
            "ties": k["tie"],
            "failed": k["failed"],
            "n": n,
            "win_rate": k["win"] / n if n else None,
            "tie_rate": k["tie"] / n if n else None,
            "win_rate_ties_half": (k["win"] + k["tie"] / 2) / n if n else None,
        }
    return out


def write_tables(
    run_dir: Path,
    records: Sequence[Mapping[str, Any]],
    rows: Sequence[str],
    cols: Sequence[str],
    meta: Mapping[str, Any],
    stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``winrate.json`` of ``records`` (the cells, their intervals, the comparisons), and the files the
    report renders from it (:func:`mapo.report.winrate.write_files`: winrate.{csv,md,png}); ``stats``:
    :func:`stats_options` of the run's config (intervals and comparisons; None = the module defaults of
    :mod:`mapo.metrics.uncertainty`)."""
    opts = dict(stats or {})
    settings = Bootstrap(**{k: opts[k] for k in ("n_resamples", "seed", "confidence") if k in opts})
    cells = tally(records)
    for c, per in winrate_intervals(records, settings=settings).items():
        for b, ci in per.items():
            if c in cells and b in cells[c]:
                cells[c][b].update(ci)
    for c, per in length_controlled_cells(records, settings=settings).items():
        for b, lc in per.items():
            if c in cells and b in cells[c]:
                cells[c][b].update(
                    {k: lc.get(k) for k in ("lc_win_rate", "lc_win_rate_ci", "length_coef", "length_coef_ci")}
                )
                cells[c][b]["lc_n"] = lc["n"]
    comparisons = (
        winrate_comparisons(records, opts.get("reference"), margin=float(opts.get("margin", MARGIN)), settings=settings)
        if len(rows) > 1
        else {}
    )
    out = {
        **meta,
        "rows": list(rows),
        "columns": list(cols),
        "rates": {
            "win_rate": "wins / n",
            "tie_rate": "ties / n",
            "win_rate_ties_half": "(wins + ties/2) / n",
            "n": "wins + losses + ties (judge failures excluded, counted in failed)",
            "lc_win_rate": "length-controlled win rate (mapo.metrics.length_control): " + LC_ASSUMPTIONS,
            "length_coef": "the judge's length preference phi in that fit (0 = none, > 0 = prefers longer)",
        },
        "table": {c: {b: cells.get(c, {}).get(b) for b in cols} for c in rows},
        "comparisons": comparisons,
        "uncertainty": {
            **settings.to_dict(),
            "method": f"{settings.method} bootstrap over prompts",
            "margin": float(opts.get("margin", MARGIN)),
            "reference": next(
                (c for c, per in comparisons.items() for x in per.values() if x.get("verdict") == "reference"), None
            ),
        },
    }
    atomic_write_json(run_dir / "winrate.json", out)
    write_files(run_dir, out)  # winrate.{csv,md,png}: rendered from the data by the report
    return out


# --------------------------------------------------------------------------- the command


def _single_record(key: str, name: str, model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "key": key,
        "configuration": name,
        "generator": model,
        "reviewers": [],
        "iterations": [{"index": 0, "response": text, "finish_reason": finish_reason, "reviews": [], "score": None}],
        "final": text,
    }


class Winrate(RunCommand):
    """``mapo winrate`` on the run skeleton (:mod:`mapo.runs.runner`): one item per prompt."""

    name = "winrate"
    stores = ("generations", "baselines", "judgements")
    retried = ("judgements",)  # a failed comparison is not done: a rerun judges it again (build's rule, the store's)
    published = ("winrate.csv", "winrate.md", "winrate.json", "winrate.png")
    stages = ("generation", "judge")
    reads = frozenset(
        {"roles", "judge", "reward", "feedback", "prompts", "configurations", "evaluator", "jury", "debate", "cascade"}
    )

    def check(self) -> None:
        cfg = self.cfg
        self.configs = _check(cfg)
        self.baselines = list(cfg.roles.baselines)
        if cfg.prompts.source != "hf":
            self.n_prompts: int | None = validate_prompts(cfg.prompts)  # bad input fails before any model call
            if self.n_prompts == 0 and cfg.prompts.shard_count == 1:
                raise ConfigError(
                    f"prompts: no usable prompts in {cfg.prompts.path or cfg.prompts.source} "
                    f"(prompts.limit={cfg.prompts.limit})"
                )
            if cfg.judge.reference == "guided":
                raise ConfigError(
                    "judge.reference=guided: mapo winrate judges without a reference answer; leave it none"
                )
            multi = next((p for p in iter_prompts(cfg.prompts) if p.multi_turn), None)
            if multi is not None:
                _refuse_multi_turn(multi)
        else:
            check_source(cfg.prompts)  # a dataset that cannot be found or reached: before any model call or file
            self.n_prompts = cfg.prompts.limit
        self.keys: set[str] = set()
        self.counts = {"identical": 0, "generation_failed": 0}
        self.stage_s = {"feedback": 0.0, "baselines": 0.0, "judging": 0.0}
        self.source_stats = SourceStats()

    def setup(self, client: LLMClient) -> None:
        cfg = self.cfg
        self.client = client
        self.judge = from_config(cfg, client)  # evaluator (default: roles.judge's judge; a reward model if it is one)
        self.sha = self.judge.prompt_sha
        self.setup_name = self.judge.pair_setup  # it judges each pair in every order it judges itself
        warn_self_judging(self.judge.models, [c.generator for c in self.configs] + self.baselines, "roles.judge")
        self.loops = {
            c.name: FeedbackLoop(client, c.generator, c.reviewers, cfg.feedback) if c.reviewers else None
            for c in self.configs
        }

    def models(self) -> list[str]:
        return [
            *models_of(self.cfg, evaluator_class(self.cfg)),
            *self.baselines,
            *(m for c in self.configs for m in (c.generator, *c.reviewers)),
        ]

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg
        chosen, sections = selection_keys(cfg)  # none for the default evaluator (the judge of roles.judge)
        return {
            "roles.judge": cfg.roles.judge,
            "roles.baselines": self.baselines,
            **{f"configurations.{c.name}.generator": c.generator for c in self.configs},
            **{f"configurations.{c.name}.reviewers": list(c.reviewers) for c in self.configs},
            **model_keys(cfg, self.models()),
            **section_keys("judge", cfg.judge),
            **section_keys("feedback", cfg.feedback),
            **section_keys("prompts", cfg.prompts, only=PromptSourceConfig.ITEM_KEYS),
            "prompt_sha.judge": self.sha,
            **self.judge.config_keys(),
            "prompt_sha.feedback": templates_sha(cfg.feedback.prompt_set, FEEDBACK_TEMPLATES),
            **chosen,
            **{k: v for name, only in sections for k, v in section_keys(name, getattr(cfg, name), only=only).items()},
        }

    def total(self) -> int | None:
        return self.n_prompts

    def probes(self) -> list[Probe]:
        """Each configuration's generator (and feedback loop), each baseline, and the judge on the
        first prompt (shown a configuration's final response and a baseline's, each at most its
        model's max_tokens)."""
        first = next(iter(iter_prompts(self.cfg.prompts, SourceStats())), None)
        if first is None:
            return []
        question: list[Message] = [{"role": "user", "content": first.prompt}]
        out: list[Probe] = []
        for c in self.configs:
            loop = self.loops[c.name]
            out += loop.probes(first.prompt) if loop is not None else [Probe("generator", c.generator, question)]
        out += [Probe("baseline", b, question) for b in self.baselines]

        def longest(models: Sequence[str]) -> tuple[str, int]:
            most = max(models, key=self.client.max_tokens)
            return f"a response of {most} (<= {self.client.max_tokens(most)} max_tokens)", self.client.max_tokens(most)

        produced = [longest([c.generator for c in self.configs]), longest(self.baselines)] if self.baselines else []
        return out + self.judge.probes(first.prompt, "", "", produced)

    def resume(self) -> None:
        stores = self.run.stores
        self.gens, self.bases, self.judgements = stores["generations"], stores["baselines"], stores["judgements"]
        self.finals: dict[str, str] = {r["key"]: r["final"] for r in self.gens}
        self.base_texts: dict[str, str] = {r["key"]: r["response"] for r in self.bases}

    def items(self) -> Iterator[PromptItem]:
        return iter_prompts(self.cfg.prompts, self.source_stats)

    def _jkey(self, c: str, b: str, pid: str) -> str:
        return "|".join([c, b, pid, self.setup_name, f"v{self.cfg.judge.version}", self.sha])

    async def _config_final(self, c: WinrateConfiguration, item: PromptItem) -> str:
        if item.multi_turn:  # a streamed source: found only now
            _refuse_multi_turn(item)
        key = f"{c.name}|{item.id}"
        if key in self.finals:
            return self.finals[key]
        t0 = time.perf_counter()
        loop = self.loops[c.name]
        if loop is None:
            comp = await self.client.chat(c.generator, [{"role": "user", "content": item.prompt}], role="generator")
            rec = _single_record(key, c.name, c.generator, comp.text, comp.finish_reason)
        else:
            result = await loop.run(item.prompt)
            rec = {"key": key, "configuration": c.name, **result.to_record(), "final": result.iterations[-1].response}
        self.stage_s["feedback"] += time.perf_counter() - t0
        rec["prompt_id"], rec["prompt"] = item.id, item.prompt
        self.gens.append(rec)
        self.finals[key] = rec["final"]
        return str(rec["final"])

    async def _baseline(self, b: str, item: PromptItem) -> str:
        key = f"{b}|{item.id}"
        if key in self.base_texts:
            return self.base_texts[key]
        t0 = time.perf_counter()
        comp = await self.client.chat(b, [{"role": "user", "content": item.prompt}], role="baseline")
        self.stage_s["baselines"] += time.perf_counter() - t0
        self.bases.append(
            {
                "key": key,
                "baseline": b,
                "prompt_id": item.id,
                "prompt": item.prompt,
                "response": comp.text,
                "finish_reason": comp.finish_reason,
            }
        )
        self.base_texts[key] = comp.text
        return comp.text

    async def _compare(
        self, c: WinrateConfiguration, b: str, item: PromptItem, x: str, y: str
    ) -> tuple[str | None, str | None]:
        """Judge X against Y (resumed when done): (its failure, None = a verdict; the failure an
        earlier run recorded for it, when it is judged again)."""
        cfg = self.cfg
        key = self._jkey(c.name, b, item.id)
        self.keys.add(key)
        if key in self.judgements:
            return None, None
        before = self.judgements.failed.get(key)
        rec: dict[str, Any] = {
            "key": key,
            "kind": "winrate",
            "prompt_id": item.id,
            "configuration": c.name,
            "baseline": b,
            "judge": self.judge.name,
            "setup": self.setup_name,
            "strategy": self.judge.strategy,
            "scale": self.judge.scale,
            "version": cfg.judge.version,
            "prompt_sha": self.sha,
            "both_orders": cfg.judge.both_orders,
            "order_combine": cfg.judge.order_combine,
            "identical": x == y,
            # characters of the configuration's and the baseline's response: the length-controlled win rate
            "length_a": len(x),
            "length_b": len(y),
        }
        if x == y:
            self.counts["identical"] += 1
            rec.update(label="tie", score_a=None, score_b=None, failure=None, raw=[], detail={"attempts": []})
        else:
            t0 = time.perf_counter()
            try:
                j = await self.judge.judge_pair(item.prompt, x, y)
            except Exception as e:
                reason = item_failure(e)
                if reason is None:
                    raise
                rec.update(label=None, score_a=None, score_b=None, failure=reason, raw=[], detail={"attempts": []})
            else:
                rec.update(
                    label=j.label if j.ok else None,
                    score_a=j.score_a,
                    score_b=j.score_b,
                    failure=j.failure,
                    raw=j.raw,
                    detail=j.detail("AB"),
                    prompt_tokens=j.prompt_tokens,
                    completion_tokens=j.completion_tokens,
                )
            self.stage_s["judging"] += time.perf_counter() - t0
        if rec["label"] is None and not rec.get("failure"):
            rec["failure"] = "no verdict"  # a comparison without a verdict is a failure: a rerun does it again
        rec["outcome"] = OUTCOMES[rec["label"]]
        self.judgements.append(rec)
        return (rec["failure"] if rec["label"] is None else None), before

    async def work(self, item: PromptItem) -> None:
        configs, baselines = self.configs, self.baselines
        try:
            texts = await asyncio.gather(
                *(self._config_final(c, item) for c in configs), *(self._baseline(b, item) for b in baselines)
            )
            xs, ys = texts[: len(configs)], texts[len(configs) :]
            self.run.progress.stage("generation")
        except Exception as e:
            reason = item_failure(e)
            if reason is None:
                raise
            log.warning("prompt %s: generation failed (%s); it is left out of every win rate", item.id, reason)
            self.counts["generation_failed"] += 1
            self.run.ended(f"generation failed: {reason}")
            return
        judged = await asyncio.gather(
            *(
                self._compare(c, b, item, x, y)
                for c, x in zip(configs, xs, strict=True)
                for b, y in zip(baselines, ys, strict=True)
            )
        )
        self.run.progress.stage("judge")
        failed = [(failure, before) for failure, before in judged if failure is not None]
        # the prompt fails with its first failed comparison's reason; it failed as recorded when each did
        self.run.ended(
            failed[0][0] if failed else None, failed[0][0] if failed and all(f == b for f, b in failed) else None
        )

    def fields(self) -> dict[str, Any]:
        cfg, stats, judgements = self.cfg, self.source_stats, self.run.stores["judgements"]
        return {
            "judge": self.judge.name,
            "setup": self.setup_name,
            "configurations": [
                {"name": c.name, "generator": c.generator, "reviewers": list(c.reviewers)} for c in self.configs
            ],
            "baselines": self.baselines,
            "models": models_manifest(cfg, self.models()),
            "prompts": {"source": cfg.prompts.source, "read": stats.read, "skipped": stats.skipped},
            # true after any number of resumes: from the records, whose last word per comparison counts
            # (not "comparisons": a complete run's manifest holds the paired comparisons there)
            "judgements": {
                "done": len(self.keys),
                "failed": sum(k in judgements.failed for k in self.keys),
                "failures_retried": judgements.superseded,
                **self.counts,
            },
            "truncated_responses": _truncated(self.run.dir),
            # stage times add up every prompt's time in that stage (prompts overlap)
            "timings_s": {f"{k}_summed": round(v, 2) for k, v in self.stage_s.items()},
        }

    def publish(self, manifest: dict[str, Any]) -> None:
        """winrate.{csv,md,json,png} from this run's judgements; the table in the manifest."""
        cfg, run_dir = self.cfg, self.run.dir
        # the last record of each comparison: a retried failure is history
        records = [r for r in latest_records(run_dir / "judgements.jsonl") if r["key"] in self.keys]
        meta = {
            "judge": self.judge.name,
            "setup": self.setup_name,
            "n_prompts": self.source_stats.read,
            "feedback_iterations": cfg.feedback.iterations,
        }
        table = write_tables(
            run_dir, records, [c.name for c in self.configs], self.baselines, meta, stats=stats_options(cfg)
        )
        manifest["table"] = table["table"]
        manifest["comparisons"] = table["comparisons"]
        log.info("win rates (%s):\n%s", self.setup_name, (run_dir / "winrate.md").read_text())


def _truncated(run_dir: Path) -> dict[str, int]:
    """Responses cut by max_tokens (``finish_reason: length``), per record file."""
    gens = run_dir / "generations.jsonl"
    bases = run_dir / "baselines.jsonl"
    return {
        "generations": sum(
            it.get("finish_reason") == "length"
            for r in (iter_records(gens) if gens.exists() else [])
            for it in r.get("iterations", [])
        ),
        "baselines": sum(r.get("finish_reason") == "length" for r in (iter_records(bases) if bases.exists() else [])),
    }


async def winrate(cfg: RunConfig) -> dict[str, Any]:
    """Compare every configuration with every baseline over the prompts (module doc)."""
    return await execute(Winrate(cfg))


def _refuse_multi_turn(item: PromptItem) -> None:
    """``mapo winrate`` answers single-turn prompts only (its baselines get the prompt alone)."""
    raise ConfigError(
        f"prompts: item {item.id!r} is a multi-turn prompt ({len(item.history) or len(item.unanswered)} earlier turns); mapo winrate takes "
        "single-turn prompts only (mapo build and mapo evaluate take conversations)"
    )
