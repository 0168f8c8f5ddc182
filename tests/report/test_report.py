"""``mapo report`` and ``mapo leaderboard`` on run folders made by the real pipeline (build,
evaluate, winrate) against the in-process fake server, plus the authors' FairEval outputs."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mapo.cli import main as cli_main
from mapo.core.config import ClientConfig, JudgeConfig, PromptSourceConfig, RolesConfig, RunConfig, WinrateConfiguration
from mapo.report import leaderboard
from mapo.report import render as report
from mapo.runs.build import build
from mapo.runs.evaluate import agreement_tables, evaluate
from mapo.runs.winrate import winrate
from tests.conftest import fake_model, shared_dir
from tests.fake_openai import FakeServer, default_responder

PNG = b"\x89PNG\r\n\x1a\n"
INJECT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> ```` a | b </details> '
LABELS = ["model_a", "model_b", "tie", "model_a", "model_b", "model_a", "model_b", "model_a"]


def responder(request: dict) -> str:
    """The fake server's replies, varied per model (jurors disagree) and with hostile markup
    in every generated response (the report must show it as text)."""
    varied = {"messages": [{"role": "user", "content": request.get("model", "")}, *request["messages"]]}
    text = default_responder(varied)
    return INJECT + text if text.startswith("Response ") else text


@pytest.fixture
def server():
    with FakeServer(responder=responder) as s:
        yield s


def _client(tmp_path: Path) -> ClientConfig:
    return ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off")


def build_run(server: FakeServer, tmp_path: Path, name: str = "build", limit: int = 6) -> Path:
    models = {n: fake_model(server, served_name=n) for n in ("gen", "rev", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=limit),
        client=_client(tmp_path),
        output_dir=str(tmp_path / name),
        max_items_in_flight=4,
    )
    asyncio.run(build(cfg))
    return tmp_path / name


def write_items(path: Path, n: int = 8) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": f"Question {i}? {INJECT}",
                        "response_a": f"Answer A to {i}.",
                        "response_b": f"Answer B to {i}, longer.",
                        "human": LABELS[i % len(LABELS)],
                    }
                )
                + "\n"
            )
    return path


def evaluate_run(
    server: FakeServer,
    tmp_path: Path,
    evaluator: str = "jury",
    name: str = "eval",
    items: Path | None = None,
    both_orders: bool = True,
) -> Path:
    models = {n: fake_model(server, served_name=n) for n in ("j1", "j2", "j3")}
    items = items or write_items(tmp_path / "items.jsonl")
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(judge="j1", jurors=["j1", "j2", "j3"], debaters=["j1", "j2", "j3"]),
        judge=JudgeConfig(both_orders=both_orders),
        evaluator=evaluator,
        eval_data={"loader": "local", "path": str(items)},
        client=_client(tmp_path),
        output_dir=str(tmp_path / name),
        max_items_in_flight=4,
    )
    asyncio.run(evaluate(cfg))
    return tmp_path / name


def winrate_run(server: FakeServer, tmp_path: Path, name: str = "winrate") -> Path:
    models = {n: fake_model(server, served_name=n) for n in ("gen", "rev", "base1", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(judge="judge", baselines=["base1"]),
        configurations=[
            WinrateConfiguration(name="gen+rev", generator="gen", reviewers=["rev"]),
            WinrateConfiguration(name="gen alone", generator="gen", reviewers=[]),
        ],
        prompts=PromptSourceConfig(source="builtin", limit=4),
        client=_client(tmp_path),
        output_dir=str(tmp_path / name),
        max_items_in_flight=4,
    )
    asyncio.run(winrate(cfg))
    return tmp_path / name


def md_name(name: str) -> str:
    """A name as report.md writes it: brackets and underscores escaped (``jury\\[j1+j2\\]``), so no link can form."""
    return name.replace("[", "\\[").replace("]", "\\]").replace("_", "\\_")


def md_kappa(e: dict) -> str:
    """An entry's kappa with its interval as report.md writes it: ``0.389 \\[0.227, 0.546\\]``."""
    from mapo.report.document import ci

    return md_name(ci(e["kappa"], e.get("kappa_ci")))


