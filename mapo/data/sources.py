"""Where instructions come from: the built-in set, local files (JSONL/CSV/parquet), or
Hugging Face datasets by name with a column mapping. Prompts stream lazily (memory flat);
invalid ones are an error naming the file and line, or skipped and counted.

A prompt column may hold text or a chat list (``messages`` / ``conversation``: ``{role, content}`` turns,
capybara / no_robots style). A chat list keeps every turn up to its last user turn: that turn is the
prompt, the turns before it its ``history`` (a multi-turn prompt, answered with them in context); system
turns and the assistant turns after the last user turn (a reference answer) are left out. A list with one
user turn is the single-turn prompt it always was. A list of texts (MT-Bench's ``question.jsonl`` ``turns``)
is user turns without answers: the last is the prompt, the earlier ones ``unanswered`` (mapo build has the
generator answer them in order first, then runs the loop on the last).
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.config import ConfigError, PromptSourceConfig
from mapo.core.prompts import prompts_root
from mapo.core.types import Conversation, Message, Question


def _shard_of(item_id: str, count: int) -> int:
    """The shard (0..count-1) of an item: stable across runs, machines and Python versions."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    digest = hashlib.sha256(str(item_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class PromptItem:
    """One instruction and its id (the source's id column, else its line/row number)."""

    id: str
    prompt: str
    """The (last) user turn: what the generator answers."""
    history: tuple[Message, ...] = ()
    """A multi-turn prompt's earlier turns (user and assistant, from a user turn); empty for a single turn."""
    reference: str | None = None
    """Its reference answer (``prompts.reference_column``), for judge.reference=guided."""
    unanswered: tuple[str, ...] = ()
    """Earlier user turns given without answers (a list of texts): answered by the generator first
    (:meth:`answered`); empty when the source gives the answers (``history``)."""

    @property
    def multi_turn(self) -> bool:
        return bool(self.history or self.unanswered)

    def answered(self, history: tuple[Message, ...]) -> PromptItem:
        """This prompt with its earlier turns answered (``history``: user and assistant alternating)."""
        return PromptItem(self.id, self.prompt, history, self.reference, self.unanswered)

    @property
    def question(self) -> Question:
        """What the loop, the reviewers and the judge are given: the text, or a Conversation with its turns
        (and its reference answer)."""
        if self.history or self.reference is not None:
            return Conversation(self.prompt, self.history, reference=self.reference)
        return self.prompt


@dataclass
class SourceStats:
    """Prompts read and skipped (by reason), for the manifest."""

    read: int = 0
    skipped: int = 0
    reasons: dict[str, int] | None = None

    def skip(self, reason: str) -> None:
        """Count one skipped prompt under ``reason``."""
        self.skipped += 1
        self.reasons = self.reasons or {}
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _text_of(value: Any) -> tuple[str, tuple[Message, ...], tuple[str, ...]] | str | None:
    """(prompt, history, unanswered) of a plain string, a chat list or a list of texts (module doc); a
    problem's text, or None when the value is neither text nor a list holding a user turn."""
    if isinstance(value, str):
        return value, (), ()
    if not isinstance(value, list):
        return None
    if value and all(isinstance(t, str) for t in value):  # user turns without answers (MT-Bench's turns)
        return value[-1], (), tuple(value[:-1])
    turns: list[Message] = [
        {"role": t["role"], "content": t["content"]}
        for t in value
        if isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
    ]
    last = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
    if last is None:
        return None
    turns = turns[: last + 1]
    for i, t in enumerate(turns):
        if t["role"] != ("user" if i % 2 == 0 else "assistant"):
            return (
                f"chat turn {i} is {t['role']!r} where the turns must alternate from a user turn "
                "(each earlier user turn needs its assistant answer)"
            )
    return turns[-1]["content"], tuple(turns[:-1]), ()


