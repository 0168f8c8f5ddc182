"""The main job: prompts -> feedback loop (N responses) -> best of N by the judge -> DPO/KTO.

Items stream through a bounded pool of workers (``max_items_in_flight``): while one prompt
is being judged others are being generated, so the servers stay busy. Every record is
appended to JSONL as it finishes; a rerun into the same folder resumes, re-sending nothing
already answered (the response cache) and writing nothing twice (keyed stores). The run
skeleton (folder, config check, client, stores, endpoint check, manifest, how the run ends)
is :mod:`mapo.runs.runner`'s; this module supplies the per-prompt work, the resume and the
publishing of the datasets. Each generated response keeps its ``finish_reason``; the manifest
counts those cut by max_tokens (``truncated_responses``). Each feedback iteration is saved as it
finishes (``iterations.jsonl``, key ``<item>#<index>``): an item that fails at iteration 3 keeps
iterations 1-2 there, and when the item is done again its loop goes on from the last saved one.
A selection made while a member of the evaluator failed (a jury with a failed juror) is recorded ``incomplete``
(``items.incomplete``): its rows are written, and a rerun drops them and selects the item again from its stored
generation (the answered calls come back from the response cache), so the rows are always its last verdict's.

A multi-turn prompt (a chat list in the prompt column, :mod:`mapo.data.sources`) is a
:class:`~mapo.core.types.Conversation`: the loop answers its last user turn with the earlier turns in
context, reviewers and the judge read the whole conversation, the generation record keeps the turns
(``history``) and the DPO/KTO rows carry them in TRL's conversational ``prompt`` (every turn up to the
question). Its templates join the fingerprint (``prompt_sha.multiturn``) only when the source has such
prompts; a single-turn source's records and fingerprint are as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mapo.core.config import ConfigError, PromptSourceConfig, Reference, RunConfig, validate
from mapo.core.prompts import prompts_root
from mapo.core.store import RecordStore, iter_records
from mapo.core.types import Conversation, Message, Question
from mapo.data.sources import PromptItem, SourceStats, check_source, iter_prompts, validate_prompts
from mapo.generation.dataset import RowCounts, RowError, item_rows, length_summary, save_datasets
from mapo.generation.feedback import FEEDBACK_TEMPLATES, FeedbackLoop, Iteration
from mapo.generation.selection import SELECTORS, excluded, losses
from mapo.judging.base import Probe
from mapo.judging.evaluators import evaluator_class, from_config, models_of, selection_keys
from mapo.llm.client import LLMClient, item_failure
from mapo.metrics.dataset_quality import dataset_quality_of_run, quality_markdown
from mapo.runs.runner import (
    RunCommand,
    execute,
    model_keys,
    models_manifest,
    section_keys,
    templates_sha,
)

log = logging.getLogger(__name__)


class Build(RunCommand):
    """``mapo build`` on the run skeleton (:mod:`mapo.runs.runner`): one item per prompt."""

    name = "build"
    stores = ("generations", "selections", "dpo", "kto", "iterations")
    retried = ("selections",)  # a failed item is not done: a rerun does it again
    unstamped = ("dpo", "kto")  # rebuilt from generations + selections; their schema is the dataset's
    published = ("dataset",)
    stages = ("feedback", "judge")
    reads = frozenset(
        {
            "roles",
            "judge",
            "reward",
            "feedback",
            "selection",
            "prompts",
            "push_to_hub",
            "evaluator",
            "jury",
            "debate",
            "cascade",
        }
    )

    def check(self) -> None:
        cfg = self.cfg
        cfg.check()  # first: a valid evaluator names the roles to validate
        validate(cfg, ["generator", "reviewers", *evaluator_class(cfg).config_roles])
        if cfg.prompts.source != "hf":
            self.n_prompts: int | None = validate_prompts(cfg.prompts)  # bad input fails here, before any model call
            self.n_multi = sum(p.multi_turn for p in iter_prompts(cfg.prompts))
            if self.n_prompts == 0 and cfg.prompts.shard_count == 1:
                raise ConfigError(
                    f"prompts: no usable prompts in {cfg.prompts.path or cfg.prompts.source} "
                    f"(empty, all invalid and skipped, or prompts.limit={cfg.prompts.limit})"
                )
        else:
            check_source(cfg.prompts)  # a dataset that cannot be found or reached: before any model call or file
            self.n_prompts = cfg.prompts.limit
            self.n_multi = 0  # a streamed source is not read ahead: its multi-turn prompts are checked as they come
        if cfg.judge.reference == Reference.guided and not cfg.prompts.reference_column:
            raise ConfigError(
                "judge.reference=guided needs prompts.reference_column (the column holding each prompt's reference answer)"
            )
        for key, prompt_set in (
            ("judge.prompt_set", cfg.judge.prompt_set),
            ("feedback.prompt_set", cfg.feedback.prompt_set),
        ):
            if not (prompts_root() / prompt_set).is_dir():
                raise ConfigError(
                    f"{key}={prompt_set!r}: no folder prompts/{prompt_set}; "
                    f"known: {', '.join(sorted(p.name for p in prompts_root().iterdir() if p.is_dir()))}"
                )
        self.counts = {"resumed_done": 0, "failed": 0, "identical_pairs_skipped": 0, "iterations_resumed": 0}
        self.stage_s = {"feedback": 0.0, "selection": 0.0}
        self.source_stats = SourceStats()
        self.pairs = RowCounts()  # over the whole dataset: resume() adds the items finished before
        self.resumable: dict[str, dict] = {}
        self.redo: set[str] = set()
        self.restored = 0

    def setup(self, client: LLMClient) -> None:
        cfg, roles = self.cfg, self.cfg.roles
        _warn_family_judging(cfg)
        self.loop = FeedbackLoop(client, roles.generator, roles.reviewers, cfg.feedback)
        self.judge = from_config(cfg, client)  # evaluator (default: roles.judge's judge; a reward model if it is one)
        self.select = SELECTORS.get(cfg.selection.method)
        if self.n_multi:
            self._check_conversations(self.n_multi)
        if cfg.judge.reference == Reference.guided and not self.judge.references:
            raise ConfigError(
                f"judge.reference=guided: roles.judge judges with {cfg.judge.strategy}, which has no reference-guided "
                "prompt; use judge.strategy=direct|combined|independent"
            )

    def models(self) -> list[str]:
        roles = self.cfg.roles
        return [roles.generator, *roles.reviewers, *models_of(self.cfg, evaluator_class(self.cfg))]

    def fingerprint(self) -> dict[str, Any]:
        cfg, roles = self.cfg, self.cfg.roles
        chosen, sections = selection_keys(cfg)  # none for the default evaluator (the judge of roles.judge)
        return {
            "roles.generator": roles.generator,
            "roles.reviewers": list(roles.reviewers),
            "roles.judge": roles.judge,
            **model_keys(cfg, self.models()),
            **section_keys("feedback", cfg.feedback),
            **section_keys("judge", cfg.judge),
            **section_keys("selection", cfg.selection),
            **section_keys("prompts", cfg.prompts, only=PromptSourceConfig.ITEM_KEYS),
            "prompt_sha.judge": self.judge.prompt_sha,
            **self.judge.config_keys(),
            "prompt_sha.feedback": templates_sha(cfg.feedback.prompt_set, FEEDBACK_TEMPLATES),
            **self._multiturn_keys(),
            **self._reference_keys(),
            **chosen,
            **{k: v for name, only in sections for k, v in section_keys(name, getattr(cfg, name), only=only).items()},
        }

    def _multiturn_keys(self) -> dict[str, Any]:
        """The multi-turn templates' hashes, for a source with multi-turn prompts only (a single-turn run's
        fingerprint is as before)."""
        if not self.n_multi:
            return {}
        sets = dict.fromkeys((self.cfg.judge.prompt_set, self.cfg.feedback.prompt_set))
        return {"prompt_sha.multiturn": "/".join(templates_sha(s, MULTITURN_TEMPLATES) for s in sets)}

    def _reference_keys(self) -> dict[str, Any]:
        """The reference-guided template's hash, under judge.reference=guided only."""
        if self.cfg.judge.reference != Reference.guided:
            return {}
        return {"prompt_sha.reference": templates_sha(self.cfg.judge.prompt_set, ("reference_",))}

    def _check_conversations(self, n: int) -> None:
        if not self.judge.conversations:
            raise ConfigError(
                f"prompts: {n} multi-turn prompt(s) but roles.judge judges with {self.cfg.judge.strategy}, which has no "
                "multi-turn prompt (the earlier turns would be lost); use judge.strategy=direct|combined|independent"
            )

    def total(self) -> int | None:
        return self.n_prompts

    def stale_items(self, run_dir: Path) -> list[str]:
        """Prompts edited under an id the folder already holds (a stale generation would be kept).
        A streamed source (``hf``) is checked item by item in :meth:`work` instead."""
        stored = _stored_prompts(run_dir / "generations.jsonl")
        if not stored or self.cfg.prompts.source == "hf":
            return []
        return [p.id for p in iter_prompts(self.cfg.prompts) if stored.get(p.id, _item_sha(p)) != _item_sha(p)]

    def probes(self) -> list[Probe]:
        """The feedback loop's roles and the judge on the first prompt (the judge is shown two
        generated responses, each at most the generator's max_tokens)."""
        first = next(iter(iter_prompts(self.cfg.prompts, SourceStats())), None)
        if first is None:
            return []
        gen = self.cfg.roles.generator
        response = (
            f"a response of {gen} (<= {self.loop.client.max_tokens(gen)} max_tokens)",
            self.loop.client.max_tokens(gen),
        )
        if first.unanswered:  # answers still to be written: empty ones stand in
            first = first.answered(tuple(m for u in first.unanswered for m in _turn_pair(u)))
        return [*self.loop.probes(first.question), *self.judge.probes(first.question, "", "", [response, response])]

    def resume(self) -> None:
        cfg, roles, stores = self.cfg, self.cfg.roles, self.run.stores
        self.gens, self.sels, self.dpo, self.kto, self.its = (stores[n] for n in self.stores)
        pairs = self.pairs
        gens, sels, dpo, kto = self.gens, self.sels, self.dpo, self.kto
        rejudged = self._rejudged()
        if rejudged:  # their redo writes the rows of its own verdict: the earlier verdict's must not stay beside them
            dropped = sum(s.discard(lambda row: row.get("prompt_id") in rejudged) for s in (dpo, kto))
            log.info(
                "selecting again %d items whose jury lacked a juror's verdict (%d rows dropped)", len(rejudged), dropped
            )
        resumable, redo, restored = _resume(
            gens,
            sels,
            dpo,
            kto,
            generator=roles.generator,
            judge=self.judge.name,
            selection=cfg.selection,
            pairs=pairs,
            rejudged=rejudged,
        )
        self.resumable, self.redo, self.restored = resumable, redo, restored
        self.stored_prompts = _stored_prompts(self.run.dir / "generations.jsonl")
        self.saved_iterations = _saved_iterations(self.its, self.gens)
        self.counts["resumed_done"] = len(sels) - len(sels.failed) - len(redo | rejudged)

    def _rejudged(self) -> set[str]:
        """The items whose last selection is incomplete (a judgement lacked a member's verdict: a jury with a
        failed juror) that this run selects again, from their stored generations: those among its prompts (a
        smaller prompts.limit leaves the others, and their rows, as they are)."""
        incomplete = self.sels.incomplete
        if not incomplete:
            return set()
        return {p.id for p in iter_prompts(self.cfg.prompts) if p.id in incomplete}

    def items(self) -> Iterator[PromptItem]:
        return iter_prompts(self.cfg.prompts, self.source_stats)

    async def work(self, item: PromptItem) -> None:
        cfg, roles, progress, counts = self.cfg, self.cfg.roles, self.run.progress, self.counts
        gens, sels, dpo, kto, pairs = self.gens, self.sels, self.dpo, self.kto, self.pairs
        stored = self.stored_prompts.get(item.id)
        if item.multi_turn and not self.n_multi:  # a streamed source: its first multi-turn prompt, found only now
            self._check_conversations(1)
        if stored is not None and stored != _item_sha(item):  # a streamed source: found only now
            raise ConfigError(
                f"{self.run.dir} holds records made from other input: item text changed under the same id: "
                f"{item.id}. Restore the old text, give edited items new ids, choose another run_name, "
                "or set on_config_change=new_run to start a fresh folder"
            )
        if item.id in sels and item.id not in self.redo:
            progress.update(resumed=True)
            return
        before = sels.failed.get(item.id)  # an earlier run's failure of this item, done again now
        try:
            rec = self.resumable.pop(item.id, None)
            if rec is None:
                t0 = time.perf_counter()
                done = self.saved_iterations.pop(item.id, [])
                counts["iterations_resumed"] += len(done)

                def save(it: Iteration, item_id: str = item.id) -> None:  # as it arrives: a later failure keeps it
                    self.its.append({"key": f"{item_id}#{it.index}", "item": item_id, "iteration": it.to_record()})

                if item.unanswered:  # user turns given without answers: the generator answers them first
                    item = item.answered(await self.loop.answer_turns(item.unanswered))
                result = await self.loop.run(item.question, done=done, on_iteration=save)
                self.stage_s["feedback"] += time.perf_counter() - t0
                turns: dict[str, Any] = {"history": list(item.history)} if item.history else {}  # single: as before
                if item.unanswered:
                    turns["unanswered"] = list(item.unanswered)
                if item.reference is not None:
                    turns["reference"] = item.reference
                rec = {"key": item.id, "prompt": item.prompt, **turns, **result.to_record()}
                gens.append(rec)
            progress.stage("feedback")
            question = _rec_question(rec)  # the turns as answered (a resumed item: as its record holds them)
            responses = [it["response"] for it in rec["iterations"]]
            t0 = time.perf_counter()
            skip = excluded(rec["iterations"], cfg.selection.allow_truncated)  # cut by max_tokens
            sel = await self.select(self.judge, question, responses, skip=skip)
            self.stage_s["selection"] += time.perf_counter() - t0
            progress.stage("judge")
        except Exception as e:
            reason = item_failure(e)
            if reason is None:
                raise
            sels.append({"key": item.id, "best": None, "failure": reason})
            self.run.ended(reason, before)
            return
        if sel.best is not None:
            try:
                d, k, rc = item_rows(
                    item.id,
                    question,
                    rec["iterations"],
                    sel.best,
                    sel.losses(),
                    cfg.selection,
                    generator=roles.generator,
                    judge=self.judge.name,
                )
            except RowError as e:  # e.g. an empty response: this item fails, the run goes on
                d, k, rc = [], [], RowCounts()
                sel.best, sel.failure = None, f"row rejected: {e}"
            counts["identical_pairs_skipped"] += rc.identical_pairs_skipped
            pairs.add(rc)
            for row in d:
                dpo.append(row)
            for row in k:
                kto.append(row)
        # a pick made while a member of the evaluator failed: its rows stand, and a rerun selects it again
        incomplete = {"incomplete": sel.incomplete} if sel.failure is None and sel.incomplete else {}
        # the selection record goes last: it marks the item done for a resume
        sels.append(
            {
                "key": item.id,
                "best": sel.best,
                "method": sel.method,
                "scores": sel.scores,
                "judgements": sel.judgements,
                "failure": sel.failure,
                **incomplete,
            }
        )
        self.run.ended(sel.failure, before)

    def fields(self) -> dict[str, Any]:
        cfg, roles, stats = self.cfg, self.cfg.roles, self.source_stats
        stores = list(self.run.stores.values())
        sels = self.run.stores["selections"]
        return {
            "roles": {"generator": roles.generator, "reviewers": list(roles.reviewers), "judge": roles.judge},
            "models": models_manifest(cfg, self.models()),
            "prompts": {
                "source": cfg.prompts.source,
                "read": stats.read,
                "skipped": stats.skipped,
                "skip_reasons": stats.reasons or {},
            },
            # true after any number of resumes: from the records, whose last word per item counts
            "items": {
                "done": len(sels),
                **self.counts,
                "failed": len(sels.failed),
                # picked while a juror failed (their rows are written): a rerun selects them again
                "incomplete": len(sels.incomplete),
                "failures_retried": sels.superseded,
            },
            # what the dataset holds and left out (ties, truncation, length), and the length ratio before/after
            "pairs": {
                **self.pairs.to_dict(),
                "length": length_summary(self.pairs.length, self.cfg.selection.max_length_ratio),
            },
            "truncated_responses": _truncated(self.run.dir / "generations.jsonl"),
            "repairs": {
                "bytes_cut": {s.path.name: s.repaired_bytes for s in stores if s.repaired_bytes},
                "rows_restored": self.restored,
                "items_redone": len(self.redo),
            },
            # stage figures sum per-item time over concurrent items: busy time, not wall time
            "timings_s": {f"{k}_busy": round(v, 2) for k, v in self.stage_s.items()},
        }

    def publish(self, manifest: dict[str, Any]) -> None:
        """The DPO/KTO datasets (dataset/, parquet, the Hub), only after a complete run."""
        cfg, run_dir = self.cfg, self.run.dir
        manifest["quality"] = dataset_quality_of_run(run_dir)  # the DPO pitfalls, before anyone trains on it
        card = _dataset_card(cfg, manifest)
        manifest["rows"] = save_datasets(run_dir, push_to_hub=cfg.push_to_hub, card=card)


