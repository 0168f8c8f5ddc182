from __future__ import annotations

import json

import pytest

from mapo.core.config import ConfigError, SelectionConfig
from mapo.generation.dataset import (
    DatasetError,
    DatasetMismatch,
    RowCounts,
    RowError,
    _check_published,
    _validate_row,
    rows_for,
    save_datasets,
)
from mapo.generation.selection import Loss


def test_rows_pair_chosen_with_each_rejected():
    dpo, kto, counts = rows_for("p1", "Q?", ["a", "b", "c"], [5.0, 7.0, None], 1, generator="g", judge="j")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo] == [("b", "a"), ("b", "c")]
    assert [r["label"] for r in kto] == [False, True, False]
    assert dpo[0]["prompt"] == [{"role": "user", "content": "Q?"}]
    assert counts.identical_pairs_skipped == 0 and counts.pairs_written == 2 and counts.kto_rows == 3


def test_identical_rejected_is_skipped_and_counted():
    dpo, kto, counts = rows_for("p1", "Q?", ["same", "same ", "other"], [1, 2, 3], 0, generator="g", judge="j")
    assert counts.identical_pairs_skipped == 1 and len(dpo) == 1
    # one text, one KTO label: the chosen one's (it was desirable and undesirable at once before)
    assert [(r["iteration"], r["label"]) for r in kto] == [(0, True), (2, False)] and counts.duplicate_kto_skipped == 1


def test_identical_rows_are_written_once_and_counted():
    """Issue 25: iterations 1 and 2 were the same text, so rows 0>1 and 0>2 were byte-identical."""
    dpo, kto, counts = rows_for(
        "p", "Q?", ["best", "again", "again", "other"], [9, 8, 8, 7], 0, generator="g", judge="j"
    )
    assert [(r["chosen_iteration"], r["rejected_iteration"]) for r in dpo] == [(0, 1), (0, 3)]
    assert counts.duplicate_pairs_skipped == 1 and counts.pairs_written == 2
    assert [r["iteration"] for r in kto] == [0, 1, 3] and counts.duplicate_kto_skipped == 1
    assert counts.to_dict()["duplicate_pairs_skipped"] == 1
    rows = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo]
    assert len(rows) == len(set(rows))


def test_score_columns_are_the_scores_that_decided():
    """chosen_score / rejected_score come from the deciding comparison (expected scores when the judge
    weighs logprobs), the written scores and the reviewer's scores in their own columns."""
    losses = {
        1: Loss(0, True, 0.71, None, 9.6, 8.89, 10.0, 10.0),  # expected 9.60 vs 8.89, both written as 10
        2: Loss(1, True, 0.4, None, 9.0, 8.6, 9.0, 9.0),  # lost to 1 in a tournament round
    }
    dpo, _, _ = rows_for("p", "Q?", ["a", "b", "c"], [10.0, 10.0, 9.5], 0, generator="g", judge="j", losses=losses)
    r1, r2 = dpo
    assert (r1["chosen_score"], r1["rejected_score"], r1["margin"]) == (9.6, 8.89, 0.71)
    assert (r1["chosen_written_score"], r1["rejected_written_score"]) == (10.0, 10.0)
    assert (r1["chosen_review_score"], r1["rejected_review_score"], r1["decided_by_iteration"]) == (10.0, 10.0, 0)
    assert r2["decided_by_iteration"] == 1 and r2["chosen_score"] > r2["rejected_score"]
    for r in dpo:
        assert r["decisive"] and r["chosen_score"] > r["rejected_score"]


def test_empty_text_is_rejected():
    with pytest.raises(RowError, match="chosen"):
        rows_for("p1", "Q?", ["", "b"], [1, 2], 0, generator="g", judge="j")
    with pytest.raises(RowError, match="label"):
        _validate_row(
            {
                "key": "k",
                "prompt": [{"role": "user", "content": "x"}],
                "completion": [{"role": "assistant", "content": "y"}],
                "label": 1,
            },
            ("prompt", "completion", "label"),
        )


# ---- a preference needs a decision ---------------------------------------------------