def img_payloads(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def check_files(paths: dict[str, Path]) -> tuple[str, str]:
    page = paths["html"].read_text(encoding="utf-8")
    md = paths["md"].read_text(encoding="utf-8")
    pngs = sorted(paths["figures"].glob("*.png"))
    assert pngs, "figures are saved beside the report"
    embedded = img_payloads(page)
    assert len(embedded) == len(pngs), "every figure is embedded, once"
    assert sorted(hashlib.sha256(b).hexdigest() for b in embedded) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs
    )
    assert all(b.startswith(PNG) for b in embedded)
    for p in pngs:
        assert f"](figures/{p.name})" in md
    assert 'src="http' not in page and "<link" not in page, "self-contained: nothing fetched"
    return page, md


# --------------------------------------------------------------------------- build runs


def test_build_report_shows_roles_costs_trajectories_selection_and_examples(server, tmp_path):
    run = build_run(server, tmp_path)
    paths = report.write_report(run)
    assert paths["html"] == run / "report" / "report.html"
    page, md = check_files(paths)
    names = {p.stem for p in paths["figures"].glob("*.png")}
    assert {"score_trajectories", "selection", "tokens_per_role"} <= names
    manifest = json.loads((run / "manifest.json").read_text())
    for section in (
        "Models per role",
        "Score trajectories over feedback iterations",
        "Selection: which iteration was chosen",
        "Failures",
        "Example chosen / rejected pairs",
        "Costs: tokens and time per role",
        "Config",
    ):
        assert section in page and f"## {section}" in md
    for u in manifest["usage"]:  # every (role, model) with its tokens
        total = u["prompt_tokens"] + u["completion_tokens"]
        assert re.search(rf"<td>{u['role']}</td><td>{u['model']}</td>.*?{total:,}", page)
    # selection counts match selections.jsonl
    sels = [json.loads(x) for x in (run / "selections.jsonl").read_text().splitlines()]
    for i in range(3):
        chosen = sum(s["best"] == i for s in sels)
        assert f"| {i + 1} | {chosen} |" in md
    # per-iteration mean reviewer score in the table equals the records'
    gens = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    mean1 = sum(g["iterations"][0]["score"] for g in gens) / len(gens)
    assert f"{mean1:.3f}" in md


def test_model_text_is_escaped_never_markup(server, tmp_path):
    run = build_run(server, tmp_path)
    page, md = check_files(report.write_report(run))
    assert "<script" not in page, "a response's <script> must not reach the page as markup"
    assert "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert page.count("<details") == page.count("</details>"), "a response's </details> cannot close ours"
    # Markdown: the response's ```` run sits inside a longer fence
    block = md.split("## Example chosen / rejected pairs")[1]
    assert "`````text" in block