def _model_family(cfg: RunConfig, name: str) -> str:
    """``models.<name>.family``, or the model's name when it has none (a family of one)."""
    model = cfg.models.get(name)
    return (model.family if model is not None else None) or name


def _warn_family_judging(cfg: RunConfig) -> list[str]:
    """Warn when the judge shares a model family with a model that shaped the responses it judges
    (the generator, or a reviewer whose feedback revised them): a judge tends to prefer its own
    family's answers (self- and family-preference bias). Returns the models named."""
    roles = cfg.roles
    family = _model_family(
        cfg, roles.judge
    )  # the default evaluator's judge (another evaluator: its models are not checked)
    shaped = [("generator", roles.generator), *(("reviewer", r) for r in roles.reviewers)]
    same = [(role, m) for role, m in shaped if _model_family(cfg, m) == family]
    if same:
        who = ", ".join(f"{role} {m}" + (" (the judge itself)" if m == roles.judge else "") for role, m in same)
        log.warning(
            "roles.judge %s is of the %s family, as the %s that shaped the responses it judges "
            "(self- and family-preference bias): prefer a judge of another family",
            roles.judge,
            family,
            who,
        )
    return [m for _, m in same]


async def build(cfg: RunConfig) -> dict[str, Any]:
    """Build the DPO/KTO datasets of ``cfg`` (module doc); returns the manifest."""
    return await execute(Build(cfg))


