"""The training data: a `mapo build` dataset, split by prompt id, and KTO's loss weights.

The split is a pure function of (prompt id, fraction, seed): a prompt is held out when the hash
of ``"<seed>:<id>"`` falls below the fraction. So every row of a prompt lands on one side, the
DPO and KTO datasets of one build agree on every prompt they share, and a resumed run recomputes
the same split (it is also written to the run folder, for `mapo winrate` on the held-out prompts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mapo.core.config import ConfigError
from mapo.core.store import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import datasets

__all__ = ["Split", "held_out", "kto_weights", "load_rows", "prompt_text", "split_by_prompt", "write_split"]

REQUIRED = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}


def load_rows(path: str | Path, method: str) -> datasets.Dataset:
    """The ``train`` rows of a build: a run folder (``dataset/<method>``, else ``<method>.jsonl``),
    a saved DatasetDict or Dataset folder, or a JSONL file. Checks the method's columns."""
    import datasets

    src = Path(path)
    if not src.exists():
        raise ConfigError(f"dataset={str(path)!r}: no such file or folder (a `mapo build` run folder?)")
    if (src / "dataset" / method).is_dir():
        src = src / "dataset" / method
    elif (src / f"{method}.jsonl").is_file():
        src = src / f"{method}.jsonl"
    if src.is_file():
        if src.suffix != ".jsonl":
            raise ConfigError(f"dataset={str(path)!r}: a file must be JSONL (the {method}.jsonl of a build)")
        ds = datasets.load_dataset("json", data_files=str(src), split="train")
    elif (src / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(src))
        if "train" not in dd:
            raise ConfigError(f"dataset={str(path)!r}: the DatasetDict has no 'train' split (has {list(dd)})")
        ds = dd["train"]
    elif (src / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(src))
    else:
        raise ConfigError(
            f"dataset={str(path)!r}: no {method.upper()} data found (expected dataset/{method}/ or {method}.jsonl "
            "of a `mapo build` run folder, or a saved DatasetDict)"
        )
    missing = [c for c in (*REQUIRED[method], "prompt_id") if c not in ds.column_names]
    if missing:
        raise ConfigError(
            f"dataset {src}: missing column(s) {', '.join(missing)} for method={method} "
            f"(has {', '.join(ds.column_names)}); is it the {'KTO' if method == 'dpo' else 'DPO'} dataset?"
        )
    if "key" in ds.column_names:
        ds = ds.remove_columns("key")
    if len(ds) == 0:
        raise ConfigError(f"dataset {src}: no rows to train on")
    return ds


def held_out(prompt_id: str, fraction: float, seed: int) -> bool:
    """Whether a prompt goes to the eval split (stable across datasets, runs and processes).

    >>> held_out("p1", 0.0, 0), held_out("p1", 0.999999, 0)
    (False, True)
    """
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Split:
    """Prompt ids on each side (sorted)."""

    train: list[str]
    eval: list[str]


def split_by_prompt(prompt_ids: Iterable[str], fraction: float, seed: int) -> Split:
    """Assign every prompt id to train or eval. With ``fraction > 0`` and at least two prompts,
    the eval side is never empty (the prompt with the lowest hash is taken when none falls below)."""
    ids = sorted(set(map(str, prompt_ids)))
    evals = {p for p in ids if held_out(p, fraction, seed)}
    if fraction > 0 and not evals and len(ids) >= 2:
        evals = {min(ids, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())}
    if len(evals) == len(ids) and ids:
        raise ConfigError(
            f"split.eval_fraction={fraction}: every one of the {len(ids)} prompts fell in the eval split; lower it"
        )
    return Split(train=[p for p in ids if p not in evals], eval=sorted(evals))


def kto_weights(labels: Iterable[bool]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the two losses: the rarer side's weight
    is the ratio of the counts, the other's is 1 (the lower end of the KTO paper's range, Eq. 8:
    ``desirable_weight * n_desirable / (undesirable_weight * n_undesirable)`` in [1, 4/3]).

    >>> kto_weights([True, False, False])
    (2.0, 1.0)
    >>> kto_weights([True, True, True, False])
    (1.0, 3.0)
    """
    labels = list(labels)
    n_d = sum(bool(x) for x in labels)
    n_u = len(labels) - n_d
    if n_d == 0 or n_u == 0:
        raise ConfigError(
            f"KTO needs desirable and undesirable examples in the train split; got {n_d} desirable, {n_u} undesirable"
        )
    if n_d <= n_u:
        return n_u / n_d, 1.0
    return 1.0, n_d / n_u


def prompt_text(prompt: Any) -> str:
    """The instruction of a row: a string, or the first user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    for turn in prompt or []:
        if isinstance(turn, dict) and turn.get("role") == "user":
            return str(turn.get("content", ""))
    raise ConfigError(f"a row's prompt has no user turn: {str(prompt)[:200]}")


def write_split(run_dir: Path, split: Split, ds: datasets.Dataset, meta: dict[str, Any]) -> None:
    """``split.json`` (ids per side) and ``eval_prompts.jsonl`` (id + prompt: `mapo winrate` reads it
    with ``prompts.source=file prompts.path=<run>/eval_prompts.jsonl``)."""
    atomic_write_json(run_dir / "split.json", {**meta, "train": split.train, "eval": split.eval})
    evals = set(split.eval)
    texts: dict[str, str] = {}
    for pid, prompt in zip(ds["prompt_id"], ds["prompt"], strict=True):
        if str(pid) in evals and str(pid) not in texts:
            texts[str(pid)] = prompt_text(prompt)
    lines = [json.dumps({"id": pid, "prompt": texts[pid]}, ensure_ascii=False) for pid in split.eval]
    atomic_write_text(run_dir / "eval_prompts.jsonl", "".join(line + "\n" for line in lines))
