"""Fixtures of the training tests: a `mapo build`-shaped run folder with DPO and KTO rows over a dozen
prompts (the tiny random Llama, ``tiny_model``, is shared from tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapo.generation.dataset import rows_for, save_datasets

N_PROMPTS = 12


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