def _saved_iterations(its: RecordStore, gens: RecordStore) -> dict[str, list[Iteration]]:
    """The iterations saved for items whose loop never finished (no generation record): each
    item's from index 0 on, without a gap (what a resumed loop can go on from)."""
    by_item: dict[str, dict[int, Iteration]] = {}
    for rec in its:
        item = rec["item"]
        if item not in gens:
            it = Iteration.from_record(rec["iteration"])
            by_item.setdefault(item, {})[it.index] = it
    out: dict[str, list[Iteration]] = {}
    for item, saved in by_item.items():
        run: list[Iteration] = []
        while len(run) in saved:
            run.append(saved[len(run)])
        out[item] = run
    return out


MULTITURN_TEMPLATES = ("multiturn_",)
"""Name prefix of the multi-turn templates (judge and reviewer) in a prompt set."""


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _prompt_sha(
    prompt: str,
    history: list[Message] | tuple[Message, ...] | None,
    reference: str | None = None,
    unanswered: list[str] | tuple[str, ...] | None = None,
) -> str:
    """A prompt's text hash (a stale-item check); a multi-turn prompt's covers its earlier turns too (the user
    turns alone where the generator answered them), and a prompt with a reference answer its reference."""
    if unanswered:
        history = None  # its answers are the generator's, not input
    if not history and reference is None and not unanswered:
        return _text_sha(prompt)
    extra: dict[str, Any] = {"history": list(history or ()), "reference": reference}
    if unanswered:
        extra["unanswered"] = list(unanswered)
    return _text_sha(prompt + "\0" + json.dumps(extra, ensure_ascii=False, sort_keys=True))


