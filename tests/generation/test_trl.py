"""TRL accepts mapo's DPO and KTO datasets: its trainers' data preparation runs on them.

A tiny randomly initialised Llama and a word-level tokenizer stand in for a real model
(no hub here); what is checked is TRL's handling of our columns and conversational format.
"""

from __future__ import annotations

import copy
import json

import pytest

from mapo.generation.dataset import rows_for, save_datasets

trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The shared tiny random Llama (tests/conftest.py), loaded as model and tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def saved(tmp_path):
    dpo, kto = [], []
    for i in range(3):
        d, k, _ = rows_for(
            f"p{i}", "say hi", ["hi", "hello there", "hey"], [5.0, 6.5, None], i, generator="g", judge="j"
        )
        dpo += d
        kto += k
    for name, rows in (("dpo", dpo), ("kto", kto)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_datasets(tmp_path)
    return tmp_path / "dataset"


def _args(cls, tmp_path):
    return cls(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_steps=1,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
    )


def test_dpo_trainer_prepares_and_steps(saved, tiny, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny
    ds = datasets.load_from_disk(str(saved / "dpo"))["train"]
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=_args(DPOConfig, tmp_path),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert len(prepared) == 6 and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    assert all(row["chosen_ids"] != row["rejected_ids"] for row in prepared)
    trainer.train()  # one optimisation step: the batch collates and the loss is computed
    assert trainer.state.global_step == 1


def test_kto_trainer_prepares(saved, tiny, tmp_path):
    import datasets
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = tiny
    ds = datasets.load_from_disk(str(saved / "kto"))["train"]
    assert sum(ds["label"]) == 3 and len(ds) == 9
    trainer = KTOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=_args(KTOConfig, tmp_path),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    assert {"prompt_ids", "completion_ids", "label"} <= set(trainer.train_dataset.column_names)
