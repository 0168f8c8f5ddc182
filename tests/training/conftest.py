"""Fixtures of the training tests: a tiny random Llama saved as a model folder (no hub here) and a
`mapo build`-shaped run folder with DPO and KTO rows over a dozen prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapo.generation.dataset import rows_for, save_datasets

WORDS = ["[UNK]", "[PAD]", "</s>", "say", "hi", "hello", "there", "hey", "user", "assistant", "<", ">"]
N_PROMPTS = 12


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer Llama with a word-level tokenizer and a chat template, saved like a converted model."""
    pytest.importorskip("trl")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(WORDS),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=1,
            eos_token_id=2,
        )
    )
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=[2], pad_token_id=1).save_pretrained(folder)
    return folder


def write_build(run_dir: Path, n_prompts: int = N_PROMPTS) -> Path:
    """A run folder as `mapo build` leaves it: dpo.jsonl, kto.jsonl and dataset/{dpo,kto}."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dpo, kto = [], []
    for i in range(n_prompts):
        d, k, _ = rows_for(
            f"p{i}",
            "say hi" if i % 2 else "say hello",
            ["hi", "hello there", "hey hey"],
            [5.0, 6.5, 4.0],
            1,
            generator="tiny",
            judge="tiny",
        )
        dpo += d
        kto += k
    for name, rows in (("dpo", dpo), ("kto", kto)):
        (run_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_datasets(run_dir)
    return run_dir


@pytest.fixture
def build_dir(tmp_path) -> Path:
    return write_build(tmp_path / "build")
