"""The run skeleton (mapo/runs/runner.py) in-process: signals, cancellation, the fingerprint."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
from pathlib import Path

import pytest

from mapo.core.config import ConfigError
from mapo.runs.build import Build, build
from mapo.runs.evaluate import Evaluate
from mapo.runs.runner import Fingerprint, RunInterrupted, _override_key, check_overrides
from mapo.runs.winrate import Winrate
from tests.fake_openai import FakeServer
from tests.runs.test_faults import published_vs_jsonl, run_config


async def _after_records(path, n: int) -> None:
    while not path.exists() or path.read_bytes().count(b"\n") < n:
        await asyncio.sleep(0.005)


async def test_sigterm_in_process_interrupts_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with FakeServer(latency_s=0.01) as server:
        task = asyncio.create_task(build(run_config(tmp_path, server)))
        await _after_records(tmp_path / "run" / "selections.jsonl", 2)
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(RunInterrupted, match=r"run interrupted by SIGTERM: .* rerun the same command to resume"):
            await task
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["reason"] == "interrupted by SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


async def test_a_caller_cancelling_the_run_gets_cancelled_error_and_the_manifest_says_so(tmp_path):
    with FakeServer(latency_s=0.01) as server:
        task = asyncio.create_task(build(run_config(tmp_path, server)))
        await _after_records(tmp_path / "run" / "selections.jsonl", 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "rows" not in manifest


def test_fingerprint_names_changed_keys_and_ignores_keys_one_side_lacks():
    old = Fingerprint.of({"judge.scale": 10, "feedback.iterations": 3, "models.a.generation.stop": None})
    new = Fingerprint.of({"judge.scale": 5, "feedback.iterations": 3, "judge.scoring": "argmax"})
    assert new.changes(old.keys) == ["judge.scale: 10 -> 5"]
    assert Fingerprint.of({"x": (1, 2)}).id == Fingerprint.of({"x": [1, 2]}).id != new.id


async def test_an_unfinished_rerun_withdraws_what_the_last_complete_run_published(tmp_path):
    """The published dataset always equals the records: a rerun that adds records and does not
    finish leaves no dataset of the earlier, smaller run behind; completing publishes again."""
    with FakeServer(latency_s=0.01) as server:
        small = run_config(tmp_path, server)
        small.prompts.limit = 3
        await build(small)
        run = tmp_path / "run"
        assert published_vs_jsonl(run) == "yes" and (run / "dataset").is_dir()
        task = asyncio.create_task(build(run_config(tmp_path, server)))
        await _after_records(run / "selections.jsonl", 5)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(RunInterrupted, match="SIGINT"):
            await task
        assert published_vs_jsonl(run) == "not published" and not (run / "dataset").exists()
        manifest = await build(run_config(tmp_path, server))
    assert manifest["status"] == "complete" and manifest["items"]["done"] == 8
    assert published_vs_jsonl(run) == "yes"


async def test_every_manifest_names_the_host_cpu(tmp_path):
    """Throughput figures mean little without the CPU: model, vLLM-relevant flags and usable cores."""
    from mapo.serving.cpu import cpu_info

    with FakeServer() as server:
        cfg = run_config(tmp_path, server)
        cfg.prompts.limit = 1
        manifest = await build(cfg)
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk["host_cpu"] == manifest["host_cpu"] == cpu_info()
    assert manifest["host_cpu"]["cores"] >= 1 and isinstance(manifest["host_cpu"]["flags"], list)
    assert isinstance(manifest["host"], str)  # the node name, as before


def test_an_item_done_again_that_fails_as_recorded_neither_extends_nor_breaks_the_streak():
    """A rerun does failed items again; an unparseable answer the cache gives back fails exactly as
    recorded: that is no new evidence for the K rule (a rerun of a run with 6 such items completes),
    while new failures of one cause still stop it, and a run whose every item failed still stops."""
    from mapo.runs.runner import FailureWatch, RunStopped

    watch = FailureWatch(3)
    for _ in range(6):
        watch.note("unparseable verdict: no score", before="unparseable verdict: no score")
    assert watch.failed == 6 and watch.streak == []
    assert watch.all_failed() is not None  # nothing else was done: every item of this run failed
    watch.note(None)
    assert watch.all_failed() is None
    watch.note("request rejected (HTTP 400): x", before="request rejected (HTTP 400): y")  # failed otherwise now
    watch.note("request rejected (HTTP 400): x")
    with pytest.raises(RunStopped, match=r"3 items in a row failed with the same cause \(request rejected"):
        watch.note("request rejected (HTTP 400): x")


READS = {"build": Build.reads, "evaluate": Evaluate.reads, "winrate": Winrate.reads}
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("judge.explain=false", "judge"),
        ("+judge.explain=false", "judge"),
        ("++models.x.base_url=http://h:1/v1", "models"),
        ("~prompts.limit", "prompts"),
        ("model@models.extra=smollm2-135m", "models"),
        ("judge=direct", "judge"),
        ("roles.jurors=[a,b]", "roles"),
        ("hydra/launcher=submitit_slurm", "hydra"),
    ],
)
def test_override_key_is_the_top_level_key_it_writes(override, key):
    assert _override_key(override) == key


@pytest.mark.parametrize(
    ("command", "override"),
    [
        ("evaluate", "selection.on_tie=keep"),
        ("evaluate", "feedback.iterations=2"),
        ("build", "eval_data.path=labels.jsonl"),
        ("build", "configurations=[]"),  # winrate's (build reads evaluator, jury, ...: it selects with any evaluator)
        ("winrate", "selection.method=tournament"),
        ("winrate", "push_to_hub=true"),
    ],
)
def test_an_override_the_command_does_not_read_is_refused_naming_it(command, override):
    with pytest.raises(ConfigError, match=rf"^{re.escape(override.split('=')[0])}: mapo {command} does not read"):
        check_overrides(command, READS[command], ["client.progress=off", override])


@pytest.mark.parametrize("command", sorted(READS))
def test_shared_keys_and_the_commands_own_keys_pass(command):
    shared = ["+models.x.base_url=u", "client.cache=false", "stats.resamples=10", "run_name=r", "hydra.run.dir=d"]
    check_overrides(command, READS[command], shared + [f"{key}.x=1" for key in READS[command]])


def _documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``mapo build|evaluate|winrate ...`` command line written in the README, the conf files' comments and
    slurm/: (command, its key=value overrides)."""
    files = [REPO / "README.md", *sorted((REPO / "conf").glob("*.yaml")), *sorted((REPO / "slurm").glob("*"))]
    out = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text().replace("\\\n", " ")
        for m in re.finditer(r"mapo (build|evaluate|winrate)((?: +(?:-m|'[^'\n]*'|[^\s`'|;&)]+))*)", text):
            try:
                words = shlex.split(m.group(2))
            except ValueError:
                continue
            overrides = [w for w in words if "=" in w and not w.startswith("-") and "$" not in w.split("=")[0]]
            if overrides:
                out.append((m.group(1), overrides))
    return out


def test_every_documented_command_line_passes_the_override_check():
    """The reads lists are complete: no README / conf / SLURM example is refused."""
    lines = _documented_command_lines()
    assert len(lines) >= 15, lines  # the scan found the examples (not vacuous)
    for command, overrides in lines:
        check_overrides(command, READS[command], overrides)
