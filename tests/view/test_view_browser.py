"""``mapo view`` in a real headless Chromium (the report tests' DevTools client): a build run and
evaluate runs made by the real pipeline against the fake server, hostile model text that must
stay text, the filters, an item's raw judge text, the report's links both ways, and a
100,000-item evaluate run (synthetic records) opened and filtered within the time limit.

Needs Chromium (``apt-get install -y chromium``); skipped with that hint when absent. Run under
``flock /tmp/mapo-heavy.lock``. Screenshots go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from pathlib import Path

import pytest

from mapo.report import render as report
from mapo.view.server import serve
from tests.report.test_browser import ARTIFACTS, CHROMIUM, Browser
from tests.report.test_report import INJECT, build_run, evaluate_run, server  # noqa: F401 - server is a fixture
from tests.view.test_view import disagreements

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed: `apt-get install -y chromium` (Debian), or set MAPO_CHROMIUM",
)

FILTER_LIMIT_S = 2.0
"""The issue's bound: a 100,000-item run filtered in the browser within this."""


async def ready(b: Browser, url: str) -> None:
    await b.open("about:blank")  # a new load, not a hash change of the same page
    await b.open(url)
    assert await b.eval("window.mapoView.ready") is True, await b.eval("document.body.innerText")


async def facts(b: Browser) -> dict:
    return await b.eval("""(() => ({
        count: document.getElementById('count').textContent,
        active: window.mapoView.state.table.getDataCount('active'),
        all: window.mapoView.state.table.getDataCount(),
        rows: document.querySelectorAll('.tabulator-row').length,
        scripts: [...document.scripts].map(s => s.getAttribute('src')),
        pwned: window.__pwned === undefined ? null : window.__pwned,
        injectedImgs: document.querySelectorAll('img[src="x"], img[onerror]').length,
        text: document.body.innerText,
        item: document.getElementById('item').dataset.item || null,
    }))()""")


async def click(b: Browser, selector: str) -> None:
    ok = await b.eval(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false; e.click(); return true; }})()"
    )
    assert ok, f"nothing matches {selector}"


async def open_row(b: Browser, n: int = 0) -> str:
    """Click the n-th visible row; wait for its item to open; its id."""
    want = await b.eval(f"window.mapoView.state.table.getRows('active')[{n}].getData().id")
    await b.eval(f"document.querySelectorAll('.tabulator-row')[{n}].click()")
    deadline = time.monotonic() + 30
    while (await facts(b))["item"] != want:
        assert time.monotonic() < deadline, f"item {want} did not open"
        await asyncio.sleep(0.05)
    return want


def assert_safe(f: dict) -> None:
    assert f["pwned"] is None, "model text ran as script"
    assert f["injectedImgs"] == 0, "model text became an element"
    assert f["scripts"] == ["/static/tabulator.min.js", "/static/view.js"], f["scripts"]