# a tournament over 4 responses: 0 vs 1 tie (1 out by a tie), 0 vs 2: 2 wins by 3, 2 vs 3: 2 wins by 1
LOSSES = {1: Loss(0, False, 0.0, "equal_scores"), 0: Loss(2, True, 3.0), 3: Loss(2, True, 1.0)}
TEXTS = ["r0", "r1", "r2", "r3"]


def test_a_tie_gives_no_pair_and_no_label():
    dpo, kto, counts = rows_for("p", "Q?", TEXTS, [1, 2, 3, 4], 2, generator="g", judge="j", losses=LOSSES)
    assert [(r["chosen_iteration"], r["rejected_iteration"], r["margin"]) for r in dpo] == [(2, 0, 3.0), (2, 3, 1.0)]
    assert all(r["decisive"] for r in dpo)
    assert [(r["iteration"], r["label"]) for r in kto] == [(0, False), (2, True), (3, False)]
    assert counts.ties_dropped == {"equal_scores": 1} and counts.pairs_written == 2 and counts.items_with_pairs == 1


def test_no_decisive_comparison_gives_nothing():
    ties = {1: Loss(0, False, 0.0, "equal_scores"), 2: Loss(0, False, None, "orders_disagree")}
    dpo, kto, counts = rows_for("p", "Q?", TEXTS[:3], [1, 1, 1], 0, generator="g", judge="j", losses=ties)
    assert dpo == [] and kto == []  # the best is not desirable without a decision either
    assert counts.items_without_pairs == 1 and counts.ties_dropped == {"equal_scores": 1, "orders_disagree": 1}


def test_on_tie_keep_is_the_papers_behaviour_marked():
    dpo, kto, counts = rows_for(
        "p", "Q?", TEXTS, [1, 2, 3, 4], 2, generator="g", judge="j", losses=LOSSES, on_tie="keep"
    )
    legacy, legacy_kto, _ = rows_for("p", "Q?", TEXTS, [1, 2, 3, 4], 2, generator="g", judge="j")
    assert [r["key"] for r in dpo] == [r["key"] for r in legacy] == ["p/2>0", "p/2>1", "p/2>3"]
    assert [r["label"] for r in kto] == [r["label"] for r in legacy_kto]
    assert [r["decisive"] for r in dpo] == [True, False, True] and counts.ties_kept == 1
    with pytest.raises(ConfigError, match=r"selection.on_tie='maybe'; allowed: drop, keep"):
        SelectionConfig(on_tie="maybe").check()  # type: ignore[arg-type]  # checked where the config is built, not per row


def test_a_pick_only_judge_gives_no_margin():
    picks = {1: Loss(0, True, None)}
    dpo, _, _ = rows_for("p", "Q?", ["a", "b"], [None, None], 0, generator="g", judge="j", losses=picks)
    assert dpo[0]["margin"] is None and dpo[0]["decisive"] is True


def test_truncated_responses_are_left_out_and_counted():
    reasons = ["stop", "length", "stop", None]  # None: the server said nothing (not truncated)
    dpo, kto, counts = rows_for(
        "p", "Q?", TEXTS, [1, 2, 3, 4], 2, generator="g", judge="j", losses=LOSSES, finish_reasons=reasons
    )
    assert 1 not in {r["rejected_iteration"] for r in dpo} and 1 not in {r["iteration"] for r in kto}
    assert counts.truncated_excluded == 1 and counts.ties_dropped == {}  # the tie was the truncated one
    keep, kkto, counts = rows_for(
        "p", "Q?", TEXTS, [1, 2, 3, 4], 2, generator="g", judge="j", finish_reasons=reasons, allow_truncated=True
    )
    assert [r["rejected_truncated"] for r in keep] == [False, True, False]
    assert [r["truncated"] for r in kkto] == [False, True, False, False] and counts.truncated_excluded == 0


def test_row_counts_add_up():
    total = RowCounts()
    for losses in (LOSSES, {1: Loss(0, False, 0.0, "judge_tie")}):
        total.add(rows_for("p", "Q?", TEXTS[:2] if len(losses) == 1 else TEXTS, [1] * 4, 2 if len(losses) > 1 else 0,
                           generator="g", judge="j", losses=losses)[2])  # fmt: skip
    assert total.to_dict() == {
        "items_with_pairs": 1,
        "items_without_pairs": 1,
        "pairs_written": 2,
        "kto_rows": 3,
        "ties_dropped": 2,
        "ties_dropped_by_reason": {"equal_scores": 1, "judge_tie": 1},
        "ties_kept": 0,
        "identical_pairs_skipped": 0,
        "duplicate_pairs_skipped": 0,
        "duplicate_kto_skipped": 0,
        "truncated_excluded": 0,
        "length_ratio_skipped": 0,
    }