def _turn_pair(user: str) -> tuple[Message, Message]:
    return {"role": "user", "content": user}, {"role": "assistant", "content": ""}


def _item_sha(item: PromptItem) -> str:
    return _prompt_sha(item.prompt, item.history, item.reference, item.unanswered)


def _rec_question(rec: Mapping[str, Any]) -> Question:
    """A generation record's question: its prompt, with its earlier turns when it kept them."""
    history, reference = rec.get("history"), rec.get("reference")
    if history or reference is not None:
        return Conversation(rec["prompt"], tuple(history or ()), reference=reference)
    return rec["prompt"]


def _stored_prompts(path: Path) -> dict[str, str]:
    """``{item id: sha of its prompt text}`` of a generations file (empty when there is none; a
    damaged file is left to the record store, which names the line)."""
    if not path.is_file():
        return {}
    try:
        return {
            r["key"]: _prompt_sha(r["prompt"], r.get("history"), r.get("reference"), r.get("unanswered"))
            for r in iter_records(path)
            if isinstance(r.get("prompt"), str)
        }
    except (ValueError, KeyError, TypeError):
        return {}


def _truncated(path: Path) -> int:
    """Generated responses cut by max_tokens (``finish_reason: length``) in a generations file."""
    if not path.exists():
        return 0
    return sum(it.get("finish_reason") == "length" for r in iter_records(path) for it in r.get("iterations", []))