def _unencodable_at(text: str) -> int | None:
    """1-based position of the first character UTF-8 cannot encode (a lone surrogate, which valid
    JSON such as ``"\\ud800"`` can hold), or None: such text can be neither sent nor stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start + 1
    return None


def _rows(cfg: PromptSourceConfig) -> Iterator[tuple[str, int, dict]]:
    """(where, line/row number, row) from the configured source."""
    if cfg.source == "builtin":
        path = prompts_root() / "instructions" / "builtin.jsonl"
        yield from _jsonl(path)
    elif cfg.source == "file":
        if not cfg.path:
            raise ConfigError("prompts.path is required when prompts.source=file")
        path = Path(cfg.path)
        if path.is_dir():
            raise ConfigError(f"prompts.path: {path} is a folder, not a file (jsonl, csv, parquet)")
        if not path.is_file():
            raise ConfigError(f"prompts.path: no such file {path}")
        if path.suffix in (".jsonl", ".json"):
            yield from _jsonl(path)
        elif path.suffix in (".csv", ".parquet"):
            import datasets

            ds = datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train", streaming=True)
            for i, row in enumerate(ds, 1):
                yield str(path), i + (1 if path.suffix == ".csv" else 0), row
        else:
            raise ConfigError(f"prompts.path: unsupported file type {path.suffix!r} (jsonl, csv, parquet)")
    elif cfg.source == "hf":
        if not cfg.path:
            raise ConfigError("prompts.path must name the Hugging Face dataset when prompts.source=hf")
        ds = _hf_dataset(cfg)
        for i, row in enumerate(ds):
            yield f"{cfg.path}[{cfg.split}]", i, row
    else:
        raise ConfigError(f"prompts.source={cfg.source!r}; allowed: builtin, file, hf")


def _hf_dataset(cfg: PromptSourceConfig) -> Any:
    """The Hugging Face dataset ``prompts.path`` (split ``prompts.split``), streamed. A dataset that cannot
    be found or reached, or a split it does not have, is a config error naming the keys (it was an
    internal error: ``failed``, exit 1)."""
    import datasets

    try:
        return datasets.load_dataset(cfg.path, split=cfg.split, streaming=True)
    except (ConnectionError, FileNotFoundError, ValueError) as e:  # DatasetNotFoundError is a FileNotFoundError
        offline = " (offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise ConfigError(
            f"prompts.path={cfg.path} prompts.split={cfg.split}: cannot load this Hugging Face dataset{offline}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def check_source(cfg: PromptSourceConfig) -> None:
    """A streamed source (``prompts.source=hf``) opened and its first row read, before any model call or file:
    what :func:`validate_prompts` does for a local source, without reading it all."""
    if cfg.source == "hf":
        next(iter(_rows(cfg)), None)


def _jsonl(path: Path) -> Iterator[tuple[str, int, dict]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(
                codecs.BOM_UTF8
            ):  # as written by some editors; the CSV reader accepts it too
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not UTF-8 (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: broken JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield str(path), lineno, row


def iter_prompts(cfg: PromptSourceConfig, stats: SourceStats | None = None) -> Iterator[PromptItem]:
    """The configured prompts, lazily, in source order: invalid ones raise a ConfigError naming the
    file and line (``on_invalid=error``) or are skipped and counted in ``stats`` (``skip``)."""
    stats = stats if stats is not None else SourceStats()
    seen: set[str] = set()
    taken = 0
    for where, n, row in _rows(cfg):
        if cfg.limit is not None and taken >= cfg.limit:
            return
        problem = None
        if cfg.prompt_column not in row:
            problem = f"missing column {cfg.prompt_column!r} (prompts.prompt_column)"
        else:
            got = _text_of(row[cfg.prompt_column])
            text, history, unanswered = got if isinstance(got, tuple) else (None, (), ())
            if isinstance(got, str):
                problem = f"column {cfg.prompt_column!r}: {got}"
            elif text is None:
                problem = f"column {cfg.prompt_column!r} is {type(row[cfg.prompt_column]).__name__}, not text"
            elif not text.strip():
                problem = f"empty prompt in column {cfg.prompt_column!r}"
            elif len(text) > cfg.max_chars:
                problem = f"prompt longer than prompts.max_chars={cfg.max_chars} ({len(text)} characters)"
            elif (bad := _unencodable_at(text)) is not None:
                problem = f"prompt is not valid Unicode (a lone surrogate at character {bad}; it cannot be sent)"
        reference = row.get(cfg.reference_column) if cfg.reference_column else None
        if problem is None and cfg.reference_column and not (isinstance(reference, str) and reference.strip()):
            problem = f"no reference answer in column {cfg.reference_column!r} (prompts.reference_column)"
        if problem is None and cfg.id_column and cfg.id_column not in row:
            problem = f"missing column {cfg.id_column!r} (prompts.id_column)"
        if problem is None:
            raw_id = row.get(cfg.id_column) if cfg.id_column else row.get("id", n)
            item_id = str(raw_id)
            if item_id in seen:
                problem = f"duplicate id {item_id!r}"
            elif (bad := _unencodable_at(item_id)) is not None:
                problem = f"id is not valid Unicode (a lone surrogate at character {bad})"
        if problem is not None:
            if cfg.on_invalid == "error":
                raise ConfigError(f"{where}:{n}: {problem} (set prompts.on_invalid=skip to skip and count)")
            stats.skip(problem.split(" (")[0])
            continue
        seen.add(item_id)
        taken += 1  # limit counts the whole set, so the shards of a job array partition it
        if cfg.shard_count > 1 and _shard_of(item_id, cfg.shard_count) != cfg.shard_index:
            continue
        stats.read += 1
        assert text is not None  # no problem: the prompt column held text
        yield PromptItem(item_id, text, history, reference, unanswered)


def validate_prompts(cfg: PromptSourceConfig) -> int:
    """Read the whole source once before any model call, so bad input fails first. Returns the count."""
    return sum(1 for _ in iter_prompts(cfg))
