"""The main job: prompts -> feedback loop (N responses) -> best of N by the judge -> DPO/KTO.

Items stream through a bounded pool of workers (``max_items_in_flight``): while one prompt
is being judged others are being generated, so the servers stay busy. Every record is
appended to JSONL as it finishes; a rerun into the same folder resumes, re-sending nothing
already answered (the response cache) and writing nothing twice (keyed stores).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mapo.core.config import ConfigError, RunConfig, validate
from mapo.core.prompts import prompts_root
from mapo.data.sources import PromptItem, SourceStats, iter_prompts, validate_prompts
from mapo.generation.dataset import RowCounts, RowError, item_rows, save_datasets
from mapo.generation.feedback import FeedbackLoop
from mapo.generation.selection import SELECTORS, excluded, losses
from mapo.judging.judge import Judge
from mapo.llm.client import EndpointUnavailable
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
from mapo.runs.store import RecordStore, RunLock, atomic_write_json

log = logging.getLogger(__name__)


async def build(cfg: RunConfig) -> dict[str, Any]:
    run_dir = Path(cfg.output_dir)
    roles = cfg.roles
    validate(cfg, ["generator", "reviewers", "judge"])
    if cfg.prompts.source != "hf":
        n_prompts = validate_prompts(cfg.prompts)  # bad input fails here, before any model call
        if n_prompts == 0 and cfg.prompts.shard_count == 1:
            raise ConfigError(
                f"prompts: no usable prompts in {cfg.prompts.path or cfg.prompts.source} "
                f"(empty, all invalid and skipped, or prompts.limit={cfg.prompts.limit})"
            )
    else:
        n_prompts = cfg.prompts.limit
    for key, prompt_set in (
        ("judge.prompt_set", cfg.judge.prompt_set),
        ("feedback.prompt_set", cfg.feedback.prompt_set),
    ):
        if not (prompts_root() / prompt_set).is_dir():
            raise ConfigError(
                f"{key}={prompt_set!r}: no folder prompts/{prompt_set}; "
                f"known: {', '.join(sorted(p.name for p in prompts_root().iterdir() if p.is_dir()))}"
            )
    with RunLock(run_dir):
        write_config(cfg, run_dir)
        t_start = time.time()
        client = make_client(cfg)
        used = [roles.generator, *roles.reviewers, roles.judge]
        if cfg.client.check_endpoints:
            try:
                await client.check(used)
            except EndpointUnavailable as e:
                await client.aclose()
                if client.cache is not None:
                    client.cache.close()
                raise RunStopped(f"run stopped before any work: {e}") from e
        if roles.judge == roles.generator:
            log.warning("roles.judge %s also generated the responses it judges (self-preference bias)", roles.judge)
        loop = FeedbackLoop(client, roles.generator, roles.reviewers, cfg.feedback)
        judge = Judge(client, roles.judge, cfg.judge)
        select = SELECTORS.get(cfg.selection.method)

        gens = RecordStore(run_dir / "generations.jsonl")
        sels = RecordStore(run_dir / "selections.jsonl")
        dpo = RecordStore(run_dir / "dpo.jsonl")
        kto = RecordStore(run_dir / "kto.jsonl")
        pairs = RowCounts()  # over the whole dataset: _resume adds the items finished before
        resumable, redo, restored = _resume(
            gens, sels, dpo, kto, generator=roles.generator, judge=roles.judge, selection=cfg.selection, pairs=pairs
        )
        counts = {"resumed_done": len(sels) - len(redo), "failed": 0, "identical_pairs_skipped": 0}
        progress = Progress("build", n_prompts, client.stats, cfg.client.progress)
        stage_s = {"feedback": 0.0, "selection": 0.0}

        async def work(item: PromptItem) -> None:
            if item.id in sels and item.id not in redo:
                progress.update()
                return
            try:
                rec = resumable.pop(item.id, None)
                if rec is None:
                    t0 = time.perf_counter()
                    result = await loop.run(item.prompt)
                    stage_s["feedback"] += time.perf_counter() - t0
                    rec = {"key": item.id, "prompt": item.prompt, **result.to_record()}
                    gens.append(rec)
                responses = [it["response"] for it in rec["iterations"]]
                t0 = time.perf_counter()
                skip = excluded(rec["iterations"], cfg.selection.allow_truncated)  # cut by max_tokens
                sel = await select(judge, item.prompt, responses, skip=skip)
                stage_s["selection"] += time.perf_counter() - t0
            except Exception as e:
                reason = item_failure(e)
                if reason is None:
                    raise
                sels.append({"key": item.id, "best": None, "failure": reason})
                counts["failed"] += 1
                progress.update(failed=True)
                return
            if sel.best is not None:
                try:
                    d, k, rc = item_rows(
                        item.id,
                        item.prompt,
                        rec["iterations"],
                        sel.best,
                        sel.losses(),
                        cfg.selection,
                        generator=roles.generator,
                        judge=roles.judge,
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
            if sel.failure is not None:
                counts["failed"] += 1
            # the selection record goes last: it marks the item done for a resume
            sels.append(
                {
                    "key": item.id,
                    "best": sel.best,
                    "method": sel.method,
                    "scores": sel.scores,
                    "judgements": sel.judgements,
                    "failure": sel.failure,
                }
            )
            progress.update(failed=sel.failure is not None)

        source_stats = SourceStats()
        status = "complete"
        try:
            await run_pool(iter_prompts(cfg.prompts, source_stats), work, cfg.max_items_in_flight)
        except EndpointUnavailable as e:
            status = "stopped"
            raise RunStopped(
                f"run stopped: {e}. {len(sels)} items are saved in {run_dir}; rerun the same command to resume."
            ) from e
        finally:
            progress.close()
            for s in (gens, sels, dpo, kto):
                s.close()
            wall = time.time() - t_start
            manifest = {
                "command": "build",
                "status": status,
                "output_dir": str(run_dir),
                "roles": {"generator": roles.generator, "reviewers": list(roles.reviewers), "judge": roles.judge},
                "models": models_manifest(cfg, used),
                "prompts": {
                    "source": cfg.prompts.source,
                    "read": source_stats.read,
                    "skipped": source_stats.skipped,
                    "skip_reasons": source_stats.reasons or {},
                },
                "items": {"done": len(sels), **counts},
                "pairs": pairs.to_dict(),  # what the dataset holds and left out (ties, truncation)
                "repairs": {
                    "bytes_cut": {s.path.name: s.repaired_bytes for s in (gens, sels, dpo, kto) if s.repaired_bytes},
                    "rows_restored": restored,
                    "items_redone": len(redo),
                },
                # stage figures sum per-item time over concurrent items: busy time, not wall time
                "timings_s": {"wall": round(wall, 2), **{f"{k}_busy": round(v, 2) for k, v in stage_s.items()}},
                **run_accounting(client, wall),
            }
            if status == "complete":
                card = _dataset_card(cfg, manifest)
                manifest["rows"] = save_datasets(run_dir, push_to_hub=cfg.push_to_hub, card=card)
            atomic_write_json(run_dir / "manifest.json", manifest)
            await client.aclose()
            if client.cache is not None:
                client.cache.close()
    return manifest


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
) -> tuple[dict[str, dict], set[str], int]:
    """What a rerun picks up: generations whose selection had not finished (``resumable``), and
    repairs after a crash mid-write. A torn last line is cut when a store opens; if it held a
    DPO/KTO row of a finished item, the row is rebuilt from the stored generation and pick
    (``restored``); if it held the generation record, the item is redone from the cache (``redo``).
    The row counts of the finished items are added to ``pairs``."""
    picked = {s["key"]: (s["best"] if s.get("failure") is None else None) for s in sels}
    lost = {
        s["key"]: losses(s.get("method", "tournament"), s["best"], s.get("judgements") or [], s.get("scores") or [])
        for s in sels
        if s.get("failure") is None and s["best"] is not None
    }
    resumable: dict[str, dict] = {}
    restored = 0
    for rec in gens:
        key = rec["key"]
        if key not in picked:
            resumable[key] = rec
        elif (best := picked[key]) is not None:
            d, k, rc = item_rows(
                key,
                rec["prompt"],
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
        "## Config\n\n```yaml\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg)) + "```\n"
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
        + f"- identical chosen/rejected skipped: {pairs.get('identical_pairs_skipped', 0)}; responses cut by "
        f"max_tokens {'allowed' if cfg.selection.allow_truncated else 'left out'}: "
        f"{pairs.get('truncated_excluded', 0)} left out. Each DPO row carries the judge's `margin`.\n"
    )