def _resume(
    gens: RecordStore,
    sels: RecordStore,
    dpo: RecordStore,
    kto: RecordStore,
    *,
    generator: str,
    judge: str,
    selection: Any,
    pairs: RowCounts,
    rejudged: Collection[str] = (),
) -> tuple[dict[str, dict], set[str], int]:
    """What a rerun picks up: generations whose selection had not finished (``resumable``; ``rejudged``,
    items whose selection was incomplete, too: selected again, their rows dropped before), and
    repairs after a crash mid-write. A torn last line is cut when a store opens; if it held a
    DPO/KTO row of a finished item, the row is rebuilt from the stored generation and pick
    (``restored``); if it held the generation record, the item is redone from the cache (``redo``).
    The row counts of the finished items are added to ``pairs``."""
    picked = {s["key"]: (s["best"] if s.get("failure") is None else None) for s in sels}  # the last record wins
    lost = {
        s["key"]: losses(s.get("method", "tournament"), s["best"], s.get("judgements") or [], s.get("scores") or [])
        for s in sels
        if s.get("failure") is None and s["best"] is not None
    }
    resumable: dict[str, dict] = {}
    restored = 0
    for rec in gens:
        key = rec["key"]
        if key not in picked or key in sels.failed or key in rejudged:  # not judged yet, failed, incomplete: (again)
            resumable[key] = rec
        elif (best := picked[key]) is not None:
            d, k, rc = item_rows(
                key,
                _rec_question(rec),
                rec["iterations"],
                best,
                lost[key],
                selection,
                generator=generator,
                judge=judge,
            )
            pairs.add(rc)
            for store, rows in ((dpo, d), (kto, k)):
                for row in rows:
                    if row["key"] not in store:
                        store.append(row)
                        restored += 1
    if restored:
        log.warning("restored %d DPO/KTO rows lost in a crash mid-write", restored)
    redo = {key for key, best in picked.items() if best is not None and key not in gens}  # failures stay failed
    if redo:
        log.warning("redoing %d finished items whose generation record was lost in a crash mid-write", len(redo))
    return resumable, redo, restored


