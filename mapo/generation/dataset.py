"""DPO and KTO datasets in the formats TRL trains on (conversational form).

DPO (preference): ``prompt``, ``chosen``, ``rejected`` — one row per (chosen, rejected) pair.
KTO (unpaired preference): ``prompt``, ``completion``, ``label`` (bool).
Provenance (models, scores, iterations, judge) rides along in extra columns, which TRL ignores.
See https://huggingface.co/docs/trl/dataset_formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DPO_COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion", "label")


class RowError(ValueError):
    pass


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rows_for(
    prompt_id: str,
    question: str,
    responses: list[str],
    scores: list[float | None],
    best: int,
    *,
    generator: str,
    judge: str,
) -> tuple[list[dict], list[dict], int]:
    """DPO and KTO rows for one prompt; returns (dpo, kto, n_pairs_skipped_as_identical)."""
    dpo, kto, skipped = [], [], 0
    chosen = responses[best]
    for i, text in enumerate(responses):
        kto.append(
            {
                "key": f"{prompt_id}/{i}",
                "prompt": _user(question),
                "completion": _assistant(text),
                "label": i == best,
                "prompt_id": prompt_id,
                "iteration": i,
                "score": scores[i],
                "model": generator,
                "judge": judge,
            }
        )
        if i == best:
            continue
        if text.strip() == chosen.strip():
            skipped += 1  # identical texts teach nothing and break DPO's margin: counted, not written
            continue
        dpo.append(
            {
                "key": f"{prompt_id}/{best}>{i}",
                "prompt": _user(question),
                "chosen": _assistant(chosen),
                "rejected": _assistant(text),
                "prompt_id": prompt_id,
                "chosen_iteration": best,
                "rejected_iteration": i,
                "chosen_score": scores[best],
                "rejected_score": scores[i],
                "chosen_model": generator,
                "rejected_model": generator,
                "judge": judge,
            }
        )
    for row in dpo:
        validate_row(row, DPO_COLUMNS)
    for row in kto:
        validate_row(row, KTO_COLUMNS)
    return dpo, kto, skipped


def validate_row(row: dict[str, Any], columns: tuple[str, ...]) -> None:
    for col in columns:
        if col not in row:
            raise RowError(f"row {row.get('key')}: missing column {col!r}")
    for col in columns:
        value = row[col]
        if col == "label":
            if not isinstance(value, bool):
                raise RowError(f"row {row.get('key')}: label must be bool")
            continue
        if not (
            isinstance(value, list)
            and value
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"].strip() for m in value)
        ):
            raise RowError(f"row {row.get('key')}: column {col!r} must be a non-empty conversation")


def _iter_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                row = json.loads(line)
                row.pop("key", None)
                yield row


def save_datasets(run_dir: str | Path, *, push_to_hub: str | None = None, card: str | None = None) -> dict[str, int]:
    """Build DatasetDicts from the streamed JSONL (memory-mapped Arrow, flat memory)."""
    import datasets

    datasets.disable_progress_bars()  # one line per run in logs, not a bar per split
    run_dir = Path(run_dir)
    counts = {}
    for name in ("dpo", "kto"):
        src = run_dir / f"{name}.jsonl"
        if not src.exists() or src.stat().st_size == 0:
            counts[name] = 0
            continue
        ds = datasets.Dataset.from_generator(
            _iter_jsonl, gen_kwargs={"path": src}, cache_dir=str(run_dir / ".hf-cache")
        )
        dd = datasets.DatasetDict({"train": ds})
        out = run_dir / "dataset" / name
        tmp = out.with_name(f".{name}.tmp")
        dd.save_to_disk(str(tmp))
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        ds.to_parquet(str(run_dir / "dataset" / f"{name}.parquet"))
        if card:
            (out / "README.md").write_text(card, encoding="utf-8")
        if push_to_hub:
            dd.push_to_hub(push_to_hub, config_name=name)
        counts[name] = len(ds)
    return counts