# ---- the published datasets equal the JSONL ---------------------------------------------


def _append(run, ids, **kw):
    for i in ids:
        d, k, _ = rows_for(f"p{i}", "Q?", ["a", "b", "c"], [None, 2, 3.5], 1, generator="g", judge="j", **kw)
        for name, rows in (("dpo", d), ("kto", k)):
            with open(run / f"{name}.jsonl", "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)


def _published_keys(run, name):
    import datasets
    import pyarrow.parquet as pq

    saved = datasets.load_from_disk(str(run / "dataset" / name))["train"]["key"]
    parquet = pq.read_table(run / "dataset" / f"{name}.parquet", columns=["key"]).column("key").to_pylist()
    return saved, parquet


def _jsonl_keys(run, name):
    return [json.loads(x)["key"] for x in (run / f"{name}.jsonl").read_text().splitlines()]


def test_a_republish_after_more_rows_is_not_stale(tmp_path):
    """Regression: the Arrow cache was keyed by path, so the second save published the first rows."""
    pytest.importorskip("datasets")
    _append(tmp_path, range(2))
    assert save_datasets(tmp_path) == {"dpo": 4, "kto": 6}
    _append(tmp_path, range(2, 5))
    counts = save_datasets(tmp_path)
    assert counts == {"dpo": 10, "kto": 15}
    for name in ("dpo", "kto"):
        saved, parquet = _published_keys(tmp_path, name)
        assert saved == parquet == _jsonl_keys(tmp_path, name)
    assert not list(tmp_path.glob(".hf-*"))  # no scratch left behind


def test_check_published_names_a_stale_artifact(tmp_path):
    pytest.importorskip("datasets")
    _append(tmp_path, range(2))
    save_datasets(tmp_path)
    _append(tmp_path, [7])  # rows the published dataset does not hold yet
    with pytest.raises(DatasetMismatch, match=r"dataset/dpo does not match .*dpo.jsonl: it has 4 rows"):
        _check_published(tmp_path)
    save_datasets(tmp_path)
    assert _check_published(tmp_path) == {"dpo": 6, "kto": 9}


def test_an_emptied_jsonl_leaves_no_stale_artifact(tmp_path):
    pytest.importorskip("datasets")
    _append(tmp_path, range(2))
    save_datasets(tmp_path)
    (tmp_path / "dpo.jsonl").write_text("")
    with pytest.raises(DatasetMismatch, match="holds no rows"):
        _check_published(tmp_path)
    assert save_datasets(tmp_path) == {"dpo": 0, "kto": 6}
    assert not (tmp_path / "dataset" / "dpo").exists() and not (tmp_path / "dataset" / "dpo.parquet").exists()


def test_schema_is_fixed_and_old_rows_get_nulls(tmp_path):
    """A null score first and floats later, and rows without the newer columns, publish fine."""
    datasets = pytest.importorskip("datasets")
    _append(tmp_path, range(1))
    old = {"key": "old/1>0", "prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "x"}],
           "rejected": [{"role": "assistant", "content": "y"}], "prompt_id": "old", "chosen_iteration": 1,
           "rejected_iteration": 0, "chosen_score": 5, "rejected_score": None}  # fmt: skip
    with open(tmp_path / "dpo.jsonl", "a") as fh:
        fh.write(json.dumps(old) + "\n")
    save_datasets(tmp_path)
    ds = datasets.load_from_disk(str(tmp_path / "dataset" / "dpo"))["train"]
    # no losses given: no deciding scores (None), the reviewer's in their own column; the old row keeps its own
    assert ds["chosen_score"] == [None, None, 5.0] and ds["margin"] == [None, None, None]
    assert ds["chosen_review_score"] == [2.0, 2.0, None]
    assert ds.features["rejected_score"].dtype == "float64"


def test_an_unknown_column_is_refused_not_dropped(tmp_path):
    pytest.importorskip("datasets")
    _append(tmp_path, range(1))
    row = json.loads((tmp_path / "kto.jsonl").read_text().splitlines()[0])
    with open(tmp_path / "kto.jsonl", "a") as fh:
        fh.write(json.dumps({**row, "key": "x/0", "surprise": 1}) + "\n")
    with pytest.raises(DatasetError, match=r"kto.jsonl:4: columns \['surprise'\]"):
        save_datasets(tmp_path)


def test_trl_accepts_the_rows(tmp_path):
    """TRL's own data preparation runs on our rows (training itself is not needed)."""
    datasets = pytest.importorskip("datasets")
    trl_utils = pytest.importorskip("trl.data_utils")
    dpo, kto, _ = rows_for("p1", "Say hi.", ["hello", "hi there", "hey"], [5, 6, 7], 2, generator="g", judge="j")
    for name, rows in (("dpo", dpo), ("kto", kto)):
        with open(tmp_path / f"{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    counts = save_datasets(tmp_path)
    assert counts == {"dpo": 2, "kto": 3}
    ds = datasets.load_from_disk(str(tmp_path / "dataset" / "dpo"))["train"]
    assert trl_utils.is_conversational(ds[0])
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    row = trl_utils.maybe_apply_chat_template(ds[0], tokenizer)
    assert row["prompt"].startswith("<user>Say hi.") and row["chosen"].startswith("hey")
    kto_ds = datasets.load_from_disk(str(tmp_path / "dataset" / "kto"))["train"]
    krow = trl_utils.maybe_apply_chat_template(kto_ds[0], tokenizer)
    assert "completion" in krow and isinstance(kto_ds[0]["label"], bool)


def test_a_damaged_middle_line_is_named(tmp_path):
    pytest.importorskip("datasets")
    _append(tmp_path, range(2))
    text = (tmp_path / "dpo.jsonl").read_text().splitlines(keepends=True)
    text[1] = text[1][:30] + "\n"
    (tmp_path / "dpo.jsonl").write_text("".join(text))
    with pytest.raises(DatasetError, match=r"dpo.jsonl:2: not a JSON record"):
        save_datasets(tmp_path)


def test_a_value_of_the_wrong_type_is_named(tmp_path):
    pytest.importorskip("datasets")
    _append(tmp_path, range(1))
    row = json.loads((tmp_path / "kto.jsonl").read_text().splitlines()[0])
    with open(tmp_path / "kto.jsonl", "a") as fh:
        fh.write(json.dumps({**row, "key": "x/0", "score": "high"}) + "\n")
    with pytest.raises(DatasetError, match=r"kto.jsonl:1-4: a value does not fit the dataset schema"):
        save_datasets(tmp_path)


def test_max_length_ratio_keeps_long_winners_out_and_says_what_it_did():
    """A pair whose chosen answer is over max_length_ratio times longer is not written; the counts say
    how the length ratio and the pair count changed."""
    from mapo.generation.dataset import length_summary

    texts = ["x" * 300, "y" * 100, "z" * 250, "w" * 280]  # the chosen 0 is 3x, 1.2x and ~1.07x as long
    dpo, _, counts = rows_for("p", "Q?", texts, [1, 2, 3, 4], 0, generator="g", judge="j", max_length_ratio=1.5)
    assert [r["rejected_iteration"] for r in dpo] == [2, 3] and counts.length_ratio_skipped == 1
    summary = length_summary(counts.length, 1.5)
    assert summary["before"]["pairs"] == 3 and summary["after"]["pairs"] == 2 == counts.pairs_written
    assert summary["before"]["length_ratio_geomean"] == pytest.approx((3.0 * 1.2 * 300 / 280) ** (1 / 3))
    assert summary["after"]["length_ratio_geomean"] < summary["before"]["length_ratio_geomean"]
    assert summary["after"]["chosen_longer_share"] == 1.0
    unlimited, _, c2 = rows_for("p", "Q?", texts, [1, 2, 3, 4], 0, generator="g", judge="j")
    assert len(unlimited) == 3 and c2.length_ratio_skipped == 0
