"""mapo.data.sources: text mapo cannot encode is bad input, named by file and line; a BOM is fine."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from mapo.core.config import ConfigError, PromptSourceConfig
from mapo.core.types import Conversation
from mapo.data.sources import SourceStats, iter_prompts, validate_prompts

# json.dumps writes a lone surrogate as the valid JSON escape "\ud800"; json.loads turns it back
# into a Python str that UTF-8 cannot encode
SURROGATE_PROMPT = json.dumps({"id": "bad", "prompt": "Say \ud800 twice."})
SURROGATE_ID = json.dumps({"id": "x\udfff", "prompt": "Fine text."})


def write(path: Path, lines: list[str], *, bom: bool = False) -> Path:
    data = "\n".join(lines).encode("utf-8") + b"\n"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return path


def good(i: int) -> str:
    return json.dumps({"id": f"p{i}", "prompt": f"Name a colour ({i})."})


@pytest.mark.parametrize(
    "bad,line,what",
    [(SURROGATE_PROMPT, 2, "prompt is not valid Unicode"), (SURROGATE_ID, 3, "id is not valid Unicode")],
)
def test_a_lone_surrogate_is_an_input_error_naming_file_and_line(tmp_path, bad, line, what):
    lines = [good(1), good(2), good(3)]
    lines.insert(line - 1, bad)
    path = write(tmp_path / "p.jsonl", lines)
    with pytest.raises(ConfigError, match=rf"p\.jsonl:{line}: {what} \(a lone surrogate at character \d+"):
        validate_prompts(PromptSourceConfig(source="file", path=str(path)))


def test_a_lone_surrogate_is_skipped_and_counted_when_asked(tmp_path):
    path = write(tmp_path / "p.jsonl", [good(1), SURROGATE_PROMPT, SURROGATE_ID, good(2)])
    stats = SourceStats()
    items = list(iter_prompts(PromptSourceConfig(source="file", path=str(path), on_invalid="skip"), stats))
    assert [i.id for i in items] == ["p1", "p2"]
    for item in items:
        item.prompt.encode("utf-8")  # everything kept can be sent and stored
    assert stats.skipped == 2
    assert stats.reasons == {"prompt is not valid Unicode": 1, "id is not valid Unicode": 1}


def test_a_jsonl_file_starting_with_a_utf8_bom_is_read(tmp_path):
    path = write(tmp_path / "p.jsonl", [good(1), good(2)], bom=True)
    items = list(iter_prompts(PromptSourceConfig(source="file", path=str(path))))
    assert [i.id for i in items] == ["p1", "p2"] and items[0].prompt == "Name a colour (1)."


def test_a_bom_later_in_the_file_is_still_broken_json(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(good(1).encode() + b"\n" + codecs.BOM_UTF8 + good(2).encode() + b"\n")
    with pytest.raises(ConfigError, match=r"p\.jsonl:2: broken JSON"):
        validate_prompts(PromptSourceConfig(source="file", path=str(path)))


def test_a_chat_list_keeps_every_turn_up_to_the_last_user_turn(tmp_path):
    """Multi-turn prompts: the last user turn is the prompt, the turns before it its history; a chat list with
    one user turn (system and a reference answer around it) is the single-turn prompt it always was."""
    u1, a1, u2 = ({"role": r, "content": c} for r, c in (("user", "Q1"), ("assistant", "A1"), ("user", "Q2")))
    rows = [
        {
            "id": "one",
            "messages": [{"role": "system", "content": "be brief"}, u1, {"role": "assistant", "content": "ref"}],
        },
        {"id": "two", "messages": [u1, a1, u2, {"role": "assistant", "content": "reference answer"}]},
        {"id": "text", "messages": "Just text."},
    ]
    path = write(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    items = list(iter_prompts(PromptSourceConfig(source="file", path=str(path), prompt_column="messages")))
    assert [(i.id, i.prompt, i.history) for i in items] == [
        ("one", "Q1", ()),
        ("two", "Q2", (u1, a1)),
        ("text", "Just text.", ()),
    ]
    assert items[0].question == "Q1" and items[1].question == Conversation("Q2", (u1, a1))
    path = write(tmp_path / "bad.jsonl", [json.dumps({"id": "x", "messages": [u1, u2]})])
    with pytest.raises(
        ConfigError, match=r"bad\.jsonl:1: column 'messages': chat turn 1 is 'user' where the turns must alternate"
    ):
        validate_prompts(PromptSourceConfig(source="file", path=str(path), prompt_column="messages"))


def test_a_folder_as_prompts_path_is_named_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=rf"prompts.path: {tmp_path} is a folder, not a file"):
        validate_prompts(PromptSourceConfig(source="file", path=str(tmp_path)))


def test_a_hub_dataset_that_cannot_be_found_is_a_config_error_naming_the_keys(monkeypatch):
    import datasets

    from mapo.data.sources import check_source

    def missing(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'no-such/set' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(ConfigError, match=r"prompts.path=no-such/set prompts.split=train: cannot load .*doesn't exist"):
        check_source(PromptSourceConfig(source="hf", path="no-such/set"))


def test_a_list_of_texts_is_user_turns_without_answers(tmp_path):
    path = write(tmp_path / "q.jsonl", [json.dumps({"id": "81", "turns": ["T1", "T2", "T3"]})])
    (item,) = iter_prompts(PromptSourceConfig(source="file", path=str(path), prompt_column="turns"))
    assert (item.prompt, item.history, item.unanswered, item.multi_turn) == ("T3", (), ("T1", "T2"), True)
    answered = item.answered(({"role": "user", "content": "T1"}, {"role": "assistant", "content": "A1"}))
    assert answered.question == Conversation("T3", answered.history) and answered.unanswered == ("T1", "T2")
