"""``mapo view``: the rows and items it serves (build, evaluate, agreement, winrate), what it refuses,
and the command line. The page itself in Chromium: tests/view/test_view_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mapo.cli.agreement import main as agreement_main
from mapo.view.data import load_views, word_diff
from mapo.view.server import serve
from tests.report.test_report import build_run, evaluate_run, server, winrate_run  # noqa: F401 - server is a fixture


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def disagreements(recs: list[dict], kinds: tuple[str, ...] = ("judge", "jury", "debate")) -> set[str]:
    """Items where an evaluator's verdict (its two orders combined: orders that disagree make a tie)
    is not the human label; written out here, independently of the viewer."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        if r["kind"] in kinds:
            by.setdefault((r["item_id"], r["judge"]), []).append(r)
    out = set()
    for (item, _), rs in by.items():
        labels = [r["label"] for r in rs if r["label"] is not None]
        if not labels:
            continue
        verdict = labels[0] if len(set(labels)) == 1 else "tie"
        if verdict != rs[0]["human"]:
            out.add(item)
    return out


def get(url: str, host: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_word_diff_marks_only_changed_words():
    d = word_diff("the cat sat on the mat", "the cat lay on the red mat")
    assert "".join(t for _, t in d["rejected"]) == "the cat sat on the mat"
    assert "".join(t for _, t in d["chosen"]) == "the cat lay on the red mat"
    assert [t.strip() for c, t in d["chosen"] if c and t.strip()] == ["lay", "red"]
    assert [t.strip() for c, t in d["rejected"] if c and t.strip()] == ["sat"]


def test_build_rows_say_why_a_prompt_gave_no_pair(server, tmp_path):  # noqa: F811
    run = build_run(server, tmp_path)
    views, _ = load_views([run])
    (view,) = views
    rows = {r["id"]: r for r in view.rows()}
    sels = {s["key"]: s for s in records(run / "selections.jsonl")}
    dpo = records(run / "dpo.jsonl")
    assert set(rows) == set(sels)
    for key, row in rows.items():
        pairs = [p for p in dpo if p["prompt_id"] == key]
        assert row["pairs"] == len(pairs)
        assert row["f_decisive"] == bool(pairs)
        if pairs:
            assert row["margin"] == max(p["margin"] for p in pairs)
        else:
            assert row["outcome"] in ("tie", "failed", "no pair") and row["reason"]
        assert row["best"] == sels[key]["best"] + 1
    # the run has a dropped tie (manifest ties_dropped): a prompt without a decisive pair for it says so
    manifest = json.loads((run / "manifest.json").read_text())
    if manifest["pairs"]["items_without_pairs"]:
        assert any(r["f_tie"] for r in rows.values())
    key = next(iter(rows))
    item = view.item(key)
    assert item is not None and item["generation"]["key"] == key
    assert item["selection"]["judgements"][0]["attempts"][0]["raw"], "the judge's raw text is in the item"
    assert all(p["diff"]["chosen"] for p in item["pairs"])


def test_evaluate_runs_join_item_by_item_with_one_column_per_evaluator(server, tmp_path):  # noqa: F811
    jury = evaluate_run(server, tmp_path, "jury", name="jury")
    judge = evaluate_run(server, tmp_path, "judge", name="judge")
    views, refs = load_views([tmp_path])  # a sweep folder: both runs, found under it
    assert {r.label for r, _ in refs} == {"jury", "judge"}
    (view,) = views
    # jurors are inside the jury's item, not columns of their own
    assert [c["title"] for c in view.columns[3:]] == ["judge: j1", "jury: jury[j1+j2+j3]"]
    recs = records(jury / "judgements.jsonl") + records(judge / "judgements.jsonl")
    main = [r for r in recs if r["kind"] in ("judge", "jury")]
    want_disagree = disagreements(recs)
    labels: dict[tuple[str, str], set[str]] = {}
    for r in main:
        if r["label"] is not None:
            labels.setdefault((r["item_id"], r["judge"]), set()).add(r["label"])
    want_inconsistent = {item for (item, _), seen in labels.items() if len(seen) > 1}
    rows = {r["id"]: r for r in view.rows()}
    assert {i for i, r in rows.items() if r["f_disagree"]} == want_disagree
    assert {i for i, r in rows.items() if r["f_inconsistent"]} == want_inconsistent
    assert {i for i, r in rows.items() if r["f_disagree_e0"]} == disagreements(recs, ("judge",))
    assert {f["id"] for f in view.filters} == {
        "disagree",
        "inconsistent",
        "failed",
        "split",
        "disagree_e0",
        "disagree_e1",
    }
    item = view.item("q0")
    assert item and item["question"].startswith("Question 0?") and item["response_b"] == "Answer B to 0, longer."
    by_name = {e["judge"]: e for e in item["evaluators"]}
    assert set(by_name) == {"j1", "jury[j1+j2+j3]"}
    jury_ev = by_name["jury[j1+j2+j3]"]
    assert {r["order"] for r in jury_ev["records"]} == {"AB", "BA"}
    assert jury_ev["records"][0]["detail"]["members"], "the jury's votes"
    assert {j["judge"] for j in jury_ev["jurors"]} == {"j1", "j2", "j3"} and all(j["raw"] for j in jury_ev["jurors"])
    raw = next(r["raw"][0] for r in recs if r["item_id"] == "q0" and r["kind"] == "judge" and r["order"] == "AB")
    assert raw in [t for r in by_name["j1"]["records"] for t in r["raw"]]
    assert view.item("no-such-item") is None


def test_debate_transcript_and_agreement_output(server, tmp_path):  # noqa: F811
    debate = evaluate_run(server, tmp_path, "debate", name="debate")
    agr = tmp_path / "agreement.json"
    assert agreement_main([str(debate), "--n-resamples", "2000", "--out", str(agr)]) == 0
    views, refs = load_views([agr])
    assert [r.command for r, _ in refs] == ["agreement"]
    (view,) = views
    item = view.item("q1")
    assert item is not None
    (ev,) = item["evaluators"]
    turns = ev["records"][0]["detail"]["utterances"]
    assert len(turns) >= 3 and all(t["text"] for t in turns)


def test_winrate_verdicts_are_listed_with_both_responses(server, tmp_path):  # noqa: F811
    run = winrate_run(server, tmp_path)
    (view,) = load_views([run])[0]
    rows = view.rows()
    assert len(rows) == len(records(run / "judgements.jsonl"))
    assert {"configuration", "baseline", "label"} <= {c["field"] for c in view.columns}
    item = view.item(rows[0]["id"])
    assert item and all(text for _, text in item["texts"])


def test_server_is_read_only_local_and_sets_a_csp(server, tmp_path):  # noqa: F811
    run = evaluate_run(server, tmp_path, "judge", name="judge")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    srv = serve([run]).start()
    try:
        assert srv.server_address[0] == "127.0.0.1"
        status, headers, body = get(srv.url)
        assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"].split("style-src")[0]
        assert b"<script>" not in body and b'src="http' not in body, "no inline script, no CDN"
        status, _, _ = get(srv.url, host="attacker.example:80")
        assert status == 403, "DNS rebinding: a foreign Host is refused"
        status, _, body = get(srv.url + "api/item?view=evaluate&id=q0")
        assert status == 200 and json.loads(body)["id"] == "q0"
        for bad in ("static/../data.py", "static/%2e%2e%2fdata.py", "r/0/report/../manifest.json", "api/rows?view=x"):
            assert get(srv.url + bad)[0] == 404, bad
        status, _, _ = get(srv.url + "static/tabulator.min.js")
        assert status == 200
    finally:
        srv.close()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before, "the viewer writes nothing into the run"


def test_command_line_prints_the_address_and_refuses_a_non_run(server, tmp_path):  # noqa: F811
    run = build_run(server, tmp_path)
    cmd = [sys.executable, "-m", "mapo", "view", str(tmp_path / "nothing-here")]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapo", "view", str(run), "--no-open"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        status, _, body = get(m.group(1) + "api/views")
        assert status == 200 and json.loads(body)["views"][0]["kind"] == "build"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_viewer_imports_no_model_stack(tmp_path):
    code = (
        "import sys, mapo.view.server, mapo.view.data; "
        "print([m for m in ('torch', 'vllm', 'transformers', 'trl') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", ["static/index.html", "static/view.js"])
def test_the_page_puts_no_text_into_markup(path):
    """Model text reaches the page through textContent only: the script never assigns markup."""
    text = (Path(__file__).resolve().parents[2] / "mapo" / "view" / path).read_text()
    assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text
    assert "eval(" not in text and "document.write" not in text


def test_report_examples_link_to_the_viewer(server, tmp_path):  # noqa: F811
    from mapo.report import render as report

    run = evaluate_run(server, tmp_path, "judge", name="judge")
    page = report.write_report(run)["html"].read_text()
    links = re.findall(r'<a class="view-link" href="([^"]+)"', page)
    assert links and all(link.startswith("../view.html#item=") for link in links)
    disagree = disagreements(records(run / "judgements.jsonl"))
    assert {link.removeprefix("../view.html#item=") for link in links} <= disagree
    srv = serve([run]).start()  # the served report: its links resolve to the viewer page
    try:
        status, headers, body = get(srv.url + "r/0/report/report.html")
        assert status == 200 and "script-src 'none'" in headers["Content-Security-Policy"]
        assert get(srv.url + "r/0/view.html")[0] == 200
        assert json.loads(get(srv.url + "api/views")[2])["runs"][0]["report"] == "/r/0/report/report.html"
    finally:
        srv.close()


def test_train_metrics_are_listed(tmp_path):
    run = tmp_path / "train"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "train", "status": "complete"}))
    rows = [{"split": "train", "step": s, "epoch": s / 4, "loss": 0.7 - s / 100, "learning_rate": 1e-5} for s in (1, 2)]
    rows.append({"split": "summary", "step": 2, "epoch": 0.5, "train_runtime": 3.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (view,) = load_views([run])[0]
    assert view.kind == "train" and [c["field"] for c in view.columns][:5] == ["id", "split", "step", "epoch", "loss"]
    assert [r["loss"] for r in view.rows()] == [rows[0]["loss"], rows[1]["loss"], None]
    item = view.item(view.rows()[2]["id"])
    assert item and item["record"]["train_runtime"] == 3.2


def test_the_authors_agreement_output(tmp_path):
    """``mapo agreement --authors`` on FairEval (shared data): 80 items, the human label, one column per judge."""
    from tests.conftest import shared_dir

    shared = shared_dir()
    if shared is None or not (shared / "data" / "faireval" / "mapo-judgments").is_dir():
        pytest.skip("shared data absent: ../shared/data/faireval (set MAPO_SHARED)")
    faireval = shared / "data" / "faireval"
    out = tmp_path / "agr.json"
    args = ["--authors", str(faireval / "mapo-judgments"), "--humans", str(faireval / "fair_eval.jsonl")]
    assert agreement_main([*args, "--n-resamples", "2000", "--out", str(out)]) == 0
    (view,) = load_views([out])[0]
    rows = view.rows()
    assert len(rows) == 80 and all(r["human"] in ("A", "B", "tie") for r in rows)
    names = [c["title"] for c in view.columns[3:]]
    assert "gpt-4o" in names and any(n.startswith("debate[") for n in names)
    gpt4o = next(c["field"] for c in view.columns if c["title"] == "gpt-4o")
    assert 0 < sum(r[f"f_disagree_{gpt4o}"] for r in rows) < 80
    item = view.item(rows[0]["id"])
    assert item and item["question"] and {e["judge"] for e in item["evaluators"]} >= {"gpt-4o"}