def test_viewer_in_headless_chromium(server, tmp_path):  # noqa: F811
    build = build_run(server, tmp_path / "sweep")
    jury = evaluate_run(server, tmp_path / "sweep", "jury", name="jury")
    # one order for the judge (the jury has both): the fake judge's random verdicts then often match the human
    judge = evaluate_run(server, tmp_path / "sweep", "judge", name="judge", both_orders=False)
    report.write_report(jury)
    srv = serve([tmp_path / "sweep"]).start()
    try:
        asyncio.run(asyncio.wait_for(_browse(srv.url, tmp_path, build, jury, judge), 300))
    finally:
        srv.close()


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def _browse(url: str, tmp_path: Path, build: Path, jury: Path, judge: Path) -> None:
    async with Browser(tmp_path / "profile") as b:
        # ---- build: one row per prompt, hostile responses stay text, the decisive filter, one item
        await ready(b, url)
        views = json.loads(await b.eval("fetch('/api/views').then(r => r.text())"))["views"]
        build_view = next(v["id"] for v in views if v["kind"] == "build")
        await ready(b, f"{url}#view={build_view}")
        f = await facts(b)
        sels = _records(build / "selections.jsonl")
        assert f["all"] == len(sels) and f["rows"] == len(sels)
        await click(b, "#flag-decisive")
        decisive = {p["prompt_id"] for p in _records(build / "dpo.jsonl")}
        assert (await facts(b))["active"] == len(decisive)
        key = await open_row(b)
        f = await facts(b)
        assert_safe(f)
        assert "<script>window.__pwned = 1</script>" in f["text"], "the hostile response is shown as text"
        judge_raw = next(s for s in sels if s["key"] == key)["judgements"][0]["attempts"][0]["raw"][0]
        assert judge_raw.split("\n")[0] in f["text"] and "### Score Assistant B" in f["text"]
        assert "feedback iterations (3)" in f["text"] and "review by rev" in f["text"]
        assert await b.eval("document.querySelectorAll('.chg-chosen').length") > 0, "the word diff is marked"
        await click(b, "#sort-margin")
        margins = await b.eval("window.mapoView.state.table.getRows('active').map(r => r.getData().margin)")
        assert margins == sorted(margins, reverse=True)
        await b.screenshot(ARTIFACTS / "view_build.png")
        assert b.errors() == [], b.errors()

        # ---- evaluate: two runs joined, judge vs human disagreements, the raw judge text of one
        await ready(b, f"{url}#view=evaluate")
        f = await facts(b)
        assert f["all"] == 8
        recs = _records(jury / "judgements.jsonl") + _records(judge / "judgements.jsonl")
        disagree = disagreements(recs)
        await click(b, "#flag-disagree")
        assert (await facts(b))["active"] == len(disagree)
        await click(b, "#flag-disagree")  # off again; now the judge's disagreements alone
        judge_col = await b.eval("window.mapoView.state.view.columns.find(c => c.title === 'judge: j1').field")
        disagree = disagreements(recs, ("judge",))
        assert 0 < len(disagree) < 8
        await click(b, f"#flag-disagree_{judge_col}")
        f = await facts(b)
        assert f["active"] == len(disagree), f["count"]
        item = await open_row(b)
        assert item in disagree
        await click(b, f"#flag-disagree_{judge_col}")
        await click(b, "#flag-inconsistent")  # the jury's two orders that disagree
        jury_recs = [r for r in recs if r["kind"] == "jury"]
        inconsistent = {
            r["item_id"]
            for r in jury_recs
            if len({x["label"] for x in jury_recs if x["item_id"] == r["item_id"] and x["label"]}) > 1
        }
        assert (await facts(b))["active"] == len(inconsistent)
        await click(b, "#flag-inconsistent")
        f = await facts(b)
        assert_safe(f)
        assert INJECT.split(">")[0] + ">" in f["text"], "the hostile question is shown as text"
        raw = next(r for r in recs if r["item_id"] == item and r["kind"] == "judge")["raw"][-1]
        assert raw.split("\n")[-1] in f["text"] and "### Score Assistant A" in f["text"], "the judge's raw text"
        assert "jurors' judgements (6)" in f["text"] and "aggregate" in f["text"], "the jury's votes"
        assert await b.eval("document.querySelectorAll('#item .ev').length") == 2, "two evaluators side by side"
        await b.screenshot(ARTIFACTS / "view_evaluate.png")
        await readme_shot(b, ARTIFACTS / "view_readme.png")  # docs/view.png is a copy of one
        assert b.errors() == [], b.errors()

        # ---- linked both ways with the report: viewer -> report.html -> an item in the viewer
        href = await b.eval("document.querySelector('#runs a[href$=\"report.html\"]').getAttribute('href')")
        await b.open(url.rstrip("/") + href)
        links = await b.eval("[...document.querySelectorAll('a[href*=\"view.html#item=\"]')].map(a => a.href)")
        assert links, "the report's examples link to the viewer"
        assert await b.eval("document.scripts.length") == 0 and (await facts_report(b)) is None
        await b.open(links[0])
        assert await b.eval("window.mapoView.ready") is True
        deadline = time.monotonic() + 30
        while not await b.eval("document.getElementById('item').dataset.item || null"):
            assert time.monotonic() < deadline, "the linked item did not open"
            await asyncio.sleep(0.05)
        linked = await b.eval("document.getElementById('item').dataset.item")
        assert f"item={linked}" in links[0].replace("%7C", "|")
        assert b.errors() == [], b.errors()


async def readme_shot(b: Browser, path: Path) -> None:
    """The table and the opened item, at 3/4 scale: small enough for the README."""
    await b.page("Emulation.setDeviceMetricsOverride", width=1280, height=1150, deviceScaleFactor=0.75, mobile=False)
    await b.eval("window.scrollTo(0, 0)")
    shot = await b.page("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    await b.page("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)


