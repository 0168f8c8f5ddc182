"""The HTML report in a real headless Chromium (DevTools protocol over a websocket):
it renders, every <img> decodes, nothing logs an error, hostile model text stays text.

Needs Chromium: ``apt-get install -y chromium`` (Debian). Skipped with that hint when absent.
A full-page screenshot is saved to ``tests/artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from mapo.cli.agreement import main as agreement_main
from mapo.report import leaderboard
from mapo.report import render as report
from tests.report.test_report import build_run, evaluate_run, server, winrate_run  # noqa: F401 - server is a fixture

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = (
    os.environ.get("MAPO_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
    or "/usr/bin/chromium"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed: `apt-get install -y chromium` (Debian), or set MAPO_CHROMIUM",
)


class Browser:
    """Chromium plus a minimal DevTools client: one page session, events collected."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.events: list[dict] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> Browser:
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chromium exited {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable", session=self.session)
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.close()
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def send(self, method: str, session: str | None = None, **params) -> dict:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        msg = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def page(self, method: str, **params) -> dict:
        return await self.send(method, session=self.session, **params)

    async def eval(self, expression: str):
        r = await self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def open(self, url: str) -> None:
        self.events.clear()
        await self.page("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        await self.page("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while await self.eval("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not finish loading")
            await asyncio.sleep(0.1)
        await self.eval("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(str((d.get("exception") or {}).get("description") or d.get("text"))[:500])
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:500])
        return out

    async def screenshot(self, path: Path) -> None:
        width = 1280
        await self.page(
            "Emulation.setDeviceMetricsOverride", width=width, height=800, deviceScaleFactor=1, mobile=False
        )
        height = int(await self.eval("Math.ceil(document.documentElement.scrollHeight)"))
        await self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=min(height, 16000),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


async def check_page(b: Browser, html: Path, shot: str) -> dict:
    await b.open(html.resolve().as_uri())
    facts = await b.eval("""(() => {
        const imgs = [...document.images];
        return {
            title: document.title,
            sections: document.querySelectorAll('main section').length,
            images: imgs.length,
            broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
            widths: imgs.map(i => i.naturalWidth),
            scripts: document.scripts.length,
            pwned: window.__pwned === undefined ? null : window.__pwned,
            navLinks: [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href')),
            overflowX: document.documentElement.scrollWidth - document.documentElement.clientWidth,
            missingAnchors: [...document.querySelectorAll('nav a')].filter(a => !document.querySelector(a.getAttribute('href'))).length,
            bodyText: document.body.innerText.length,
        };
    })()""")
    await b.screenshot(ARTIFACTS / shot)
    assert facts["overflowX"] <= 0, f"the page is wider than the window by {facts['overflowX']} px"
    assert facts["images"] > 0 and facts["broken"] == [], facts
    assert all(w > 0 for w in facts["widths"])
    assert facts["scripts"] == 0 and facts["pwned"] is None, "model text must not run as script"
    assert facts["missingAnchors"] == 0 and facts["sections"] >= 3
    assert b.errors() == [], b.errors()
    assert (ARTIFACTS / shot).stat().st_size > 10_000
    return facts


def test_reports_render_in_headless_chromium(server, tmp_path):  # noqa: F811
    build = build_run(server, tmp_path)
    jury = evaluate_run(server, tmp_path, "jury")
    wr = winrate_run(server, tmp_path)
    agr = tmp_path / "agreement.json"  # a `mapo agreement` output: reported and ranked like a run
    assert agreement_main([str(jury), "--n-resamples", "2000", "--out", str(agr)]) == 0
    lb = leaderboard.write_leaderboard([jury, agr], tmp_path / "lb")
    asyncio.run(asyncio.wait_for(_browse(tmp_path, build, jury, wr, lb, agr), 300))


async def _browse(tmp_path: Path, build: Path, jury: Path, wr: Path, lb: dict, agr: Path) -> None:
    async with Browser(tmp_path / "profile") as b:
        facts = await check_page(b, report.write_report(build)["html"], "report_build.png")
        assert facts["title"].startswith("mapo build")
        # the hostile response is on the page as visible text
        text = await b.eval("document.body.innerText")
        assert "<script>window.__pwned = 1</script>" in text
        await check_page(b, report.write_report(jury)["html"], "report_evaluate_jury.png")
        await check_page(b, report.write_report(wr)["html"], "report_winrate.png")
        facts = await check_page(b, report.write_report(agr)["html"], "report_agreement.png")
        assert facts["title"].startswith("mapo agreement")
        await check_page(b, lb["html"], "leaderboard.png")


def test_the_harness_catches_broken_images_and_errors(tmp_path):
    """Negative control: the checks above would fail on a broken page."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img alt="bad" src="data:image/png;base64,AAAA"><script>console.error("boom"); '
        "undefinedFunction();</script></body></html>"
    )

    async def go() -> tuple[list, list]:
        async with Browser(tmp_path / "profile") as b:
            await b.open(page.resolve().as_uri())
            await asyncio.sleep(0.2)
            broken = await b.eval(
                "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
            )
            return broken, b.errors()

    broken, errors = asyncio.run(asyncio.wait_for(go(), 120))
    assert broken == ["bad"]
    assert any("boom" in e for e in errors) and any("undefinedFunction" in e for e in errors), errors
