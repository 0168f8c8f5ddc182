"""DPO and KTO datasets in the formats TRL trains on (conversational form).

DPO (preference): ``prompt``, ``chosen``, ``rejected`` — one row per (chosen, rejected) pair.
KTO (unpaired preference): ``prompt``, ``completion``, ``label`` (bool).
Provenance (row key, models, scores, iterations, judge, margin, truncation) rides along in
extra columns, which TRL ignores. See https://huggingface.co/docs/trl/dataset_formats.

The DPO score columns explain the choice: ``chosen_score`` / ``rejected_score`` are the judge's
scores in the comparison that put the rejected response out (the scores that decided: the
logprob-expected ones with ``judge.scoring=expected``), so ``chosen_score > rejected_score``
wherever ``decisive`` is true and the judge gives scores, and ``margin`` is their difference.
``decided_by_iteration`` is the response it lost to: the chosen one, or in a tournament the
incumbent that beat it before losing to the chosen one. ``chosen_written_score`` /
``rejected_written_score`` are the same comparison's scores as the judge wrote them (argmax;
only with ``judge.scoring=expected``), and ``chosen_review_score`` / ``rejected_review_score``
the feedback loop reviewer's scores of the two iterations (KTO's ``score`` is that too).
Identical (prompt, chosen, rejected) rows are written once (``duplicate_pairs_skipped``), and a
KTO completion once (``duplicate_kto_skipped``).

A preference needs a decision: a pair (best > other) is written only when the judge preferred
one response over the other in the comparison that put the other out (see
:func:`mapo.generation.selection.losses`); a tie gives no DPO pair and no KTO label, unless
``selection.on_tie=keep`` (the paper's behaviour). Responses cut by ``max_tokens`` are left
out unless ``selection.allow_truncated``.

The published datasets (``dataset/{dpo,kto}`` and the parquet files) are rebuilt from the
JSONL on every save and checked against it row for row (same count, same keys in order).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from mapo.core.config import OnTie, SelectionConfig
from mapo.core.store import DamagedLine, read_lines
from mapo.core.types import Question, as_messages
from mapo.generation.selection import TRUNCATED, Loss

DPO_COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion", "label")

_MESSAGES = [{"role": "string", "content": "string"}]
# Every published column with its type: the schema is fixed, not guessed from the first rows
# (a None score in the first rows and a float later would otherwise break the build).
DPO_SCHEMA: dict[str, Any] = {
    "key": "string",
    "prompt": _MESSAGES,
    "chosen": _MESSAGES,
    "rejected": _MESSAGES,
    "prompt_id": "string",
    "chosen_iteration": "int64",
    "rejected_iteration": "int64",
    "chosen_score": "float64",
    "rejected_score": "float64",
    "margin": "float64",
    "decisive": "bool",
    "decided_by_iteration": "int64",
    "chosen_written_score": "float64",
    "rejected_written_score": "float64",
    "chosen_review_score": "float64",
    "rejected_review_score": "float64",
    "chosen_truncated": "bool",
    "rejected_truncated": "bool",
    "chosen_model": "string",
    "rejected_model": "string",
    "judge": "string",
}
KTO_SCHEMA: dict[str, Any] = {
    "key": "string",
    "prompt": _MESSAGES,
    "completion": _MESSAGES,
    "label": "bool",
    "prompt_id": "string",
    "iteration": "int64",
    "score": "float64",
    "decisive": "bool",
    "truncated": "bool",
    "model": "string",
    "judge": "string",
}
SCHEMAS = {"dpo": DPO_SCHEMA, "kto": KTO_SCHEMA}


class RowError(ValueError):
    pass


class DatasetError(RuntimeError):
    """A JSONL that cannot be published as a dataset (a damaged line, an unknown column)."""


class DatasetMismatch(DatasetError):
    """A published dataset artifact does not hold exactly the rows of its JSONL."""


_LENGTH_SUMS: tuple[str, ...] = tuple(
    f"{what}_{when}" for when in ("before", "after") for what in ("pairs", "log_ratio", "chosen_longer")
)


def length_summary(sums: Mapping[str, float], max_ratio: float | None) -> dict[str, Any]:
    """The length ratio (chosen / rejected characters; geometric mean) and the share of pairs whose
    chosen response is the longer, over the candidate pairs (before ``max_length_ratio``) and the
    written ones (after), with the pair counts."""

    def side(when: str) -> dict[str, Any]:
        n = sums.get(f"pairs_{when}", 0.0)
        return {
            "pairs": int(n),
            "length_ratio_geomean": math.exp(sums[f"log_ratio_{when}"] / n) if n else None,
            "chosen_longer_share": sums[f"chosen_longer_{when}"] / n if n else None,
        }

    return {"max_length_ratio": max_ratio, "before": side("before"), "after": side("after")}


@dataclass
class RowCounts:
    """What :func:`rows_for` wrote and left out, summed over items (for the manifest and card)."""

    items_with_pairs: int = 0
    items_without_pairs: int = 0
    """Items that gave no DPO pair (no decisive comparison, or every pair identical or excluded)."""
    pairs_written: int = 0
    kto_rows: int = 0
    ties_dropped: Counter = field(default_factory=Counter)
    """Comparisons that gave no pair, by reason (judge_tie, equal_scores, orders_disagree, ...)."""
    ties_kept: int = 0
    """Pairs written from a tie (``selection.on_tie=keep``); their ``decisive`` column is false."""
    identical_pairs_skipped: int = 0
    duplicate_pairs_skipped: int = 0
    """DPO rows identical to one already written for the prompt (two iterations with the same text)."""
    duplicate_kto_skipped: int = 0
    """KTO rows whose completion was already written for the prompt (kept once, with the first label)."""
    truncated_excluded: int = 0
    """Responses cut by max_tokens left out of selection and rows (``selection.allow_truncated=false``)."""
    length_ratio_skipped: int = 0
    """DPO pairs not written because the chosen response was over ``selection.max_length_ratio`` times longer."""
    length: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_LENGTH_SUMS, 0.0))
    """Sums behind the length summary (:meth:`length_summary`): every candidate pair and every written one."""

    def add(self, other: RowCounts) -> None:
        """Add another item's counts into these."""
        for name in ("items_with_pairs", "items_without_pairs", "pairs_written", "kto_rows", "ties_kept"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.identical_pairs_skipped += other.identical_pairs_skipped
        self.duplicate_pairs_skipped += other.duplicate_pairs_skipped
        self.duplicate_kto_skipped += other.duplicate_kto_skipped
        self.truncated_excluded += other.truncated_excluded
        self.length_ratio_skipped += other.length_ratio_skipped
        for k in _LENGTH_SUMS:
            self.length[k] = self.length.get(k, 0.0) + other.length.get(k, 0.0)
        self.ties_dropped.update(other.ties_dropped)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready counts."""
        return {
            "items_with_pairs": self.items_with_pairs,
            "items_without_pairs": self.items_without_pairs,
            "pairs_written": self.pairs_written,
            "kto_rows": self.kto_rows,
            "ties_dropped": sum(self.ties_dropped.values()),
            "ties_dropped_by_reason": dict(sorted(self.ties_dropped.items())),
            "ties_kept": self.ties_kept,
            "identical_pairs_skipped": self.identical_pairs_skipped,
            "duplicate_pairs_skipped": self.duplicate_pairs_skipped,
            "duplicate_kto_skipped": self.duplicate_kto_skipped,
            "truncated_excluded": self.truncated_excluded,
            "length_ratio_skipped": self.length_ratio_skipped,
        }


def _prompt(question: Question) -> list[dict[str, str]]:
    """TRL's conversational prompt: ``[user]``, or a multi-turn prompt's every turn up to the question."""
    return [{"role": m["role"], "content": m["content"]} for m in as_messages(question)]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rows_for(
    prompt_id: str,
    question: Question,
    responses: list[str],
    scores: list[float | None],
    best: int,
    *,
    generator: str,
    judge: str,
    losses: Mapping[int, Loss] | None = None,
    finish_reasons: Sequence[str | None] | None = None,
    on_tie: OnTie = OnTie.drop,
    allow_truncated: bool = False,
    max_length_ratio: float | None = None,
) -> tuple[list[dict], list[dict], RowCounts]:
    """DPO and KTO rows for one prompt; returns (dpo, kto, counts).

    ``losses`` says how each other response lost to ``best`` (from the selection); None means
    the caller vouches that the judge preferred ``best`` over every other response. A response
    that lost by a tie gives no pair and no KTO label when ``on_tie="drop"``; ``best`` itself
    is labelled desirable only when it won at least one decisive comparison. Responses whose
    ``finish_reason`` is ``"length"`` are left out unless ``allow_truncated``. ``scores`` are
    the reviewer's per-response scores, carried as provenance (``*_review_score``, KTO ``score``);
    the deciding scores come from ``losses`` (module doc). A rejected response whose text is the
    chosen one's gives no pair, and its KTO row is the chosen one's (one text, one label).
    """
    counts = RowCounts()
    truncated = [r == TRUNCATED for r in finish_reasons] if finish_reasons is not None else [False] * len(responses)
    out = set() if allow_truncated else {i for i, t in enumerate(truncated) if t}
    counts.truncated_excluded = len(out)
    if best in out:  # only a selection stored before truncated responses were left out
        counts.items_without_pairs = 1
        return [], [], counts
    chosen = responses[best]
    dpo: list[dict] = []
    written: set[str] = set()  # rejected texts already paired with the chosen one
    labels: dict[int, bool] = {}
    decisive: dict[int, bool] = {}
    for i, text in enumerate(responses):
        if i == best or i in out:
            continue
        loss = Loss(best, True, None) if losses is None else losses.get(i)
        if loss is None:  # never judged (the selection stopped early): no decision
            counts.ties_dropped["not_compared"] += 1
            continue
        if not loss.decisive:
            if on_tie == OnTie.drop:
                counts.ties_dropped[loss.reason or "tie"] += 1
                continue
            counts.ties_kept += 1
        labels[i], decisive[i] = False, loss.decisive  # (a text equal to the chosen one's: KTO keeps it once)
        if text.strip() == chosen.strip():
            counts.identical_pairs_skipped += 1  # identical texts teach nothing and break DPO's margin
            continue
        if text.strip() in written:  # the same pair again (two iterations with one text): once is enough
            counts.duplicate_pairs_skipped += 1
            continue
        ratio = len(chosen) / max(len(text), 1)
        _count_length(counts, "before", ratio)
        if max_length_ratio is not None and ratio > max_length_ratio:
            counts.length_ratio_skipped += 1  # the judge may have preferred it for its length
            continue
        _count_length(counts, "after", ratio)
        written.add(text.strip())
        dpo.append(
            {
                "key": f"{prompt_id}/{best}>{i}",
                "prompt": _prompt(question),
                "chosen": _assistant(chosen),
                "rejected": _assistant(text),
                "prompt_id": prompt_id,
                "chosen_iteration": best,
                "rejected_iteration": i,
                "chosen_score": loss.winner_score,
                "rejected_score": loss.loser_score,
                "margin": loss.margin,
                "decisive": loss.decisive,
                "decided_by_iteration": loss.winner,
                "chosen_written_score": loss.winner_written,
                "rejected_written_score": loss.loser_written,
                "chosen_review_score": scores[best],
                "rejected_review_score": scores[i],
                "chosen_truncated": truncated[best],
                "rejected_truncated": truncated[i],
                "chosen_model": generator,
                "rejected_model": generator,
                "judge": judge,
            }
        )
    # the best is desirable only if the judge preferred it over something (or ties are kept)
    if losses is None or on_tie == OnTie.keep or any(decisive.values()):
        labels[best], decisive[best] = True, losses is None or any(decisive.values())
    seen: set[str] = set()
    kept = []
    for i in sorted(labels, key=lambda i: (not labels[i], i)):  # the desirable one first: it keeps its text
        if responses[i].strip() in seen:
            counts.duplicate_kto_skipped += 1
            continue
        seen.add(responses[i].strip())
        kept.append(i)
    kto = [
        {
            "key": f"{prompt_id}/{i}",
            "prompt": _prompt(question),
            "completion": _assistant(responses[i]),
            "label": labels[i],
            "prompt_id": prompt_id,
            "iteration": i,
            "score": scores[i],
            "decisive": decisive[i],
            "truncated": truncated[i],
            "model": generator,
            "judge": judge,
        }
        for i in sorted(kept)
    ]
    for row in dpo:
        _validate_row(row, DPO_COLUMNS)
    for row in kto:
        _validate_row(row, KTO_COLUMNS)
    counts.pairs_written, counts.kto_rows = len(dpo), len(kto)
    counts.items_with_pairs, counts.items_without_pairs = (1, 0) if dpo else (0, 1)
    return dpo, kto, counts


def _count_length(counts: RowCounts, when: str, ratio: float) -> None:
    counts.length[f"pairs_{when}"] += 1
    counts.length[f"log_ratio_{when}"] += math.log(max(ratio, 1e-9))
    counts.length[f"chosen_longer_{when}"] += ratio > 1


def item_rows(
    key: str,
    question: Question,
    iterations: Sequence[Mapping[str, Any]],
    best: int,
    losses: Mapping[int, Loss],
    selection: SelectionConfig,
    *,
    generator: str,
    judge: str,
) -> tuple[list[dict], list[dict], RowCounts]:
    """:func:`rows_for` from a stored generation record's ``iterations`` and the run's
    ``SelectionConfig`` (``on_tie``, ``allow_truncated``)."""
    return rows_for(
        key,
        question,
        [it["response"] for it in iterations],
        [it.get("score") for it in iterations],
        best,
        generator=generator,
        judge=judge,
        losses=losses,
        finish_reasons=[it.get("finish_reason") for it in iterations],
        on_tie=selection.on_tie,
        allow_truncated=selection.allow_truncated,
        max_length_ratio=selection.max_length_ratio,
    )


def _validate_row(row: dict[str, Any], columns: tuple[str, ...]) -> None:
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


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every complete line (the one JSONL reader, ``core.store.read_lines``); a torn
    last line (no newline) is not a record, a line that is not JSON is a :class:`DatasetError` naming it."""
    try:
        yield from read_lines(path, on_damaged="error")
    except DamagedLine as e:
        raise DatasetError(f"{path}:{e.lineno}: not a JSON record ({e.detail})") from None


# rows are written with "key" first: read it without parsing the (long) rest of the line
_LEADING_KEY = re.compile(r'\{"key": ("(?:[^"\\]|\\.)*")[,}]')


def _jsonl_keys(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                continue  # a torn last line is not a record
            m = _LEADING_KEY.match(line)
            try:
                key = json.loads(m.group(1)) if m else json.loads(line).get("key")
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not a JSON record ({e})") from None
            if not isinstance(key, str):
                raise DatasetError(f"{path}:{lineno}: row without a string key")
            yield key


def _arrow_keys(chunks: Iterable[Any]) -> Iterator[str]:
    for chunk in chunks:  # one Arrow chunk at a time: flat memory
        yield from chunk.to_pylist()


def _check_same(src: Path, artifact: Path, keys: Iterator[str]) -> int:
    """Compare the artifact's row keys with the JSONL's, in order; the row count when equal."""
    n = 0
    for n, (want, got) in enumerate(zip_longest(_jsonl_keys(src), keys), 1):
        if want != got:
            if got is None:
                what = f"has {n - 1} rows, {src.name} has more"
            elif want is None:
                what = f"has more rows than the {n - 1} in {src.name}"
            else:
                what = f"row {n} is {got!r}, {src.name} line {n} is {want!r}"
            raise DatasetMismatch(f"{artifact} does not match {src}: it {what} (published dataset is stale or torn)")
    return n


def _features(schema: Mapping[str, Any]) -> Any:
    import datasets

    def one(t: Any) -> Any:
        if isinstance(t, list):
            return [one(t[0])]
        if isinstance(t, dict):
            return {k: one(v) for k, v in t.items()}
        return datasets.Value(t)

    return datasets.Features({k: one(v) for k, v in schema.items()})


def _write_arrow(src: Path, schema: Mapping[str, Any], features: Any, dest: Path, batch_rows: int = 1000) -> None:
    """Stream the JSONL into one Arrow file, ``batch_rows`` at a time (flat memory, and no
    per-row feature encoding: pyarrow converts a batch against the fixed schema at once)."""
    import pyarrow as pa

    arrow_schema = features.arrow_schema

    def flush(batch: list[dict], first_line: int, last_line: int) -> None:
        try:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=arrow_schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DatasetError(
                f"{src}:{first_line}-{last_line}: a value does not fit the dataset schema ({e})"
            ) from None

    with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema) as writer:
        batch: list[dict] = []
        first = 1
        for lineno, row in _iter_jsonl(src):
            unknown = set(row) - set(schema)
            if unknown:
                raise DatasetError(f"{src}:{lineno}: columns {sorted(unknown)} are not in the dataset schema")
            batch.append({col: row.get(col) for col in schema})
            if len(batch) == batch_rows:
                flush(batch, first, lineno)
                batch, first = [], lineno + 1
        if batch:
            flush(batch, first, lineno)


def save_datasets(run_dir: str | Path, *, push_to_hub: str | None = None, card: str | None = None) -> dict[str, int]:
    """Publish ``dpo.jsonl`` and ``kto.jsonl`` as DatasetDicts (``dataset/{dpo,kto}``) and parquet
    files, rebuilt from the JSONL every time and verified against it; returns the row counts.

    The rows stream into an Arrow file in a fresh scratch folder (memory stays flat) that is
    removed afterwards: nothing is reused from an earlier save, so a resumed run never
    publishes stale rows. Raises :class:`DatasetMismatch` (nothing pushed) when a written
    artifact does not hold the JSONL's rows (see :func:`_check_published`).
    """
    import datasets

    datasets.disable_progress_bars()  # one line per run in logs, not a bar per split
    run_dir = Path(run_dir)
    # an earlier version cached by path here, which is what published stale rows: never reuse it
    shutil.rmtree(run_dir / ".hf-cache", ignore_errors=True)
    scratch = run_dir / f".hf-build-{os.getpid()}"
    try:
        for name, schema in SCHEMAS.items():
            src = run_dir / f"{name}.jsonl"
            out = run_dir / "dataset" / name
            parquet = run_dir / "dataset" / f"{name}.parquet"
            if not src.exists() or next(_iter_jsonl(src), None) is None:
                # nothing to publish: no artifact may claim otherwise
                shutil.rmtree(out, ignore_errors=True)
                parquet.unlink(missing_ok=True)
                continue
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            features = _features(schema)
            _write_arrow(src, schema, features, scratch / f"{name}.arrow")
            ds = datasets.Dataset.from_file(
                str(scratch / f"{name}.arrow"), info=datasets.DatasetInfo(features=features)
            )
            tmp = out.with_name(f".{name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp))
            if card:
                (tmp / "README.md").write_text(card, encoding="utf-8")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
            tmp_parquet = parquet.with_name(f".{parquet.name}.tmp")
            ds.to_parquet(str(tmp_parquet))
            os.replace(tmp_parquet, parquet)
            del ds
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = _check_published(run_dir)  # read back what was published, not what was meant to be
    if push_to_hub:
        for name, n in counts.items():
            if n:
                dd = datasets.load_from_disk(str(run_dir / "dataset" / name))
                dd.push_to_hub(push_to_hub, config_name=name)
    return counts


def _check_published(run_dir: str | Path) -> dict[str, int]:
    """Check that ``dataset/{dpo,kto}`` and ``dataset/{dpo,kto}.parquet`` hold exactly the rows
    of ``{dpo,kto}.jsonl`` (same count, same keys in the same order); returns the row counts.

    An empty or missing JSONL must have no artifact. Raises :class:`DatasetMismatch` naming the
    artifact and the first row that differs. Reads keys only, batch by batch (flat memory).
    """
    import datasets
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    counts: dict[str, int] = {}
    for name in SCHEMAS:
        src = run_dir / f"{name}.jsonl"
        out = run_dir / "dataset" / name
        parquet = run_dir / "dataset" / f"{name}.parquet"
        if not src.exists() or next(_iter_jsonl(src), None) is None:
            for artifact in (out, parquet):
                if artifact.exists():
                    raise DatasetMismatch(f"{artifact} exists but {src} holds no rows (stale dataset)")
            counts[name] = 0
            continue
        for artifact in (out, parquet):
            if not artifact.exists():
                raise DatasetMismatch(f"{artifact} is missing; {src} holds rows")
        saved = datasets.load_from_disk(str(out))
        if list(saved) != ["train"]:
            raise DatasetMismatch(f"{out}: splits {list(saved)}, expected only 'train'")
        counts[name] = _check_same(src, out, _arrow_keys(saved["train"].data.column("key").chunks))
        _check_same(
            src, parquet, _arrow_keys(b.column("key") for b in pq.ParquetFile(parquet).iter_batches(columns=["key"]))
        )
    return counts
