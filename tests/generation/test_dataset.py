from __future__ import annotations

import pytest

from mapo.generation.dataset import RowError, rows_for, save_datasets, validate_row


def test_rows_pair_chosen_with_each_rejected():
    dpo, kto, skipped = rows_for("p1", "Q?", ["a", "b", "c"], [5.0, 7.0, None], 1, generator="g", judge="j")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo] == [("b", "a"), ("b", "c")]
    assert [r["label"] for r in kto] == [False, True, False]
    assert dpo[0]["prompt"] == [{"role": "user", "content": "Q?"}]
    assert skipped == 0


def test_identical_rejected_is_skipped_and_counted():
    dpo, kto, skipped = rows_for("p1", "Q?", ["same", "same ", "other"], [1, 2, 3], 0, generator="g", judge="j")
    assert skipped == 1 and len(dpo) == 1 and len(kto) == 3


def test_empty_text_is_rejected():
    with pytest.raises(RowError, match="chosen"):
        rows_for("p1", "Q?", ["", "b"], [1, 2], 0, generator="g", judge="j")
    with pytest.raises(RowError, match="label"):
        validate_row(
            {
                "key": "k",
                "prompt": [{"role": "user", "content": "x"}],
                "completion": [{"role": "assistant", "content": "y"}],
                "label": 1,
            },
            ("prompt", "completion", "label"),
        )


def test_trl_accepts_the_rows(tmp_path):
    """TRL's own data preparation runs on our rows (training itself is not needed)."""
    import json

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