async def facts_report(b: Browser):
    return await b.eval("window.__pwned === undefined ? null : window.__pwned")


# --------------------------------------------------------------------------- 100,000 items


def synthetic_evaluate_run(root: Path, n: int = 100_000, seed: int = 0) -> Path:
    """An evaluate run folder as `mapo evaluate` leaves it (items, config, manifest, judgements in both
    orders), with made-up verdicts: the viewer reads it as a real one."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    labels = ["model_a", "model_b", "tie"]
    items = root / "items.jsonl"
    with open(items, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"s{i}",
                        "question": f"Synthetic question {i}: which answer is better?",
                        "response_a": f"Answer A {i} " + "word " * rng.randrange(5, 40),
                        "response_b": f"Answer B {i} " + "word " * rng.randrange(5, 40),
                        "human": labels[rng.randrange(3)],
                    }
                )
                + "\n"
            )
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"eval_data:\n  loader: local\n  path: {items}\n")
    (run / "manifest.json").write_text(json.dumps({"command": "evaluate", "status": "complete", "judge": "synthetic"}))
    swap = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    with open(run / "judgements.jsonl", "w") as fh:
        rng = random.Random(seed)
        for i in range(n):
            human = labels[i * 7 % 3]
            for order in ("AB", "BA"):
                failed = rng.random() < 0.01
                label = None if failed else labels[rng.randrange(3)]
                pick = (
                    None
                    if label is None
                    else {"model_a": "A", "model_b": "B", "tie": "tie"}[swap[label] if order == "BA" else label]
                )
                rec = {
                    "key": f"s{i}|synthetic|combined10|v1|x|{order}",
                    "item_id": f"s{i}",
                    "evaluator": "judge",
                    "kind": "judge",
                    "judge": "synthetic",
                    "setup": "combined10",
                    "order": order,
                    "pick": pick,
                    "label": label,
                    "score_a": None,
                    "score_b": None,
                    "failure": "parse failure: no score" if failed else None,
                    "human": human,
                    "raw": [f"### Score Assistant A:\n{rng.randrange(11)}/10 (item {i} {order})"],
                }
                # as judge.scoring=expected keeps it: the distribution at the score the judge wrote
                top = {str(v): -rng.random() * 4 for v in rng.sample(range(11), 3)}
                rec["detail"] = {
                    "attempts": [
                        {
                            "order": order,
                            "raw": rec["raw"],
                            "verdict": {"pick": pick, "score_a": None, "score_b": None, "failure": rec["failure"]},
                            "logprobs": [{"value": "score_a", "prefix": "", "token": next(iter(top)), "top": top}],
                        }
                    ]
                }
                fh.write(json.dumps(rec) + "\n")
    return run


def test_a_100k_item_evaluate_run_opens_and_filters_fast(tmp_path):
    run = synthetic_evaluate_run(tmp_path / "big")
    t0 = time.monotonic()
    srv = serve([run]).start()
    load_s = time.monotonic() - t0
    try:
        timings = asyncio.run(asyncio.wait_for(_big(srv.url, tmp_path), 300))
    finally:
        srv.close()
    timings["server_load_s"] = round(load_s, 2)
    print("mapo view, 100,000 items:", json.dumps(timings))
    (ARTIFACTS / "view_100k_timings.json").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "view_100k_timings.json").write_text(json.dumps(timings, indent=1))
    assert timings["filter_s"] < FILTER_LIMIT_S, timings
    assert timings["open_s"] < 5, timings  # measured 1.1 s (notes); generous for a loaded machine


async def _big(url: str, tmp_path: Path) -> dict:
    async with Browser(tmp_path / "profile") as b:
        t0 = time.monotonic()
        await ready(b, url)
        open_s = time.monotonic() - t0
        f = await facts(b)
        assert f["all"] == 100_000
        assert f["rows"] < 200, "virtual scrolling: only the visible rows are in the page"
        # time from the click until the filtered table has been painted
        filter_ms, active = await b.eval("""(async () => {
            const t0 = performance.now();
            document.getElementById('flag-disagree').click();
            await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
            return [performance.now() - t0, window.mapoView.state.table.getDataCount('active')];
        })()""")
        assert 0 < active < 100_000
        item = await open_row(b, 3)
        f = await facts(b)
        assert f"(item {item[1:]} AB)" in f["text"] and f"(item {item[1:]} BA)" in f["text"], "its raw judge texts"
        assert "top alternatives (probability)" in f["text"], "the logprob distribution behind the score"
        assert await b.eval("document.querySelectorAll('#item table.kv tr').length") >= 4
        await b.screenshot(ARTIFACTS / "view_100k.png")
        assert b.errors() == [], b.errors()
        return {"open_s": round(open_s, 2), "filter_s": round(filter_ms / 1000, 3), "rows_after_filter": active}


# --------------------------------------------------------------------------- folders made by real vLLM


def check_real_runs(runs: list[Path], tmp_path: Path) -> None:
    """The viewer on run folders of the real-vLLM tests (tests/test_e2e_vllm.py calls it; no extra
    model call): every view opens, one item per view opens, and its first raw model text (a judge's,
    or a generated response) is on the page. Skipped quietly without Chromium."""
    if not Path(CHROMIUM).exists():
        return
    srv = serve(runs).start()
    try:
        asyncio.run(asyncio.wait_for(_real(srv, tmp_path), 300))
    finally:
        srv.close()


async def _real(srv, tmp_path: Path) -> None:
    async with Browser(tmp_path / "profile-view") as b:
        for view in srv.views.values():
            await ready(b, f"{srv.url}#view={view.id}")
            assert (await facts(b))["all"] == len(view.rows()) > 0
            await open_row(b)
            item = view.item(await b.eval("document.getElementById('item').dataset.item"))
            assert item is not None
            if item["kind"] == "evaluate":
                want = next(t for e in item["evaluators"] for r in e["records"] for t in r["raw"] or [] if t.strip())
            elif item["kind"] == "build":
                want = item["generation"]["iterations"][0]["response"]
            else:
                continue
            text = await b.eval("document.getElementById('item').textContent")
            assert " ".join(want.split())[:200] in " ".join(text.split()), "the raw model text is on the page"
            assert_safe(await facts(b))
            assert b.errors() == [], b.errors()


# --------------------------------------------------------------------------- multi-turn items


def test_a_multiturn_item_shows_every_turn_in_the_browser(server, tmp_path):  # noqa: F811
    """The page of an evaluated two-turn conversation shows turn 1 (question and answer) before the judged
    turn 2, numbered; a single-turn item of the same run has no turns block."""
    from tests.view.test_view_multiturn import TURNS, write_conversations

    run = evaluate_run(server, tmp_path / "mt", "judge", name="mt", items=write_conversations(tmp_path / "conv.jsonl"))
    srv = serve([run.parent]).start()
    try:

        async def browse() -> None:
            async with Browser(tmp_path / "profile") as b:
                await ready(b, f"{srv.url}#view=evaluate&item=m0")
                deadline = time.monotonic() + 30
                while (await facts(b))["item"] != "m0":
                    assert time.monotonic() < deadline, "item m0 did not open"
                    await asyncio.sleep(0.05)
                f = await facts(b)
                assert_safe(f)
                turns = await b.eval("document.getElementById('item-turns')?.innerText || null")
                assert turns is not None, f["text"]
                assert TURNS[0]["content"] in turns and TURNS[1]["content"] in turns
                assert "turn 1 of 2" in turns and "then turn 2 of 2" in turns
                text = f["text"]
                assert "question: turn 2 of 2, the one judged" in text
                # on the item's page turn 1 comes before the judged question (the table above shows the question only)
                page = await b.eval("document.getElementById('item').innerText")
                assert page.index(TURNS[0]["content"]) < page.index(f"{TURNS[2]['content']} (0)")
                await b.screenshot(ARTIFACTS / "view_multiturn.png")
                await ready(b, f"{srv.url}#view=evaluate&item=m1")
                while (await facts(b))["item"] != "m1":
                    assert time.monotonic() < deadline + 30, "item m1 did not open"
                    await asyncio.sleep(0.05)
                assert await b.eval("document.getElementById('item-turns')") is None
                assert "Single question 1?" in (await facts(b))["text"]
                assert b.errors() == [], b.errors()

        asyncio.run(asyncio.wait_for(browse(), 120))
    finally:
        srv.close()
