"""The main job on the in-process fake server (fast); the real-vLLM run is tests/test_e2e_vllm.py."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from aiohttp import web

from mapo.core.config import ClientConfig, ConfigError, PromptSourceConfig, RolesConfig, RunConfig
from mapo.runs.build import build
from mapo.runs.runner import run_pool
from tests.conftest import fake_model
from tests.fake_openai import FakeServer


def run_config(server, tmp_path, **kw) -> RunConfig:
    models = {name: fake_model(server) for name in ("gen", "rev", "rev2", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=6),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_build_writes_every_record_once(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path)
    manifest = await build(cfg)
    run = tmp_path / "run"
    sels = lines(run / "selections.jsonl")
    assert len({s["key"] for s in sels}) == 6
    gens = lines(run / "generations.jsonl")
    assert all(len(g["iterations"]) == 3 for g in gens)
    dpo = lines(run / "dpo.jsonl")
    kto = lines(run / "kto.jsonl")
    decided = [s for s in sels if s["best"] is not None]
    assert len(kto) == 3 * len(decided)
    assert manifest["rows"]["kto"] == len(kto) and manifest["rows"]["dpo"] == len(dpo)
    assert manifest["items"]["done"] == 6
    roles = {u["role"] for u in manifest["usage"]}
    assert roles == {"generator", "reviewer", "judge"}


async def test_rerun_resumes_without_requests(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path)
    await build(cfg)
    sent = fake_server.completed
    before = (tmp_path / "run" / "dpo.jsonl").read_text()
    manifest = await build(run_config(fake_server, tmp_path))
    assert fake_server.completed == sent
    assert manifest["throughput"]["requests"] == 0
    assert (tmp_path / "run" / "dpo.jsonl").read_text() == before


async def test_two_reviewers_use_the_double_feedback_message(fake_server, tmp_path):
    cfg = run_config(
        fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=["rev", "rev2"], judge="judge")
    )
    await build(cfg)
    gens = lines(tmp_path / "run" / "generations.jsonl")
    assert all(len(it["reviews"]) == 2 for g in gens for it in g["iterations"])


async def test_unknown_role_model_fails_before_any_call(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=["rev"], judge="nobody"))
    with pytest.raises(ConfigError, match="roles.judge='nobody'"):
        await build(cfg)
    assert fake_server.n == 0


async def test_run_pool_bounds_in_flight_and_propagates_errors():
    live = peak = 0

    async def work(i):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1
        if i == 30:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run_pool(range(100), work, 5)
    assert peak == 5


async def test_run_pool_starts_lanes_only_for_items_that_exist():
    # a run with a model on the Batch API is 50,000 items wide; over 7 items it must stay 7 tasks
    seen: list[int] = []
    lanes = 0

    async def work(i):
        nonlocal lanes
        seen.append(i)
        lanes = max(lanes, len(asyncio.all_tasks()))
        await asyncio.sleep(0.01)

    await run_pool(range(7), work, 50_000)
    assert sorted(seen) == list(range(7)) and lanes <= 7 + 2  # a lane per item, one that finds none, the test


class CuttingServer(FakeServer):
    """Answers generator requests (the default responder's "Response <n>: ..." texts) whose n is
    odd with ``finish_reason: length``, as a server does when max_tokens cuts the text."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        response = await super()._chat(request)
        if not isinstance(response, web.Response) or response.status != 200 or response.body is None:
            return response
        payload = json.loads(bytes(response.body))  # type: ignore[arg-type]
        text = payload["choices"][0]["message"]["content"] or ""
        if text.startswith("Response ") and int(text.split()[1].rstrip(":")) % 2:
            payload["choices"][0]["finish_reason"] = "length"
        return web.json_response(payload)


async def test_each_response_keeps_its_finish_reason_and_the_manifest_counts_the_cut_ones(tmp_path):
    with CuttingServer() as server:
        manifest = await build(run_config(server, tmp_path))
        again = await build(run_config(server, tmp_path))  # from the cache: the same finish reasons
    reasons = [it["finish_reason"] for g in lines(tmp_path / "run" / "generations.jsonl") for it in g["iterations"]]
    assert set(reasons) == {"stop", "length"}
    assert manifest["truncated_responses"] == reasons.count("length") == again["truncated_responses"]


async def test_manifest_and_card_carry_the_dataset_quality_indicators(fake_server, tmp_path):
    from mapo.metrics.dataset_quality import dataset_quality_of_run

    manifest = await build(run_config(fake_server, tmp_path))
    run = tmp_path / "run"
    q = manifest["quality"]
    assert q == dataset_quality_of_run(run) and q["items"]["dpo_pairs"] == manifest["rows"]["dpo"]
    assert {"length", "chosen_iteration", "margin", "order_consistency", "duplicates", "reviewer_scores"} <= set(q)
    assert json.loads((run / "manifest.json").read_text())["quality"] == q
    card = (run / "dataset" / "dpo" / "README.md").read_text()
    assert "## Dataset quality" in card and "chosen/rejected length ratio" in card


@pytest.mark.parametrize(
    "families, roles, warned",
    [
        ({"judge": "gemma", "gen": "gemma"}, {}, ["gen"]),  # the generator's family
        ({"judge": "llama", "rev": "llama"}, {}, ["rev"]),  # a reviewer's family
        ({"judge": "gpt"}, {}, []),  # another family
        ({}, {}, []),  # no family: each model is its own
        ({}, {"judge": "gen"}, ["gen"]),  # the judge generated them
    ],
)
async def test_build_warns_when_the_judge_shares_a_family_with_a_candidate(
    fake_server, tmp_path, caplog, families, roles, warned
):
    from mapo.runs.build import _warn_family_judging

    cfg = run_config(fake_server, tmp_path)
    for name, family in families.items():
        cfg.models[name].family = family
    if roles:
        cfg.roles = RolesConfig(generator="gen", reviewers=["rev"], **roles)
    with caplog.at_level("WARNING", logger="mapo.runs.build"):
        assert _warn_family_judging(cfg) == warned
    assert ("family-preference bias" in caplog.text) == bool(warned)


def test_every_shipped_model_names_its_family():
    from omegaconf import OmegaConf

    from tests.conftest import REPO

    families = {
        name: spec.get("family")
        for path in sorted((REPO / "conf" / "model").glob("*.yaml"))
        for name, spec in OmegaConf.to_container(OmegaConf.load(path)).items()
    }
    assert families and all(families.values()), families
    assert families["gemma-2-27b"] == families["gemma3-270m"] == "gemma"


async def test_max_length_ratio_shows_its_effect_in_the_manifest(fake_server, tmp_path):
    from mapo.core.config import SelectionConfig

    free = await build(run_config(fake_server, tmp_path / "free"))
    capped = await build(run_config(fake_server, tmp_path / "capped", selection=SelectionConfig(max_length_ratio=1.0)))
    length = capped["pairs"]["length"]
    assert length["max_length_ratio"] == 1.0 and free["pairs"]["length"]["max_length_ratio"] is None
    assert length["before"]["pairs"] > 0, length
    assert length["before"]["pairs"] == free["pairs"]["length"]["before"]["pairs"] == free["pairs"]["pairs_written"]
    assert length["after"]["pairs"] == capped["pairs"]["pairs_written"] == capped["rows"]["dpo"]
    assert capped["pairs"]["length_ratio_skipped"] == length["before"]["pairs"] - length["after"]["pairs"]
    for r in lines(tmp_path / "capped" / "run" / "dpo.jsonl"):  # no chosen response longer than its rejected one
        assert len(r["chosen"][0]["content"]) <= len(r["rejected"][0]["content"])
    card = tmp_path / "capped" / "run" / "dataset" / "dpo" / "README.md"
    assert not card.exists() or "selection.max_length_ratio 1.0" in card.read_text()


async def test_build_selects_with_any_registered_evaluator(fake_server, tmp_path):
    """evaluator=jury: best-of-N through the registry (judging.evaluators.from_config), the jurors asked, the
    selections and rows naming the jury; its roles and sections join the fingerprint (the default's do not)."""
    from mapo.core.config import JuryConfig

    cfg = run_config(fake_server, tmp_path, evaluator="jury", jury=JuryConfig(aggregate="majority"))
    cfg.models["judge2"] = fake_model(fake_server)
    cfg.roles.jurors = ["judge", "judge2", "rev2"]
    manifest = await build(cfg)
    run = tmp_path / "run"
    sels = lines(run / "selections.jsonl")
    assert manifest["items"]["done"] == 6 and {j["judge"] for s in sels for j in s["judgements"]} == {
        "jury[judge+judge2+rev2]"
    }
    assert all(len(j["members"]) == 3 for s in sels for j in s["judgements"])
    assert {r["judge"] for r in lines(run / "dpo.jsonl")} <= {"jury[judge+judge2+rev2]"}
    fp = json.loads((run / "fingerprint.json").read_text())
    keys = fp.get("keys", fp)
    assert keys["evaluator"] == "jury" and keys["roles.jurors"] == ["judge", "judge2", "rev2"]
    assert keys["jury.aggregate"] == "majority"


async def test_a_jury_pick_made_while_a_juror_failed_is_selected_again_and_only_its_last_rows_are_published(
    tmp_path,
):
    """evaluator=jury (majority, tie_break=first_juror): j1 prefers the incumbent, j2 and j3 the challenger, and
    every request of j3 is rejected (400) in the first run. Each pick is then made without j3 (j1 decides:
    iteration 0): the run completes with its rows written, each selection marked ``incomplete`` and counted in
    ``items.incomplete``. Before the fix such a selection counted as done: no rerun asked j3 again. Now the rerun
    with j3 healthy selects again from the stored generations (nothing regenerated, j1 and j2 answered by the
    response cache, only j3 asked), picks the last iteration, and dpo/kto (JSONL and published) hold exactly a
    healthy run's rows: none of the first verdict's, none twice."""
    import pyarrow.parquet as pq

    from mapo.core.config import JuryConfig
    from tests.fake_openai import default_responder

    jurors, broken, sent = ["j1", "j2", "j3"], {"on": True}, []

    def responder(body: dict) -> str:
        if "Score Assistant A" not in json.dumps(body["messages"]):
            return default_responder(body)
        a, b = (9, 1) if body["model"] == "j1" else (1, 9)
        return f"### Evaluation Evidence:\nfine.\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"

    def faults(n: int, body: dict):
        sent.append(body["model"])
        if broken["on"] and body["model"] == "j3":
            return (400, {"error": {"message": "prompt is too long for this model", "code": 400}})
        return None

    def config(server: FakeServer, out: str = "run") -> RunConfig:
        cfg = run_config(
            server, tmp_path, evaluator="jury", jury=JuryConfig(aggregate="majority", tie_break="first_juror")
        )
        cfg.models.update({j: fake_model(server, served_name=j) for j in jurors})
        cfg.roles.jurors = jurors
        cfg.client.preflight = False  # j3's probes would stop the first run before any item
        cfg.output_dir = str(tmp_path / out)
        return cfg

    run = tmp_path / "run"
    with FakeServer(responder=responder, faults=faults) as server:
        first = await build(config(server))
        first_sels = {s["key"]: s for s in lines(run / "selections.jsonl")}
        first_dpo = {r["key"] for r in lines(run / "dpo.jsonl")}
        broken["on"], sent[:] = False, []  # j3 is fixed
        fixed = await build(config(server))
        asked = list(sent)
        sent.clear()
        again = await build(config(server))
        assert not sent, f"a rerun of a complete run sent requests: {sent}"
        healthy = await build(config(server, "healthy"))  # the reference: j3 healthy from the start

    assert first["status"] == "complete" and first["items"]["failed"] == 0
    assert first["items"]["incomplete"] == len(first_sels) == 6, first["items"]
    for s in first_sels.values():
        assert s["best"] == 0 and s["incomplete"].startswith("1 of 3 jurors failed (j3: request rejected"), s
    assert first["rows"]["dpo"] > 0 and first["rows"]["kto"] > 0, "a pick without j3 still writes its rows"

    sels = lines(run / "selections.jsonl")
    last = {s["key"]: s for s in sels}
    assert len(sels) == 2 * len(last), "one more selection record per incomplete item, none for the others"
    assert all(s["best"] == 2 and "incomplete" not in s for s in last.values()), last
    # j3 on every comparison; j1 and j2 only on those the first verdict never made (its pick changed the path)
    pairs = lambda s: [(j["a"], j["b"]) for j in s["judgements"]]  # noqa: E731
    new = sum(p not in pairs(first_sels[k]) for k, s in last.items() for p in pairs(s))
    judged = sum(len(s["judgements"]) for s in last.values())
    assert 0 < new < judged and Counter(asked) == {"j3": judged, "j1": new, "j2": new}, Counter(asked)
    for m in (fixed, again):
        assert m["status"] == "complete" and m["items"]["failed"] == 0 and m["items"]["incomplete"] == 0, m["items"]
    assert fixed["items"]["resumed_done"] == 0 and again["items"]["resumed_done"] == 6

    want = {name: {r["key"]: r for r in lines(tmp_path / "healthy" / f"{name}.jsonl")} for name in ("dpo", "kto")}
    for name in ("dpo", "kto"):
        rows = lines(run / f"{name}.jsonl")
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)), f"{name}: a row written twice"
        assert {r["key"]: r for r in rows} == want[name], f"{name}: not the rows of the last selections"
        published = pq.read_table(run / "dataset" / f"{name}.parquet", columns=["key"]).column("key").to_pylist()
        assert published == keys and again["rows"][name] == len(keys) == healthy["rows"][name]
    assert not first_dpo & set(want["dpo"]), "the first verdict's pairs are gone"
    kto = lines(run / "kto.jsonl")
    assert {r["prompt_id"] for r in kto if r["label"]} == set(last) and all(
        r["iteration"] == 2 for r in kto if r["label"]
    )
