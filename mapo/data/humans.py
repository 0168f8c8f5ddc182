"""Human-labelled pairwise evaluation sets, loaded into one row shape.

Every loader returns ``list[HumanRow]``: ``{id, question, response_a, response_b, human}``
with ``human`` a :data:`~mapo.core.types.Label` (model_a / model_b / tie). Bad input raises
:class:`HumanDataError` naming the file (or dataset) and the line, row or key at fault.

Agreement needs only an id and a label, so a text field (question, responses) holding
something other than text never refuses the file: the value is kept as text (a number as
``str``, a list or object as JSON, null as ``""``), the row lists it under ``odd_fields``
(e.g. ``["response_b: list"]``) and one warning names the file and the first such rows.
``need_text=False`` (``mapo agreement --humans``) loads id and label only: the text columns
may be absent.

* :func:`load_faireval`: FairEval, local JSONL (``winner`` is already a label).
* :func:`load_local`: any local JSONL / JSON / CSV, with a column mapping and a label-value
  mapping. ``columns["human"]`` may name several columns (one per annotator): the row keeps
  every annotator's label under ``annotators`` and ``human`` is their majority
  (:data:`MAJORITY_RULE`). A ``conversation`` column (a list of ``{role, content}`` turns, user
  and assistant alternating, ending with the user's question) makes the item multi-turn: its last
  turn is the question, the turns before it the ``context`` both responses answered in.

Multi-turn items carry ``context`` (the turns before the question, as response A's model saw them)
and, where response B's model saw other earlier answers (MT-Bench: each model answered turn 1
itself), ``context_b``; :func:`item_question` turns a row into what an evaluator is asked (a
:class:`~mapo.core.types.Conversation`, or the plain question of a single-turn row, unchanged).
* Hugging Face sets, loaded lazily with ``datasets.load_dataset`` (the mapping of their rows
  is separate and unit-tested): :func:`load_pandalm` (majority of 3 annotators),
  :func:`load_mt_bench` (``lmsys/mt_bench_human_judgments``), :func:`load_alpaca_eval`
  (AlpacaFarm cross-annotations, majority of the annotators of each pair).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from mapo.core.config import ConfigError, EvalDataConfig, shipped_path
from mapo.core.registry import Registry, UnknownNameError
from mapo.core.types import LABELS, Conversation, Label, Message, Question, conversation_of

__all__ = [
    "load_items",
    "FIELDS",
    "LOADERS",
    "HumanDataError",
    "MAJORITY_RULE",
    "majority_label",
    "read_objects",
    "HumanRow",
    "alpaca_eval_rows",
    "default_faireval_path",
    "human_labels_spec",
    "item_question",
    "load_alpaca_eval",
    "load_faireval",
    "load_local",
    "load_mt_bench",
    "label_columns",
    "load_pandalm",
    "mt_bench_rows",
    "pandalm_rows",
    "read_mt_bench_references",
    "read_human_labels",
]


log = logging.getLogger(__name__)


class HumanRow(TypedDict):
    id: str
    question: str
    response_a: str
    response_b: str
    human: Label
    odd_fields: NotRequired[list[str]]  # text fields that held no text: "<field>: <type>" (module doc)
    annotators: NotRequired[dict[str, Label]]  # several label columns: column -> that annotator's label
    context: NotRequired[list[Message]]  # multi-turn: the turns before the question (module doc)
    context_b: NotRequired[list[Message]]  # multi-turn, response B's earlier turns where they differ from A's
    reference: NotRequired[str]  # a reference answer (a local file's ``reference`` column; judge.reference=guided)


FIELDS: tuple[str, ...] = ("id", "question", "response_a", "response_b", "human")
OPTIONAL_FIELDS: tuple[str, ...] = ("conversation", "reference")
"""Columns read when a row has them (a single-turn file has none: its rows are read as before)."""
TEXT_FIELDS: tuple[str, ...] = ("question", "response_a", "response_b")
IDENTITY_LABELS: dict[Any, Label] = {label: label for label in LABELS}
MAJORITY_RULE = (
    "majority of the annotators: the most common label; a split with no single most common label "
    "(1-1-1 of three, 2-2 of four, 1-1 of two) is a tie"
)
"""How several annotators' labels become one human label (here, for PandaLM and AlpacaFarm alike)."""