def _dataset_card(cfg: RunConfig, manifest: dict) -> str:
    return (
        "# mapo preference dataset\n\n"
        "Built by mapo (LLM feedback loop + LLM judge, arXiv 2408.08688).\n\n"
        "- DPO split: conversational `prompt`/`chosen`/`rejected`; KTO split: `prompt`/`completion`/`label`.\n"
        f"- generator: {manifest['roles']['generator']}; reviewers: {', '.join(manifest['roles']['reviewers'])}; "
        f"judge: {manifest['roles']['judge']} ({cfg.judge.strategy}/{cfg.judge.scale}, selection {cfg.selection.method}).\n"
        + _pairs_card(cfg, manifest.get("pairs") or {})
        + "\n"
        + (quality_markdown(manifest["quality"]) + "\n\n" if manifest.get("quality") else "")
        + "## Config\n\n```yaml\n"
        + OmegaConf.to_yaml(OmegaConf.structured(cfg))
        + "```\n"
    )


def _length_card(pairs: Mapping[str, Any]) -> str:
    """ " Length (selection.max_length_ratio 1.5): chosen/rejected 1.8x -> 1.2x, 40 -> 31 pairs." or ""."""
    length = pairs.get("length") or {}
    before, after = length.get("before") or {}, length.get("after") or {}
    if not before.get("pairs"):
        return ""
    x = lambda v: "–" if v is None else f"{v:.2f}x"  # noqa: E731
    return (
        f" Length (selection.max_length_ratio {length.get('max_length_ratio')}): chosen/rejected length ratio "
        f"(geometric mean) {x(before.get('length_ratio_geomean'))} over {before['pairs']} candidate pairs, "
        f"{x(after.get('length_ratio_geomean'))} over the {after.get('pairs', 0)} written "
        f"({pairs.get('length_ratio_skipped', 0)} skipped as too long)."
    )


