"""``mapo reparse``: re-parsing stored raw texts reproduces the stored verdicts (no model call)
and picks up changed texts, for evaluate (judge, both orders, jury, debate), winrate and build runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapo.core.config import CascadeConfig, ClientConfig, JudgeConfig, PromptSourceConfig, RolesConfig, RunConfig
from mapo.judging.strategy import split_sides
from mapo.runs.build import build
from mapo.runs.evaluate import evaluate
from mapo.runs.reparse import main, reparse_run
from tests.conftest import fake_model
from tests.runs.test_evaluate import write_items


def eval_config(server, tmp_path: Path, run: str, **kw) -> RunConfig:
    cfg = RunConfig(
        models={n: fake_model(server, served_name=n) for n in ("j1", "j2", "j3")},
        roles=RolesConfig(judge="j1", jurors=["j1", "j2", "j3"], debaters=["j1"]),
        eval_data={"loader": "local", "path": str(write_items(tmp_path / "items.jsonl", 4))},
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / run),
        max_items_in_flight=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def rewrite(path: Path, fn) -> None:
    recs = lines(path)
    path.write_text("".join(json.dumps(fn(r)) + "\n" for r in recs))


@pytest.mark.parametrize(
    "kw",
    [
        {"judge": JudgeConfig(strategy="direct", both_orders=True)},
        {"judge": JudgeConfig(strategy="combined", both_orders=True)},
        {"judge": JudgeConfig(strategy="independent")},
        {"evaluator": "jury", "judge": JudgeConfig(both_orders=True)},
        {"evaluator": "debate", "judge": JudgeConfig(both_orders=True)},
    ],
    ids=["direct", "combined", "independent", "jury", "debate"],
)
async def test_reparse_reproduces_stored_verdicts(fake_server, tmp_path, kw):
    await evaluate(eval_config(fake_server, tmp_path, "run", **kw))
    sent = fake_server.n
    summary = reparse_run(tmp_path / "run")
    assert fake_server.n == sent
    c = summary["judgements.jsonl"]
    assert c["records"] > 0 and c["changed"] == 0 and c["scores_changed"] == 0 and c["notes"] == 0
    reparsed = lines(tmp_path / "run" / "reparsed.jsonl")
    stored = lines(tmp_path / "run" / "judgements.jsonl")
    assert [r["key"] for r in reparsed] == [r["key"] for r in stored]
    assert [r["label"] for r in reparsed] == [r["label"] for r in stored]
    assert [r["pick"] for r in reparsed] == [r["pick"] for r in stored]


async def test_a_changed_raw_text_changes_the_verdict_and_the_jury(fake_server, tmp_path):
    await evaluate(eval_config(fake_server, tmp_path, "run", evaluator="jury", judge=JudgeConfig(strategy="direct")))
    path = tmp_path / "run" / "judgements.jsonl"
    target = next(r for r in lines(path) if r["kind"] == "juror" and r["label"] == "model_a")
    jury_before = next(r for r in lines(path) if r["kind"] == "jury" and r["item_id"] == target["item_id"])

    def edit(r):
        if r["key"] == target["key"]:
            r["detail"]["attempts"][0]["raw"] = ["### Evaluation Evidence:\nrethought\n\n### Answer:\nB"]
        return r

    rewrite(path, edit)
    summary = reparse_run(tmp_path / "run")
    out = {r["key"]: r for r in lines(tmp_path / "run" / "reparsed.jsonl")}
    juror = out[target["key"]]
    assert juror["label"] == "model_b" and juror["pick"] == "B" and juror["reparse"]["changed"]
    assert juror["reparse"]["before"]["label"] == "model_a"
    jury = out[jury_before["key"]]
    assert jury["detail"]["members"][target["judge"]] == "model_b"
    assert summary["judgements.jsonl"]["changed"] == 1 + (jury["label"] != jury_before["label"])


async def test_a_jury_is_combined_again_by_the_live_rule(fake_server, tmp_path):
    """mapo reparse combines re-parsed jurors with the jury's own rule (judging.jury.combine_jurors): every
    juror unparseable -> the live failure text; a stored old tie_break spelling (``first``) is read."""
    cfg = eval_config(fake_server, tmp_path, "run", evaluator="jury", judge=JudgeConfig(strategy="direct"))
    cfg.jury.aggregate = "majority"
    await evaluate(cfg)
    path = tmp_path / "run" / "judgements.jsonl"
    item = lines(path)[0]["item_id"]

    def edit(r):
        if r["kind"] == "juror" and r["item_id"] == item:
            r["detail"]["attempts"][0]["raw"] = ["no idea"]
        if r["kind"] == "jury":
            r["detail"]["tie_break"] = "first"
        return r

    rewrite(path, edit)
    reparse_run(tmp_path / "run")
    out = [r for r in lines(tmp_path / "run" / "reparsed.jsonl") if r["kind"] == "jury"]
    failed = next(r for r in out if r["item_id"] == item)
    assert failed["label"] is None and failed["failure"] == "every juror failed (3/3)"
    assert failed["detail"]["n_failed"] == 3
    assert all(r["label"] is not None for r in out if r["item_id"] != item)


async def test_unparseable_text_becomes_a_failure_never_a_tie(fake_server, tmp_path):
    await evaluate(eval_config(fake_server, tmp_path, "run"))
    path = tmp_path / "run" / "judgements.jsonl"
    first = lines(path)[0]["key"]

    def edit(r):
        if r["key"] == first:
            r["detail"]["attempts"][0]["raw"] = ["no scores at all", "still nothing"]
        return r

    rewrite(path, edit)
    summary = reparse_run(tmp_path / "run")
    assert summary["judgements.jsonl"]["failures_after"] == 1 and summary["judgements.jsonl"]["changed"] == 1
    rec = lines(tmp_path / "run" / "reparsed.jsonl")[0]
    assert rec["label"] is None and rec["failure"]


async def test_build_run_selections_and_generations(fake_server, tmp_path, capsys):
    cfg = RunConfig(
        models={n: fake_model(fake_server, served_name=n) for n in ("gen", "rev", "judge")},
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=3),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "build"),
    )
    await build(cfg)
    summary = reparse_run(tmp_path / "build")
    assert summary["selections.jsonl"]["changed"] == 0 and summary["generations.jsonl"]["reviews_changed"] == 0

    def edit(r):
        r["iterations"][0]["reviews"][0]["raw"] = [
            "### Evaluation:\nfine\n\n### Overall Score:\n9.9/10\n\n### Feedback:\nnone"
        ]
        return r

    rewrite(tmp_path / "build" / "generations.jsonl", edit)
    assert main([str(tmp_path / "build")]) == 0
    out = capsys.readouterr().out
    assert "selections.jsonl: 3 records, 0 verdicts changed" in out
    assert "(3 of 9 review scores)" in out
    gens = [r for r in lines(tmp_path / "build" / "reparsed.jsonl") if r["reparse"]["file"] == "generations.jsonl"]
    assert all(g["iterations"][0]["reviews"][0]["score"] == 9.9 for g in gens)


async def test_every_record_kind_is_in_the_reparsed_file(fake_server, tmp_path):
    """A kind without a re-parse rule (a cascade's own record, whose raw texts are its strong judge's) is
    kept as stored with a note saying so, never left out of reparsed.jsonl (it was, before the record-kind
    traits: only judge/juror/jury/debate/winrate and raw-less records came back)."""
    cfg = eval_config(fake_server, tmp_path, "run", evaluator="cascade", judge=JudgeConfig(both_orders=True))
    cfg.roles.strong_judge = "j2"
    cfg.cascade = CascadeConfig(max_margin=10)  # every item escalates: the cascade's record keeps raw texts
    await evaluate(cfg)
    stored = lines(tmp_path / "run" / "judgements.jsonl")
    assert any(r["kind"] == "cascade" and r["raw"] for r in stored)
    summary = reparse_run(tmp_path / "run")
    reparsed = lines(tmp_path / "run" / "reparsed.jsonl")
    assert [r["key"] for r in reparsed] == [r["key"] for r in stored]
    assert summary["judgements.jsonl"]["records"] == len(stored)
    for old, new in zip(stored, reparsed, strict=True):
        assert (new["label"], new["failure"]) == (old["label"], old["failure"])
        if old["kind"] == "cascade":
            assert new["reparse"]["note"] == "kind cascade: no re-parse rule for its raw texts; kept"


def test_main_on_a_folder_without_records(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no judgements.jsonl, selections.jsonl or generations.jsonl" in capsys.readouterr().err


def testsplit_sides():
    ok, bad = "### Overall Score:\n7/10", "no score"
    assert split_sides([ok, ok], 10) == 1
    assert split_sides([bad, ok, ok], 10) == 2  # A re-asked once
    assert split_sides([ok, bad, ok], 10) == 1  # B re-asked once
    assert split_sides([bad, bad, bad], 10) is None  # ambiguous: kept as stored


def _expected_record(order: str = "AB") -> dict:
    """A judge record of a judge.scoring=expected run (combined, out of 10) whose attempt kept the
    distributions at its two scores: A written 8 (P(8)=0.5, P(9)=0.5), B written 6 (P(6)=0.75, P(4)=0.25)."""
    import math

    raw = "### Score Assistant A:\n8/10\n\n### Score Assistant B:\n6/10"
    dists = [
        {"value": "score_a", "prefix": "", "token": "8", "top": {"8": math.log(0.5), "9": math.log(0.5)}, "next": None},
        {
            "value": "score_b",
            "prefix": "",
            "token": "6",
            "top": {"6": math.log(0.75), "4": math.log(0.25)},
            "next": None,
        },
    ]
    weighted = {"pick": "A", "score_a": 8.5, "score_b": 5.5, "failure": None}
    written = {"pick": "A", "score_a": 8.0, "score_b": 6.0, "failure": None}
    sa, sb = (5.5, 8.5) if order == "BA" else (8.5, 5.5)
    return {
        "key": f"i1|j1|combined10+expected|v1|sha|{order}",
        "item_id": "i1",
        "evaluator": "judge",
        "kind": "judge",
        "judge": "j1",
        "models": ["j1"],
        "member_of": None,
        "setup": "combined10+expected",
        "strategy": "combined",
        "scale": 10,
        "version": 1,
        "order": order,
        "prompt_sha": "sha",
        "pick": "A",
        "label": "model_a" if order == "AB" else "model_b",
        "score_a": sa,
        "score_b": sb,
        "failure": None,
        "human": "model_a",
        "raw": [raw],
        "detail": {
            "attempts": [
                {
                    "order": "AB",
                    "raw": [raw],
                    "verdict": weighted,
                    "scoring": "expected",
                    "argmax": written,
                    "logprobs": dists,
                }
            ]
        },
    }


@pytest.mark.parametrize("order", ["AB", "BA"])
def test_reparse_keeps_expected_scoring_from_the_stored_logprobs(tmp_path, order):
    """An attempt that kept logprobs is re-weighed from them, not turned back into the written (argmax) scores."""
    rec = _expected_record(order)
    (tmp_path / "judgements.jsonl").write_text(json.dumps(rec) + "\n")
    c = reparse_run(tmp_path)["judgements.jsonl"]
    assert (c["changed"], c["scores_changed"], c["notes"]) == (0, 0, 0)
    (out,) = lines(tmp_path / "reparsed.jsonl")
    assert (out["score_a"], out["score_b"], out["label"]) == (rec["score_a"], rec["score_b"], rec["label"])
    attempt = out["detail"]["attempts"][0]
    assert attempt["verdict"]["score_a"] == pytest.approx(8.5) and attempt["verdict"]["score_b"] == pytest.approx(5.5)
    assert attempt["argmax"]["score_a"] == 8.0 and attempt["scoring"] == "expected"


def test_reparse_of_an_expected_attempt_weighs_the_re_parsed_text(tmp_path):
    """A changed text is re-parsed (its argmax); the verdict is still the kept distributions' expectation;
    an attempt that kept none keeps the written value, as the judge does live."""
    rec = _expected_record()
    attempt = rec["detail"]["attempts"][0]
    attempt["raw"] = rec["raw"] = ["### Score Assistant A:\n9/10\n\n### Score Assistant B:\n6/10"]
    no_lp = _expected_record()
    no_lp["key"], no_lp["item_id"] = no_lp["key"].replace("i1", "i2"), "i2"
    a2 = no_lp["detail"]["attempts"][0]
    del a2["logprobs"]
    a2["scoring"], a2["verdict"] = "argmax: the server sent no logprobs", a2["argmax"]
    no_lp["score_a"], no_lp["score_b"] = 8.0, 6.0
    (tmp_path / "judgements.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(no_lp) + "\n")
    reparse_run(tmp_path)
    out = {r["item_id"]: r for r in lines(tmp_path / "reparsed.jsonl")}
    first = out["i1"]["detail"]["attempts"][0]
    assert first["argmax"]["score_a"] == 9.0 and first["verdict"]["score_a"] == pytest.approx(8.5)
    second = out["i2"]
    assert (second["score_a"], second["score_b"]) == (8.0, 6.0)
    assert second["detail"]["attempts"][0]["scoring"] == "argmax: the server sent no logprobs"
