"""Sharding a prompt set across a job array, merging the shards, summarising a sweep (no SLURM)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mapo.core.config import ClientConfig, ConfigError, PromptSourceConfig, RolesConfig, RunConfig
from mapo.data.sources import _shard_of, iter_prompts
from mapo.runs.build import build
from mapo.runs.shard import MergeError, main, merge, summary
from tests.conftest import fake_model


def test_shard_of_is_stable_and_spreads():
    # pinned: a change here would reshuffle the prompts of arrays already running
    assert [_shard_of(str(i), 4) for i in range(8)] == [_shard_of(str(i), 4) for i in range(8)]
    assert _shard_of("alpaca-17", 1) == 0
    counts = Counter(_shard_of(f"id-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 900
    with pytest.raises(ValueError):
        _shard_of("x", 0)


def test_shards_partition_the_limited_set():
    whole = [p.id for p in iter_prompts(PromptSourceConfig(limit=15))]
    parts = [[p.id for p in iter_prompts(PromptSourceConfig(limit=15, shard_index=i, shard_count=3))] for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    assert len(set(sum(parts, []))) == len(whole) == 15
    assert all(_shard_of(pid, 3) == i for i, part in enumerate(parts) for pid in part)


def test_shard_index_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="prompts.shard_index=3"):  # when the config is built
        RunConfig(prompts=PromptSourceConfig(shard_index=3, shard_count=3))


# ---- merge on real build runs (fake server) ------------------------------------------------


def _cfg(server, tmp_path: Path, out: str, **prompts) -> RunConfig:
    return RunConfig(
        models={n: fake_model(server) for n in ("gen", "rev", "judge")},
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=9, **prompts),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / out),
        run_name=out.split("/")[0],  # as slurm/array.sbatch: one run name, a folder per shard
        max_items_in_flight=4,
    )


def _keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


@pytest.fixture
async def shards(fake_server, tmp_path):
    """Three shards and the unsharded run of the same 9 prompts."""
    dirs = []
    for i in range(3):
        await build(_cfg(fake_server, tmp_path, f"arr/shard-{i}", shard_index=i, shard_count=3))
        dirs.append(tmp_path / f"arr/shard-{i}")
    await build(_cfg(fake_server, tmp_path, "whole"))
    return dirs


async def test_merge_equals_the_unsharded_run(shards, tmp_path):
    import datasets

    out = tmp_path / "arr" / "merged"
    manifest = merge([str(tmp_path / "arr" / "shard-*")], out)  # a quoted glob, as in slurm/merge.sbatch
    whole = tmp_path / "whole"
    for name in ("generations", "selections", "dpo", "kto"):
        merged = _keys(out / f"{name}.jsonl")
        assert len(merged) == len(set(merged))
        assert sorted(merged) == sorted(_keys(whole / f"{name}.jsonl")), name
    assert manifest["items"]["done"] == 9 and manifest["shard_count"] == 3
    assert manifest["rows"]["dpo"] == len(_keys(whole / "dpo.jsonl"))
    assert len(datasets.load_from_disk(str(out / "dataset" / "kto"))["train"]) == len(_keys(whole / "kto.jsonl"))
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


async def test_merge_takes_a_shards_last_record_of_a_retried_item(tmp_path):
    """A shard whose first run failed an item (its first judge request rejected) and whose rerun redid it holds
    that key twice in selections.jsonl: the failure, then the record that superseded it. That is the shard's own
    history, not a key of two shards: merge keeps the last record and equals the unsharded run. Before the fix
    merge refused it ("appears twice"), so a job array whose shard resumed after a failure could not be merged."""
    from tests.fake_openai import FakeServer

    hit: dict = {"request": None, "broken": True}

    def faults(n: int, body: dict):
        text = json.dumps(body["messages"])
        if not hit["broken"] or "Score Assistant A" not in text:
            return None
        hit["request"] = hit["request"] or text  # the first judge request: only its item fails
        if text == hit["request"]:
            return (400, {"error": {"message": "prompt is too long for this model", "code": 400}})
        return None

    arr = tmp_path / "arr"
    with FakeServer(faults=faults) as server:
        first = await build(_cfg(server, tmp_path, "arr/shard-0", shard_index=0, shard_count=3))
        hit["broken"] = False
        again = await build(_cfg(server, tmp_path, "arr/shard-0", shard_index=0, shard_count=3))
        for i in (1, 2):
            await build(_cfg(server, tmp_path, f"arr/shard-{i}", shard_index=i, shard_count=3))
        await build(_cfg(server, tmp_path, "whole"))
    assert first["items"]["failed"] == 1 and again["items"]["failed"] == 0, (first["items"], again["items"])
    keys = _keys(arr / "shard-0" / "selections.jsonl")
    assert len(keys) == len(set(keys)) + 1, "the retried item's failure record stays as history"

    manifest = merge([arr / f"shard-{i}" for i in range(3)], arr / "merged")
    for name in ("generations", "selections", "dpo", "kto"):
        merged = _keys(arr / "merged" / f"{name}.jsonl")
        assert len(merged) == len(set(merged)), name
        assert sorted(merged) == sorted(_keys(tmp_path / "whole" / f"{name}.jsonl")), name
    merged_sels = [json.loads(x) for x in (arr / "merged" / "selections.jsonl").read_text().splitlines()]
    assert not [s for s in merged_sels if s.get("failure")], "the superseded failure was merged, not its redo"
    assert manifest["items"]["done"] == 9 and manifest["items"]["failed"] == 0


async def test_merge_refuses_a_missing_shard(shards, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(MergeError, match=r"missing shard\(s\) \[2\] of 3"):
        merge(shards[:2], out)
    assert not out.exists()


async def test_merge_refuses_a_duplicated_key(shards, tmp_path):
    src = shards[0] / "dpo.jsonl"
    first = src.read_text().splitlines()[0]
    with open(shards[1] / "dpo.jsonl", "a") as fh:
        fh.write(first + "\n")
    with pytest.raises(MergeError, match="appears twice"):
        merge(shards, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".m.merge-tmp-*"))


async def test_merge_refuses_incomplete_or_foreign_shards(shards, tmp_path):
    m = json.loads((shards[2] / "manifest.json").read_text())
    (shards[2] / "manifest.json").write_text(json.dumps({**m, "status": "stopped"}))
    with pytest.raises(MergeError, match="not 'complete'"):
        merge(shards, tmp_path / "m")
    (shards[2] / "manifest.json").write_text(json.dumps(m))
    cfg = (shards[2] / "config.yaml").read_text()
    (shards[2] / "config.yaml").write_text(cfg.replace("strategy: combined", "strategy: direct"))
    with pytest.raises(MergeError, match="different config"):
        merge(shards, tmp_path / "m")
    (shards[2] / "config.yaml").write_text(cfg)
    with pytest.raises(MergeError, match="given twice"):
        merge([shards[0], shards[1], shards[2], shards[0]], tmp_path / "m")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("keep me")
    with pytest.raises(MergeError, match="not empty"):
        merge(shards, tmp_path / "m")
    assert (tmp_path / "m" / "x").read_text() == "keep me"


async def test_merge_cli_exit_codes(shards, tmp_path, capsys):
    """`mapo merge` (in COMMANDS) and its old spelling `python -m mapo.runs.shard merge` (job scripts)."""
    from mapo.cli.app import main as mapo_main

    with pytest.raises(SystemExit) as refused:
        mapo_main(["merge", str(shards[0]), "--out", str(tmp_path / "m")])
    assert refused.value.code == 1 and "missing shard" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as done:
        mapo_main(["merge", *map(str, shards), "--out", str(tmp_path / "m")])
    assert done.value.code == 0 and "merged 3 shards" in capsys.readouterr().out
    assert main(["merge", str(shards[0]), "--out", str(tmp_path / "m2")]) == 1  # the alias
    assert "missing shard" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


# ---- sweep summary -------------------------------------------------------------------------


def _fake_run(root: Path, sub: str, overrides: list[str], manifest: dict | None) -> None:
    d = root / sub
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if manifest is not None:
        (d / "manifest.json").write_text(json.dumps(manifest))


def test_summary_gathers_every_run(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "build"
    base = {
        "command": "build",
        "status": "complete",
        "host": "n1",
        "roles": {"judge": "j", "reviewers": ["a", "b"]},
        "usage": [{"role": "judge", "model": "j", "requests": 3}],
        "models": {"j": {"base_url": "x"}},
    }
    _fake_run(
        sweep,
        "judge.strategy=direct",
        ["judge.strategy=direct"],
        {**base, "items": {"done": 4, "failed": 0}, "rows": {"dpo": 5, "kto": 8}, "timings_s": {"wall": 3.5}},
    )
    _fake_run(
        sweep,
        "judge.strategy=combined",
        ["judge.strategy=combined"],
        {**base, "items": {"done": 4, "failed": 1}, "rows": {"dpo": 4, "kto": 8}, "timings_s": {"wall": 4.0}},
    )
    _fake_run(sweep, "judge.strategy=independent", ["judge.strategy=independent"], None)
    (sweep / ".submitit" / "123_0").mkdir(parents=True)

    rows = summary(sweep)
    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == {"judge.strategy=direct", "judge.strategy=combined", "judge.strategy=independent"}
    assert by_run["judge.strategy=direct"]["rows.dpo"] == 5
    assert by_run["judge.strategy=independent"]["status"] == "no manifest"
    assert by_run["judge.strategy=combined"]["roles.reviewers"] == "a+b"

    csv_text = (sweep / "summary.csv").read_text()
    header = csv_text.splitlines()[0].split(",")
    assert header[:4] == ["run", "judge.strategy", "command", "status"]
    assert "host" not in header and not any(h.startswith(("usage", "models.")) for h in header)
    md = (sweep / "summary.md").read_text()
    assert md.splitlines()[0].startswith("| run | judge.strategy | status | items.done | items.failed | rows.dpo |")
    assert "rows.dpo" in md and "roles.judge" not in md  # constant columns stay in the CSV only
    assert len(md.splitlines()) == 2 + 3

    from mapo.cli.app import main as mapo_main

    with pytest.raises(SystemExit) as done:
        mapo_main(["summary", str(sweep)])
    assert done.value.code == 0
    assert "not complete: judge.strategy=independent" in capsys.readouterr().out
    assert main(["summary", str(sweep)]) == 0  # the old spelling
    assert "not complete: judge.strategy=independent" in capsys.readouterr().out