def label_columns(columns: Mapping[str, Any] | None) -> list[str]:
    """The label column(s) a column mapping names for ``human`` (default ``["human"]``)."""
    value = (columns or {}).get("human", "human")
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise HumanDataError(f"columns.human must be a column name or a list of them, got {value!r}")


class HumanDataError(ValueError):
    """An evaluation set that cannot be read as human-labelled pairs; names file and line/key."""


# --------------------------------------------------------------------------- local files


def default_faireval_path() -> Path:
    """``$MAPO_SHARED/data/faireval/fair_eval.jsonl``, else ``../shared`` beside the checkout."""
    shared = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    return shared / "data" / "faireval" / "fair_eval.jsonl"


def load_faireval(path: str | Path | None = None, *, need_text: bool = True) -> list[HumanRow]:
    """FairEval (80 Vicuna-80 questions; model_a = Vicuna-13B, model_b = GPT-3.5)."""
    return load_local(
        path or default_faireval_path(), columns={"human": "winner"}, labels=IDENTITY_LABELS, need_text=need_text
    )


def load_local(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    labels: Mapping[Any, Label] | None = None,
    *,
    fmt: str | None = None,
    need_text: bool = True,
) -> list[HumanRow]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects) or ``.csv`` file.

    ``columns`` maps our fields to the file's keys (unnamed fields keep their own name, e.g.
    ``{"human": "winner", "question": "prompt"}``); ``labels`` maps the file's label values
    to ours (default: the values already are model_a / model_b / tie). A missing ``id``
    column falls back to the row's position. Non-text values in text columns are kept and
    flagged (module doc); ``need_text=False`` lets the text columns be absent.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if path.is_dir():
        raise HumanDataError(f"{path} is a folder, not a file (jsonl, json, csv)")
    if not path.is_file():
        raise HumanDataError(f"{path}: no such file")
    records = _read(path, fmt)
    cols: dict[str, Any] = {f: f for f in (*FIELDS, *OPTIONAL_FIELDS)} | dict(columns or {})
    label_columns(cols)  # a clear error for a malformed human column before any row
    unknown = set(cols) - set(FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise HumanDataError(
            f"{path}: column mapping names unknown fields {sorted(unknown)}; fields: {', '.join((*FIELDS, *OPTIONAL_FIELDS))}"
        )
    lab = dict(labels) if labels is not None else IDENTITY_LABELS
    rows = [
        _row(rec, cols, lab, f"{where}", default_id=str(i), need_text=need_text, path=path)
        for i, (where, rec) in enumerate(records)
    ]
    _warn_odd(rows, [w for w, _ in records], str(path))
    return rows


def human_labels_spec(
    path: str | Path, columns: Mapping[str, Any] | None = None, labels: Mapping[Any, Label] | None = None
) -> dict[str, Any]:
    """How a label file is read (``mapo agreement --humans``), as JSON: path, column mapping (``human``
    defaults to ``winner``), label mapping (None = the values are labels). Written into
    ``agreement.json`` (``humans_spec``) so that the report, the leaderboard and the bias
    diagnostics read the file exactly as the kappas did (:func:`read_human_labels`)."""
    cols = {"human": "winner", **dict(columns or {})}
    return {
        "path": str(path),
        "columns": cols,
        "labels": None if labels is None else {str(k): v for k, v in labels.items()},
        "majority_rule": MAJORITY_RULE if len(label_columns(cols)) > 1 else None,
    }


def read_human_labels(spec: Mapping[str, Any], *, need_text: bool = False) -> list[HumanRow]:
    """The rows of a label file read as ``spec`` (:func:`human_labels_spec`) says: the one place
    agreement, report, leaderboard and bias read such a file."""
    return load_local(spec["path"], columns=spec.get("columns"), labels=spec.get("labels"), need_text=need_text)


def _warn_odd(rows: Sequence[HumanRow], wheres: Sequence[str], source: str) -> None:
    odd = [(w, r["odd_fields"]) for w, r in zip(wheres, rows, strict=True) if r.get("odd_fields")]
    if odd:
        first = "; ".join(f"{w}: {', '.join(f)}" for w, f in odd[:3])
        log.warning(
            "%s: %d of %d rows hold non-text values in text fields, kept as text and flagged in odd_fields (%s%s)",
            source,
            len(odd),
            len(rows),
            first,
            ", ..." if len(odd) > 3 else "",
        )


def _lenient_text(rec: Mapping[str, Any], key: str, field: str, where: str, odd: list[str]) -> str:
    """``rec[key]`` as text; a non-text value is converted and noted in ``odd`` (a missing key is an error)."""
    if key not in rec:
        raise HumanDataError(f"{where}: missing column {key!r}")
    v = rec[key]
    if not isinstance(v, str):
        odd.append(f"{field}: {type(v).__name__}")
        return _as_text(v)
    return v


def _as_text(value: Any) -> str:
    """A non-text field value as text: null -> "", a number -> str, a list/object -> JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read(path: Path, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        out = []
        # lines end at "\n" only: U+2028, U+0085 and the like are text inside a JSON string
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise HumanDataError(f"{path}: line {lineno}: broken JSON ({e.msg})") from None
            out.append((f"line {lineno}", _object(rec, path, f"line {lineno}")))
        return out
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HumanDataError(f"{path}: line {e.lineno}: broken JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise HumanDataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return [(f"item {i}", _object(rec, path, f"item {i}")) for i, rec in enumerate(data)]
    if fmt == "csv":
        # the csv module splits the rows itself: a quoted field keeps its newlines
        reader = csv.DictReader(io.StringIO(text, newline=""))
        out = []
        start = 2  # the header is line 1; a record spanning lines is named by its first
        for rec in reader:
            out.append((f"line {start}", dict(rec)))
            start = reader.line_num + 1
        return out
    raise HumanDataError(f"{path}: unknown format {fmt!r}; known: csv, json, jsonl")


def read_objects(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """The objects of a local ``.jsonl``, ``.json`` (a list) or ``.csv`` file, as they are (every column, also
    those :class:`HumanRow` drops: ``mapo report`` reads the candidates' names from them); the one reader of a
    human-labelled file, :func:`load_local`'s."""
    path = Path(path)
    return [rec for _, rec in _read(path, (fmt or path.suffix.lstrip(".")).lower())]


def _object(rec: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise HumanDataError(f"{path}: {where}: expected an object, got {type(rec).__name__}")
    return rec


def _row(
    rec: Mapping[str, Any],
    cols: Mapping[str, Any],
    labels: Mapping[Any, Label],
    where: str,
    default_id: str,
    *,
    need_text: bool = True,
    path: Path | None = None,
) -> HumanRow:
    where = f"{path}: {where}" if path is not None else where

    def get(field: str) -> Any:
        key = cols[field]
        if key not in rec:
            if field == "id":
                return default_id
            if not need_text and field in TEXT_FIELDS:
                return ""
            raise HumanDataError(f"{where}: missing column {key!r} (for {field}); has {', '.join(map(str, rec))}")
        return rec[key]

    votes: list[Label] = []
    names = label_columns(cols)
    for name in names:
        if name not in rec:
            raise HumanDataError(f"{where}: missing column {name!r} (for human); has {', '.join(map(str, rec))}")
        value = rec[name]
        vote = _lookup(labels, value)
        if vote is None:
            raise HumanDataError(
                f"{where}: unknown label value {value!r} in column {name!r}; known: {', '.join(map(repr, labels))}"
            )
        votes.append(vote)
    label = votes[0] if len(votes) == 1 else majority_label(votes)
    text: dict[str, str] = {}
    odd: list[str] = []
    conversation = None
    if need_text and cols.get("conversation") in rec:
        try:
            conversation = conversation_of(rec[cols["conversation"]], f"{where}: column {cols['conversation']!r}")
        except ValueError as e:
            raise HumanDataError(str(e)) from None
        asked = rec.get(cols["question"], conversation.question)
        if asked != conversation.question:
            raise HumanDataError(
                f"{where}: column {cols['question']!r} differs from the last user turn of {cols['conversation']!r} "
                "(the question of a multi-turn item is its last user turn: drop one of them)"
            )
    for field in TEXT_FIELDS:
        if field == "question" and conversation is not None:
            text[field] = conversation.question
            continue
        v = get(field)
        if not isinstance(v, str):
            odd.append(f"{field}: {type(v).__name__}")
            v = _as_text(v)
        text[field] = v
    row = HumanRow(id=str(get("id")), human=label, **text)  # type: ignore[typeddict-item]
    if odd:
        row["odd_fields"] = odd
    if len(votes) > 1:
        row["annotators"] = dict(zip(names, votes, strict=True))
    if conversation is not None and conversation.history:
        row["context"] = list(conversation.history)
    reference = rec.get(cols["reference"]) if need_text else None
    if isinstance(reference, str) and reference.strip():
        row["reference"] = reference
    return row


def item_question(row: HumanRow) -> Question:
    """What an evaluator is asked about ``row``: its question, or for a multi-turn row a
    :class:`~mapo.core.types.Conversation` with the earlier turns (each side's where they differ) and its
    reference answer, if any (shown to a judge only under ``judge.reference=guided``)."""
    if "context" not in row and "reference" not in row:
        return row["question"]
    a = tuple(row.get("context") or ())
    b = tuple(row["context_b"]) if "context_b" in row else None
    return Conversation(row["question"], a, None if b == a else b, row.get("reference"))


def _lookup(labels: Mapping[Any, Label], value: Any) -> Label | None:
    """The label for a raw value; "1" in a CSV finds a mapping keyed 1 (1.0 finds 1, 1 finds "1")."""
    candidates = [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        candidates.append(str(value))
    if isinstance(value, str):
        s = value.strip()
        candidates.append(s)
        with contextlib.suppress(ValueError):
            candidates.append(float(s))
    for c in candidates:
        try:
            if c in labels:
                return labels[c]
        except TypeError:  # unhashable value (a list, a dict)
            return None
    return None


# --------------------------------------------------------------------------- Hugging Face sets


def _hub(name: str, *args: Any, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as e:  # a loud, actionable failure (style: no silent fallback)
        raise ImportError("loading Hugging Face evaluation sets needs `pip install datasets`") from e
    return datasets.load_dataset(name, *args, **kwargs)


def majority_label(votes: Sequence[Label]) -> Label:
    """Most common annotator label; a multi-way mode (e.g. 1-1-1, 2-2) is a tie (:data:`MAJORITY_RULE`)."""
    counts = Counter(votes).most_common()
    top = [label for label, c in counts if c == counts[0][1]]
    return top[0] if len(top) == 1 else "tie"


PANDALM_LABELS: dict[Any, Label] = {0: "tie", 1: "model_a", 2: "model_b"}


def pandalm_rows(records: Iterable[Mapping[str, Any]], source: str = "PandaLM") -> list[HumanRow]:
    """PandaLM test set rows (``instruction``, ``input``, ``response1``, ``response2``,
    ``annotator1..3`` with 0 = tie, 1 = response1, 2 = response2) -> majority of the 3.
    Non-text responses (the public test set has some) are kept as text and flagged."""
    rows: list[HumanRow] = []
    wheres: list[str] = []
    for i, rec in enumerate(records):
        where = f"{source}: row {i}"
        votes: list[Label] = []
        for key in ("annotator1", "annotator2", "annotator3"):
            if key not in rec:
                raise HumanDataError(f"{where}: missing column {key!r}")
            label = _lookup(PANDALM_LABELS, rec[key])
            if label is None:
                raise HumanDataError(f"{where}: unknown label value {rec[key]!r} in column {key!r}; known: 0, 1, 2")
            votes.append(label)
        odd: list[str] = []
        extra = rec.get("input")
        instruction = _lenient_text(rec, "instruction", "question", where, odd)
        question = instruction + ("\n\n" + extra if isinstance(extra, str) and extra.strip() else "")
        row = HumanRow(
            id=str(rec.get("idx", i)),
            question=question,
            response_a=_lenient_text(rec, "response1", "response_a", where, odd),
            response_b=_lenient_text(rec, "response2", "response_b", where, odd),
            human=majority_label(votes),
        )
        if odd:
            row["odd_fields"] = odd
        row["annotators"] = dict(zip(("annotator1", "annotator2", "annotator3"), votes, strict=True))
        rows.append(row)
        wheres.append(f"row {i}")
    _warn_odd(rows, wheres, source)
    return rows


def load_pandalm(
    name: str = "WeOpenML/PandaLM", split: str = "test", *, data_files: str | None = None
) -> list[HumanRow]:
    """PandaLM-Eval (999 items, majority of 3 annotators). ``data_files`` may point the
    ``json`` builder at a local/remote copy of ``data/testset-v1.json``."""
    ds = _hub("json", data_files=data_files, split="train") if data_files else _hub(name, split=split)
    return pandalm_rows(ds, source=data_files or name)


MT_BENCH_LABELS: dict[Any, Label] = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie"}


def mt_bench_rows(
    records: Iterable[Mapping[str, Any]],
    turn: int | None = None,
    source: str = "mt_bench",
    references: Mapping[str, Sequence[str]] | None = None,
) -> list[HumanRow]:
    """MT-Bench human judgments (one row per judge vote). ``turn=1``/``2`` keeps one turn.

    For turn 1 the question is the first user message and each response the first assistant
    answer. For turn 2 the question is the second user message, each response that model's
    second answer, and the turns before it (the first question and that model's own first
    answer) its ``context``/``context_b``: the judge sees both conversations and judges turn 2's
    answers (FastChat's multi-turn judging; :func:`item_question`). ``references`` (question id -> the
    reference answer of each turn, :func:`read_mt_bench_references`) gives each row its turn's ``reference``.
    """
    rows: list[HumanRow] = []
    for i, rec in enumerate(records):
        where = f"{source}: row {i}"
        t = rec.get("turn")
        if t not in (1, 2):
            raise HumanDataError(f"{where}: column 'turn' is {t!r}, expected 1 or 2")
        if turn is not None and t != turn:
            continue
        label = _lookup(MT_BENCH_LABELS, rec.get("winner"))
        if label is None:
            raise HumanDataError(
                f"{where}: unknown label value {rec.get('winner')!r} in column 'winner'; known: {', '.join(MT_BENCH_LABELS)}"
            )
        conv_a, conv_b = _conversation(rec, "conversation_a", where), _conversation(rec, "conversation_b", where)
        users = [m["content"] for m in conv_a if m["role"] == "user"]
        if len(users) < t:
            raise HumanDataError(f"{where}: conversation_a has {len(users)} user turns, needs {t}")
        row = HumanRow(
            id=f"{rec.get('question_id')}:{rec.get('model_a')}:{rec.get('model_b')}:t{t}:{rec.get('judge')}",
            question=users[t - 1],
            response_a=_answer(conv_a, t, where, "conversation_a"),
            response_b=_answer(conv_b, t, where, "conversation_b"),
            human=label,
        )
        if t > 1:
            row["context"] = _before_turn(conv_a, t)
            row["context_b"] = _before_turn(conv_b, t)
        ref = (references or {}).get(str(rec.get("question_id")))
        if ref is not None and len(ref) >= t and isinstance(ref[t - 1], str):
            row["reference"] = ref[t - 1]
        rows.append(row)
    return rows


def read_mt_bench_references(path: str | Path) -> dict[str, list[str]]:
    """FastChat's reference answers (``data/mt_bench/reference_answer/gpt-4.jsonl``): question id -> the
    reference of each turn (``choices[0].turns``); a line of another shape is an error naming it."""
    out: dict[str, list[str]] = {}
    for where, rec in _read(Path(path), "jsonl"):
        turns = ((rec.get("choices") or [{}])[0] or {}).get("turns")
        if "question_id" not in rec or not (isinstance(turns, list) and all(isinstance(t, str) for t in turns)):
            raise HumanDataError(f"{path}: {where}: expected question_id and choices[0].turns (a list of texts)")
        out[str(rec["question_id"])] = turns
    return out


def _before_turn(conv: list[dict[str, str]], turn: int) -> list[Message]:
    """The messages before the ``turn``-th user message (user and assistant only)."""
    out: list[Message] = []
    users = 0
    for m in conv:
        if m["role"] == "user":
            users += 1
            if users == turn:
                break
        if m["role"] in ("user", "assistant"):
            out.append({"role": "user" if m["role"] == "user" else "assistant", "content": m["content"]})
    return out


def _conversation(rec: Mapping[str, Any], key: str, where: str) -> list[dict[str, str]]:
    conv = rec.get(key)
    if not isinstance(conv, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conv):
        raise HumanDataError(f"{where}: column {key!r} is not a list of {{role, content}} messages")
    return conv


def _answer(conv: list[dict[str, str]], turn: int, where: str, key: str) -> str:
    answers = [m["content"] for m in conv if m["role"] == "assistant"]
    if len(answers) < turn:
        raise HumanDataError(f"{where}: {key} has {len(answers)} assistant turns, needs {turn}")
    return answers[turn - 1]


def load_mt_bench(
    split: str = "human",
    turn: int | None = None,
    name: str = "lmsys/mt_bench_human_judgments",
    references: str | None = None,
) -> list[HumanRow]:
    refs = read_mt_bench_references(references) if references else None
    return mt_bench_rows(_hub(name, split=split), turn=turn, source=f"{name}[{split}]", references=refs)


ALPACA_LABELS: dict[Any, Label] = {1: "model_a", 2: "model_b", 0: "tie", 1.5: "tie"}


def alpaca_eval_rows(records: Iterable[Mapping[str, Any]], source: str = "alpaca_eval") -> list[HumanRow]:
    """AlpacaFarm cross-annotations: several annotators per (instruction, output_1, output_2);
    ``preference`` 1 = output_1, 2 = output_2 (0 or 1.5 = tie). One row per pair, labelled
    with the annotators' majority (a multi-way mode, e.g. 2-2, is a tie)."""
    groups: dict[tuple[str, str, str], list[Label]] = {}
    for i, rec in enumerate(records):
        where = f"{source}: row {i}"
        key = (
            _need_text(rec, "instruction", where),
            _need_text(rec, "output_1", where),
            _need_text(rec, "output_2", where),
        )
        label = _lookup(ALPACA_LABELS, rec.get("preference"))
        if label is None:
            raise HumanDataError(
                f"{where}: unknown label value {rec.get('preference')!r} in column 'preference'; known: 0, 1, 1.5, 2"
            )
        groups.setdefault(key, []).append(label)
    return [
        HumanRow(id=str(i), question=q, response_a=a, response_b=b, human=majority_label(votes))
        for i, ((q, a, b), votes) in enumerate(groups.items())
    ]


def load_alpaca_eval(
    name: str = "tatsu-lab/alpaca_eval", config: str = "alpaca_farm_human_crossannotations", split: str = "validation"
) -> list[HumanRow]:
    return alpaca_eval_rows(_hub(name, config, split=split), source=f"{name}/{config}[{split}]")


def _need_text(rec: Mapping[str, Any], key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise HumanDataError(
            f"{where}: column {key!r} is {'missing' if key not in rec else type(v).__name__}, expected text"
        )
    return v


LOADERS: Registry[Callable[..., list[HumanRow]]] = Registry("human-labelled set")
for _name, _fn in (
    ("faireval", load_faireval),
    ("local", load_local),
    ("pandalm", load_pandalm),
    ("mt_bench", load_mt_bench),
    ("alpaca_eval", load_alpaca_eval),
):
    LOADERS.register(_name)(_fn)


def load_items(spec: EvalDataConfig | Mapping[str, Any]) -> tuple[list[HumanRow], dict[str, Any]]:
    """The human-labelled rows named by ``eval_data`` (:class:`~mapo.core.config.EvalDataConfig`, or the
    mapping a run folder's config.yaml holds).

    Relative paths are taken from the working directory, else from the repository root.
    Any problem is a :class:`ConfigError` naming the key, file and line.
    """
    data = EvalDataConfig.of(spec or {})
    if data.loader is None:
        raise ConfigError("eval_data is empty: choose a set, e.g. eval_data=faireval (conf/eval_data/)")
    loader, limit, families = data.loader, data.limit, data.families
    try:
        fn = LOADERS.get(str(loader), key="eval_data.loader")
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    kwargs = data.loader_kwargs()
    for key in ("path", "data_files", "references"):
        if isinstance(kwargs.get(key), str):
            p = Path(kwargs[key]).expanduser()
            if not p.is_absolute() and not p.exists():
                p = shipped_path(p)
            kwargs[key] = str(p)
    try:
        rows = fn(**kwargs)
    except HumanDataError as e:
        raise ConfigError(f"eval_data ({loader}): {e}") from None
    except TypeError as e:
        raise ConfigError(f"eval_data: loader {loader!r} does not take {sorted(kwargs)} ({e})") from None
    if limit is not None:
        if int(limit) < 1:
            raise ConfigError(f"eval_data.limit must be >= 1 or null, got {limit}")
        rows = rows[: int(limit)]
    if not rows:
        raise ConfigError(f"eval_data ({loader}): no items")
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise ConfigError(f"eval_data ({loader}): duplicate item id {r['id']!r}")
        seen.add(r["id"])
    info: dict[str, Any] = {
        "loader": loader,
        **{k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))},
        "limit": limit,
        "n_items": len(rows),
    }
    if families:
        info["families"] = {str(k): str(v) for k, v in families.items()}
    n_multi = sum("context" in r for r in rows)
    if n_multi:  # only then: a single-turn set's info (and evaluate's fingerprint) is as before
        info["multi_turn"] = n_multi
    n_annotated = sum("annotators" in r for r in rows)
    if n_annotated:
        info["annotators"] = list(rows[0].get("annotators") or [])
        info["majority_rule"] = MAJORITY_RULE
    return rows, info