def _pairs_card(cfg: RunConfig, pairs: dict) -> str:
    """The dataset card's account of what became a pair and what was left out, and why."""
    reasons = ", ".join(f"{k} {v}" for k, v in (pairs.get("ties_dropped_by_reason") or {}).items()) or "none"
    keep = cfg.selection.on_tie == "keep"
    return (
        f"- pairs: {pairs.get('pairs_written', 0)} DPO pairs from {pairs.get('items_with_pairs', 0)} prompts "
        f"({pairs.get('items_without_pairs', 0)} prompts gave none); {pairs.get('kto_rows', 0)} KTO rows.\n"
        + (
            f"- ties kept as pairs (selection.on_tie=keep, column `decisive` false): {pairs.get('ties_kept', 0)}.\n"
            if keep
            else f"- a pair needs a decision of the judge (selection.on_tie=drop): ties dropped "
            f"{pairs.get('ties_dropped', 0)} ({reasons}).\n"
        )
        + f"- identical chosen/rejected skipped: {pairs.get('identical_pairs_skipped', 0)}; the same pair twice "
        f"(two iterations with one text) written once: {pairs.get('duplicate_pairs_skipped', 0)} repeats skipped "
        f"(KTO: {pairs.get('duplicate_kto_skipped', 0)}); responses cut by "
        f"max_tokens {'allowed' if cfg.selection.allow_truncated else 'left out'}: "
        f"{pairs.get('truncated_excluded', 0)} left out.{_length_card(pairs)} Each DPO row carries the judge's `margin` and the scores "
        "that decided (`chosen_score` > `rejected_score` wherever `decisive` is true; with judge.scoring=expected "
        "the written scores are in `*_written_score`, the reviewer's in `*_review_score`).\n"
    )
