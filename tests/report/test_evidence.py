"""mapo/report/evidence.py: the evaluated items read offline, the one reader the report and the viewer share."""

from __future__ import annotations

import json

import pytest

from mapo.report.evidence import ItemsOnHub, ItemsUnreadable, eval_spec, offline_items


def test_items_on_the_hub_are_not_fetched():
    with pytest.raises(ItemsOnHub, match="^pandalm$"):
        offline_items({"loader": "pandalm"})


def test_a_missing_local_file_is_unreadable_naming_it(tmp_path):
    with pytest.raises(ItemsUnreadable, match="gone.jsonl"):
        offline_items({"loader": "local", "path": str(tmp_path / "gone.jsonl")})


def test_a_local_file_gives_its_rows_and_path(tmp_path):
    path = tmp_path / "items.jsonl"
    row = {"id": "q1", "question": "Q?", "response_a": "a", "response_b": "bb", "human": "model_b"}
    path.write_text(json.dumps(row) + "\n")
    rows, read = offline_items({"loader": "local", "path": str(path)})
    assert read == path and [dict(r) for r in rows] == [row]


def test_eval_spec_prefers_config_yaml_and_falls_back_to_the_manifest(tmp_path):
    assert eval_spec(tmp_path, "eval_data:\n  loader: local\n  path: x.jsonl\n", {}) == {
        "loader": "local",
        "path": "x.jsonl",
    }
    assert eval_spec(tmp_path, None, {"eval_data": {"loader": "faireval", "n_items": 80}}) == {"loader": "faireval"}
    assert eval_spec(tmp_path, "not: [yaml", {}) is None
