"""Progress displays: the one-line log mode (SLURM logs) and the tqdm bar, alone and inside the real main job."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from mapo.core.config import ClientConfig, PromptSourceConfig, RolesConfig, RunConfig
from mapo.llm.client import ClientStats
from mapo.runs.build import build
from mapo.runs.progress import Progress, format_duration
from tests.conftest import fake_model

LINE = re.compile(
    r"^(?P<desc>\w+): items (?P<done>\d+)/(?P<total>\d+|\?)( \((?P<pct>[\d.]+)%\))? · "
    r"requests (?P<requests>\d+) done, (?P<in_flight>\d+) in flight · "
    r"((?P<stages>(\w+ \d+/(\d+|\?))(, \w+ \d+/(\d+|\?))*) · )?"
    r"elapsed (?P<elapsed>\d+:\d\d:\d\d), eta (?P<eta>\d+:\d\d:\d\d|\?) · "
    r"retries (?P<retries>\d+), cached (?P<cached>\d+), failed (?P<failed>\d+) · "
    r"(?P<tokens>\d+) tokens \((?P<tps>[\d.]+) tok/s\)"
    r"( \(finished\))?$"
)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mapo.runs.progress"]


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert (
        format_duration(None) == "?" and format_duration(float("nan")) == "?" and format_duration(float("inf")) == "?"
    )


def test_log_line_shows_done_total_rate_eta_in_flight_retries_tokens(caplog):
    caplog.set_level(logging.INFO, logger="mapo.runs.progress")
    stats = ClientStats(in_flight=3, retries=2, requests=40, cached=5, completion_tokens=1234)
    p = Progress("build", 10, stats, mode="log", every_s=0)
    p.t0 -= 4.0  # as if 4 s had passed
    for i in range(4):
        p.update(failed=i == 3)
    line = p.format_line()
    m = LINE.match(line)
    assert m, line
    assert (m["desc"], m["done"], m["total"], m["pct"]) == ("build", "4", "10", "40.0")
    assert (m["in_flight"], m["retries"], m["requests"], m["cached"], m["failed"], m["tokens"]) == (
        "3",
        "2",
        "40",
        "5",
        "1",
        "1234",
    )
    assert m["eta"] in ("0:00:06", "0:00:07")  # 6 items left at ~1 item/s
    assert 250 < float(m["tps"]) <= 308.5
    p.close()
    logged = lines(caplog)
    assert logged[0] == "build: started, 10 items"
    assert logged[-1].endswith("(finished)") and LINE.match(logged[-1])
    assert all(LINE.match(x) for x in logged[1:]), logged
    p.close()  # idempotent
    assert len(lines(caplog)) == len(logged)


def test_log_mode_throttles_and_slow_stages_read_in_seconds_per_item(caplog):
    caplog.set_level(logging.INFO, logger="mapo.runs.progress")
    p = Progress("evaluate", None, ClientStats(), mode="log", every_s=3600)
    for _ in range(50):
        p.update()
    assert lines(caplog) == ["evaluate: started, ? items"], "no line before every_s has passed"
    p.done, p.t0 = 1, time.monotonic() - 500
    line = p.format_line()
    assert "items 1/? · " in line and "eta ?" in line and LINE.match(line)
    p.close()


def test_heartbeat_logs_a_stalled_stage(caplog):
    """No item finishes, requests hang: the log still shows a line with what is in flight."""
    caplog.set_level(logging.INFO, logger="mapo.runs.progress")
    stats = ClientStats(in_flight=7)
    p = Progress("build", 100, stats, mode="log", every_s=0.2)
    time.sleep(1.3)
    p.close()
    beats = [x for x in lines(caplog) if "7 in flight" in x and "(finished)" not in x]
    assert len(beats) >= 2, lines(caplog)
    assert all(x.startswith("build: items 0/100 (0.0%)") and "eta ?" in x for x in beats)
    assert not p._heartbeat.is_alive()


def test_off_and_unknown_modes(caplog):
    caplog.set_level(logging.INFO, logger="mapo.runs.progress")
    p = Progress("x", 3, ClientStats(), mode="off")
    p.update()
    p.close()
    assert lines(caplog) == []
    with pytest.raises(ValueError, match="allowed: auto, bar, log, off"):
        Progress("x", 3, ClientStats(), mode="loud")


def test_bar_mode_postfix(capsys):
    stats = ClientStats(in_flight=2, retries=1, completion_tokens=99, cached=4)
    p = Progress("build", 5, stats, mode="bar")
    for _ in range(5):
        p.update()
    p.close()
    err = capsys.readouterr().err
    assert "build" in err and "5/5" in err and "it" in err
    for part in ("requests=0", "in_flight=2", "retries=1", "tok=99", "cached=4", "failed=0"):
        assert part in err, err


def test_build_logs_progress_lines_in_log_mode(fake_server, tmp_path, caplog, monkeypatch):
    """The main job, non-interactive (as under SLURM): summary lines with real counters."""
    caplog.set_level(logging.INFO, logger="mapo.runs.progress")
    monkeypatch.setenv("MAPO_PROGRESS_EVERY_S", "0")
    models = {n: fake_model(fake_server) for n in ("gen", "rev", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=5),
        client=ClientConfig(cache_path=str(tmp_path / "c.sqlite"), progress="log"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=2,
    )
    manifest = asyncio.run(build(cfg))
    logged = lines(caplog)
    assert logged[0] == "build: started, 5 items"
    final = LINE.match(logged[-1])
    assert final and logged[-1].endswith("(finished)")
    assert final["done"] == final["total"] == "5" and final["in_flight"] == "0"
    assert int(final["requests"]) == manifest["throughput"]["requests"] > 0
    assert int(final["tokens"]) == sum(u["completion_tokens"] for u in manifest["usage"]) > 0
    assert len(logged) >= 3, "a line per finished item with every_s=0"


def test_a_run_shows_movement_before_any_item_finishes():
    """Requests and stages move from the first seconds; the ETA comes once one item passed one stage."""
    stats = ClientStats(in_flight=16, requests=37)
    p = Progress("build", 20, stats, mode="off", stages=("feedback", "judge"))
    p.t0 -= 60.0
    line = p.format_line()
    assert line.startswith("build: items 0/20 (0.0%) · requests 37 done, 16 in flight · feedback 0/20, judge 0/20 · ")
    assert "eta ?" in line and LINE.match(line)
    for _ in range(12):
        p.stage("feedback")
    for _ in range(3):
        p.stage("judge")
    m = LINE.match(p.format_line())
    assert m and m["stages"] == "feedback 12/20, judge 3/20" and m["done"] == "0"
    # 15 of 40 stage steps in 60 s: 25 left, ~100 s
    assert m["eta"] in ("0:01:39", "0:01:40", "0:01:41")


def test_resumed_items_are_left_out_of_the_eta():
    p = Progress("build", 10, ClientStats(), mode="off", stages=("feedback", "judge"))
    for _ in range(5):
        p.update(resumed=True)  # done by an earlier run, in no time
    assert p.stages == {"feedback": 5, "judge": 5} and p.fraction() == 0.0
    p.t0 -= 10.0
    p.stage("feedback")
    p.stage("judge")
    p.update()
    assert p.fraction() == pytest.approx(0.2)  # 1 of the 5 items this session
    assert 35 < p.snapshot()["eta_s"] < 45


def test_the_default_interval_grows_so_a_long_run_logs_a_screenful(monkeypatch):
    monkeypatch.delenv("MAPO_PROGRESS_EVERY_S", raising=False)
    p = Progress("build", 20, ClientStats(), mode="off")
    assert p.adaptive and p._interval() == 30.0

    def lines_in(seconds: float) -> int:
        n, t = 0, 0.0
        while True:
            p.t0 = time.monotonic() - t
            t += p._interval()
            if t > seconds:
                return n
            n += 1

    assert lines_in(20 * 60) <= 25 and lines_in(10 * 3600) <= 65
    monkeypatch.setenv("MAPO_PROGRESS_EVERY_S", "5")
    fixed = Progress("build", 20, ClientStats(), mode="off")
    fixed.t0 -= 3600
    assert not fixed.adaptive and fixed._interval() == 5.0


def test_the_main_job_log_fits_on_one_screen(fake_server, tmp_path):
    """`mapo build` as the README runs it (20 prompts, default log level, log mode): a few lines, none per request."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    args = [str(Path(sys.executable).with_name("mapo")), "build", "client.progress=log"]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")
    for m in ("smollm2-135m", "gemma3-270m"):
        args += [f"models.{m}.endpoint=null", f"models.{m}.base_url={fake_server.base_url}"]
    env = {k: v for k, v in os.environ.items() if k != "MAPO_PROGRESS_EVERY_S"}
    env["MAPO_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = (proc.stdout + proc.stderr).splitlines()
    assert fake_server.n > 40 and not [x for x in out if "HTTP Request" in x or "httpx" in x]
    assert len(out) <= 40, "\n".join(out)
    assert any("build: items 20/20 (100.0%)" in x and "(finished)" in x for x in out), "\n".join(out)