HOSTILE_ID = "[x](javascript:alert(1))"
LIVE_LINK = re.compile(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\((?!#|figures/)")  # [text](url) other than ours


def test_markdown_of_a_hostile_prompt_id_and_response_is_literal_text(server, tmp_path):
    """A prompt id like ``[x](javascript:alert(1))`` is data: report.md shows it, never links it."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": HOSTILE_ID, "prompt": "Say hi."}, {"id": "<b>*bold*</b> _it_ ![i](http://e/x.png)", "prompt": "Hi?"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = {n: fake_model(server, served_name=n) for n in ("gen", "rev", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="file", path=str(prompts), id_column="id"),
        client=_client(tmp_path),
        output_dir=str(tmp_path / "run"),
    )
    asyncio.run(build(cfg))
    _, md_text = check_files(report.write_report(tmp_path / "run"))
    assert not LIVE_LINK.search(md_text), LIVE_LINK.search(md_text)
    assert "**\\[x\\](javascript:alert(1))**" in md_text, "the id is shown, escaped, as an example title"
    assert "<b>" not in md_text and "![i](" not in md_text
    assert "&lt;b>\\*bold\\*&lt;/b> \\_it\\_ \\!\\[i\\](http://e/x.png)" in md_text


def test_markdown_escape_covers_every_inline_construct():
    from mapo.report.document import Document, Example, Section, Table, Text, md_escape, render_markdown

    assert md_escape(HOSTILE_ID) == "\\[x\\](javascript:alert(1))"
    assert md_escape("a|b\nc `code` <https://x> &amp;") == "a\\|b c \\`code\\` &lt;https://x> \\&amp;"
    assert md_escape("# title", line_start=True) == "\\# title" and md_escape("# t") == "\\# t".replace("\\", "")
    assert md_escape("1. item", line_start=True) == "1\\. item"
    assert md_escape(1234.5) == "1,234.500" and md_escape(None) == "–"
    doc = Document(
        HOSTILE_ID,
        HOSTILE_ID,
        [
            Section(
                HOSTILE_ID, [Text(HOSTILE_ID), Text("> quoted " + HOSTILE_ID), Table([HOSTILE_ID], [[HOSTILE_ID]])]
            ),
            Section("examples", [Example(HOSTILE_ID, [(HOSTILE_ID, HOSTILE_ID)])]),
        ],
    )
    text = render_markdown(doc)
    assert not LIVE_LINK.search(text.replace("```text\n" + HOSTILE_ID + "\n```", ""))  # only inside a code fence
    assert "\n\\> quoted" in text, "a paragraph cannot open a block quote"


def test_cli_report_and_sweep_folder(server, tmp_path):
    run = build_run(server, tmp_path / "sweep", name="0")
    build_run(server, tmp_path / "sweep", name="1", limit=3)
    with pytest.raises(SystemExit) as e:
        cli_main(["report", str(run), "--out", str(tmp_path / "out")])
    assert e.value.code == 0
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "report.md").exists()
    assert report.main([str(tmp_path / "sweep")]) == 0  # no manifest: one report per run inside
    assert (tmp_path / "sweep" / "0" / "report" / "report.html").exists() and (
        tmp_path / "sweep" / "1" / "report" / "report.html"
    ).exists()
    assert report.main([str(tmp_path / "nothing-here")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2


def test_stopped_run_with_a_torn_line_still_reports(server, tmp_path):
    run = build_run(server, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "stopped"
    (run / "manifest.json").write_text(json.dumps(manifest))
    lines = (run / "selections.jsonl").read_text().splitlines(keepends=True)
    (run / "selections.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # killed mid-write
    page, md = check_files(report.write_report(run))
    assert "This run is not complete (status: stopped)" in page
    assert "| prompts selected | 2 |" in md
    (run / "manifest.json").unlink()  # killed before any manifest: told apart by its files
    page, _ = check_files(report.write_report(run))
    assert "mapo build" in page


def test_a_damaged_middle_line_is_named_and_skipped(server, tmp_path, caplog):
    """The report reads through mapo.core.store; a line the store refuses costs that record only."""
    run = build_run(server, tmp_path)
    lines = (run / "selections.jsonl").read_text().splitlines(keepends=True)
    (run / "selections.jsonl").write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[3:]))
    with caplog.at_level("WARNING"):
        _, md_text = check_files(report.write_report(run))
    assert f"| prompts selected | {len(lines) - 1} |" in md_text
    assert "selections.jsonl:3: unreadable record" in caplog.text and "skipped" in caplog.text


def test_winrate_run_and_winrate_json_in_a_build_run(server, tmp_path):
    wr = winrate_run(server, tmp_path)
    page, md = check_files(report.write_report(wr))
    table = json.loads((wr / "winrate.json").read_text())["table"]
    cell = table["gen+rev"]["base1"]
    lo, hi = cell["win_rate_ci"]
    assert f"| gen+rev | base1 | {100 * cell['win_rate']:.1f}% \\[{100 * lo:.1f}, {100 * hi:.1f}\\] |" in md
    assert "Δ win rate vs reference" in md and "| gen alone | base1 |" in md
    assert "Score trajectories per configuration" in page and "Example comparisons" in page
    assert "&lt;script&gt;" in page and "<script" not in page
    run = build_run(server, tmp_path)
    (run / "winrate.json").write_text((wr / "winrate.json").read_text())
    page, _ = check_files(report.write_report(run))
    assert "Win rate against baselines" in page and (run / "report" / "figures" / "winrate.png").exists()


# --------------------------------------------------------------------------- evaluate runs


def test_jury_evaluation_report_kappa_subsets_confusion_position_bias(server, tmp_path):
    run = evaluate_run(server, tmp_path, "jury")
    paths = report.write_report(run)
    page, md = check_files(paths)
    agreement = json.loads((run / "agreement.json").read_text())
    for e in agreement["results"]:
        assert e["kappa_ci"][0] <= e["kappa"] <= e["kappa_ci"][1]
        assert f"| {md_name(e['judge'])} | {e['kind']} | {md_name(e['setup'])} | {md_kappa(e)} |" in md
    names = {p.stem for p in paths["figures"].glob("*.png")}
    assert {"kappa", "confusion", "position_bias", "jury_subsets_jury_j1_j2_j3"} <= names
    assert "Jury subsets: jury[j1+j2+j3]" in page and "Parse failures" in page
    best = agreement["jury_subsets"][0]["subsets"][0]
    assert f"| {' + '.join(best['members'])} | {len(best['members'])} | {md_kappa(best)} |" in md


def test_evaluation_report_recomputes_agreement_of_a_stopped_run(server, tmp_path):
    run = evaluate_run(server, tmp_path, "judge", both_orders=False)
    expected = json.loads((run / "agreement.json").read_text())["results"][0]
    (run / "agreement.json").unlink()
    page, md = check_files(report.write_report(run))
    assert "agreement.json is missing" in page
    assert f"| {expected['judge']} | judge | combined10 | {md_kappa(expected)} |" in md
    assert "judged in one order only" not in md  # no position-bias section without both orders
    assert "Position bias" not in page.split("<nav>")[1].split("</nav>")[0]


def test_debate_report(server, tmp_path):
    run = evaluate_run(server, tmp_path, "debate", both_orders=False)
    page, md = check_files(report.write_report(run))
    main = json.loads((run / "agreement.json").read_text())["results"][0]
    assert main["kind"] == "debate"
    assert f"| {md_name(main['judge'])} | debate | {md_name(main['setup'])} | {md_kappa(main)} |" in md
    assert "mapo evaluate: debate[j1+j2+j3]" in page


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_judges_by_datasets_from_a_sweep(server, tmp_path):
    sweep = tmp_path / "sweep"
    a = write_items(tmp_path / "setA.jsonl", 8)
    b = write_items(tmp_path / "setB.jsonl", 6)
    evaluate_run(server, sweep, "jury", name="0", items=a)
    evaluate_run(server, sweep, "jury", name="1", items=b)
    evaluate_run(server, sweep, "judge", name="2", items=a)  # j1 again on setA: deduplicated
    build_run(server, sweep, name="3")  # not an evaluation: ignored
    out = tmp_path / "lb"
    assert leaderboard.main([str(sweep), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").read_text().splitlines()))
    keys = [(r["dataset"], r["judge"], r["setup"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    run_entries = [r for r in rows if r["selected"] != "True"]
    assert len(run_entries) == 2 * 4, keys  # 3 jurors + the jury, on 2 datasets
    selected = [r for r in rows if r["selected"] == "True"]  # and the best subset of each jury, flagged
    assert len(selected) == 2 and all(r["kind"] == "jury" and r["selection_corrected"] for r in selected)
    assert {r["dataset"] for r in rows} == {"local:setA", "local:setB"}
    j1 = next(r for r in rows if r["judge"] == "j1" and r["dataset"] == "local:setA")
    assert j1["kind"] == "judge", "a judge run wins over the same model as a juror"
    agreement = json.loads((sweep / "0" / "agreement.json").read_text())
    jury = next(e for e in agreement["results"] if e["kind"] == "jury")
    row = next(r for r in rows if r["judge"] == jury["judge"] and r["dataset"] == "local:setA")
    assert float(row["kappa"]) == pytest.approx(jury["kappa"], abs=1e-6)
    assert float(row["first_rate"]) == pytest.approx(jury["position_bias"]["first_rate"], abs=1e-6)
    recs = [json.loads(x) for x in (sweep / "0" / "judgements.jsonl").read_text().splitlines()]
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs if r["kind"] == "jury")
    assert int(row["tokens"]) == tokens > 0
    wide = list(csv.reader((out / "leaderboard_wide.csv").read_text().splitlines()))
    assert wide[0][:4] == ["judge (setup)", "kind", "kappa local:setA", "kappa local:setB"]
    assert len(wide) == 1 + 4 + len({(r["judge"], r["setup"]) for r in selected})
    page, md = (out / "leaderboard.html").read_text(), (out / "leaderboard.md").read_text()
    assert len(img_payloads(page)) == 1 and "](figures/kappa_matrix.png)" in md
    assert leaderboard.main([str(tmp_path / "sweep" / "3")]) == 2  # no evaluate runs there
    with pytest.raises(SystemExit) as e:
        cli_main(["leaderboard", str(sweep / "0"), "--out", str(tmp_path / "lb2")])
    assert e.value.code == 0 and (tmp_path / "lb2" / "leaderboard.csv").exists()


# --------------------------------------------------------------------------- real data: the authors' FairEval outputs


def test_report_and_leaderboard_of_the_authors_faireval_judgements(tmp_path):
    """The six judges of the paper on FairEval, as judgements.jsonl records: the report shows the
    published best jury (kappa 0.428) in its subset table and heatmap."""
    shared = shared_dir()
    if shared is None or not (shared / "data" / "faireval" / "mapo-judgments").is_dir():
        pytest.skip("shared data absent: ../shared/data/faireval (set MAPO_SHARED)")
    from mapo.data.humans import load_faireval
    from mapo.data.importers import load_author_judgments

    humans = {r["id"]: r["human"] for r in load_faireval(shared / "data" / "faireval" / "fair_eval.jsonl")}
    judges = load_author_judgments(shared / "data" / "faireval" / "mapo-judgments", "multi-rater10")
    jury = "jury[" + "+".join(sorted(judges)) + "]"
    records = []
    for judge, recs in judges.items():
        for r in recs:
            records.append(
                {
                    "key": f"{r.index}|{judge}",
                    "item_id": str(r.index),
                    "kind": "juror",
                    "judge": judge,
                    "member_of": jury,
                    "models": [judge],
                    "setup": "combined10",
                    "order": "AB",
                    "pick": None,
                    "label": r.parsed_label,
                    "score_a": r.parsed[0] if r.parsed else None,
                    "score_b": r.parsed[1] if r.parsed else None,
                    "failure": None if r.parsed else "unparsed",
                    "human": humans[str(r.index)],
                    "raw": list(r.texts),
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                }
            )
    run = tmp_path / "faireval"
    run.mkdir()
    with open(run / "judgements.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    tables = agreement_tables(records)
    (run / "agreement.json").write_text(
        json.dumps(
            {"eval_data": {"loader": "faireval", "n_items": 80}, "evaluator": "jury", "orders": ["AB"], **tables}
        )
    )
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "command": "evaluate",
                "status": "complete",
                "evaluator": "jury",
                "judge": jury,
                "roles": {"jurors": sorted(judges)},
                "eval_data": {"loader": "faireval"},
            }
        )
    )
    _, md = check_files(report.write_report(run))
    assert "| gemma-2-27b + gemma-2-9b + gpt-4o-mini + llama31-8b | 4 | 0.428 \\[" in md
    assert "| gpt-4o | juror | combined10 | 0.327 \\[" in md  # paper Table: GPT-4o 0.327 on FairEval
    assert leaderboard.main([str(run), "--out", str(tmp_path / "lb")]) == 0
    rows = {r["judge"]: r for r in csv.DictReader((tmp_path / "lb" / "leaderboard.csv").read_text().splitlines())}
    assert float(rows["gemma-2-9b"]["kappa"]) == pytest.approx(0.279, abs=5e-4)


def test_failures_are_counted_in_the_report(tmp_path):
    """Reviewers and judges that answer off-format: the report counts each failure by stage."""

    def flaky(request: dict) -> str:
        text = responder(request)
        digest = int(hashlib.sha256(json.dumps(request["messages"]).encode()).hexdigest(), 16)
        return "I cannot decide; both are fine." if not text.startswith(INJECT) and digest % 3 == 0 else text

    with FakeServer(responder=flaky) as s:
        run = build_run(s, tmp_path, limit=8)
    _, md = check_files(report.write_report(run))
    gens = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    sels = [json.loads(x) for x in (run / "selections.jsonl").read_text().splitlines()]
    review_failures = sum(1 for g in gens for it in g["iterations"] for r in it["reviews"] if r["failure"])
    judge_failures = sum(1 for sel in sels for j in sel["judgements"] if j["failure"])
    assert review_failures and judge_failures, "the script makes both kinds fail"
    section = md.split("## Failures")[1].split("\n## ")[0]
    counted: Counter = Counter()
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) == 3 and cells[2].isdigit():
            counted[cells[0].split()[0]] += int(cells[2])  # stage: reviewer / judge / selection
    assert counted["reviewer"] == review_failures and counted["judge"] == judge_failures, (counted, section)
    assert counted["selection"] == sum(1 for sel in sels if sel["best"] is None)
    per_iter = md.split("## Score trajectories over feedback iterations")[1].split("\n## ")[0]
    assert (
        sum(int(r.strip("|").split("|")[-1]) for r in per_iter.splitlines() if r.startswith("| reviewer rev |"))
        == review_failures
    )
