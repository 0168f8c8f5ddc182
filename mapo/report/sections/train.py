"""Sections of a ``mapo train`` run: what was trained and how, the training metrics (``metrics.jsonl``),
the held-out evaluation before and after training, and where the trained model's config lives."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mapo.report import plots
from mapo.report.document import Block, Code, Fig, Section, Table, Text, dur, num
from mapo.report.run import Run

__all__ = ["EVAL_KEYS", "PLOTTED", "eval_before_after", "train_sections"]

PLOTTED = ("loss", "rewards/accuracies", "rewards/margins")
"""The metric panels (train line and eval points in each), as ``mapo train``'s own metrics.png."""

EVAL_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
"""The rows of the before/after table, where the eval records have them."""


def _config(run: Run) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(run.config_text or "") or {}
    except yaml.YAMLError:
        return {}  # the Config section still shows the text
    return cfg if isinstance(cfg, dict) else {}


def _lora(cfg: Mapping[str, Any]) -> str:
    lora = cfg.get("lora") or {}
    if not isinstance(lora, Mapping) or not lora:
        return "–"
    if not lora.get("enabled"):
        return "off (full fine-tuning)"
    modules = lora.get("target_modules")
    modules = ", ".join(map(str, modules)) if isinstance(modules, list) else modules
    text = f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, modules {modules}"
    if lora.get("options"):
        text += ", " + ", ".join(f"{k}={v}" for k, v in lora["options"].items())
    return text + " (merged into the saved model)"


def _setting(v: Any) -> Any:
    # as set, not rounded for a table: a learning rate of 1e-6 is not "0.000"
    if isinstance(v, float):
        return f"{v:g}"
    return v if isinstance(v, (int, str, bool)) or v is None else str(v)


def _setup(run: Run, cfg: Mapping[str, Any]) -> Section:
    m = run.manifest
    split = cfg.get("split") or {}
    rows: list[list[Any]] = [
        ["method", str(m.get("method") or cfg.get("method") or "?").upper()],
        ["base model", m.get("base_model") or cfg.get("base_model")],
    ]
    if m.get("base_weights") and m.get("base_weights") != m.get("base_model"):
        rows.append(["base weights", m["base_weights"]])
    rows.append(["dataset", m.get("dataset") or cfg.get("dataset")])
    rows.append(["LoRA", _lora(cfg)])
    if isinstance(split, Mapping) and split:
        rows.append(["split", f"eval_fraction {split.get('eval_fraction')}, seed {split.get('seed')} (by prompt id)"])
    data = m.get("data") or {}
    if data:
        rows.append(["data", ", ".join(f"{k} {num(v)}" for k, v in data.items())])
    kto = m.get("kto_weights")
    if kto:
        how = "from the label counts" if kto.get("auto") else "set"
        rows.append(["KTO weights", f"desirable {kto.get('desirable')}, undesirable {kto.get('undesirable')} ({how})"])
    for key, label in (("precision", "precision"), ("world_size", "processes"), ("device", "device")):
        if m.get(key) is not None:
            rows.append([label, m[key]])
    if m.get("versions"):
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())])
    blocks: list[Block] = [Table(["setting", "value"], rows)]
    trl = m.get("trl_args") or cfg.get("trl") or {}
    if trl:
        blocks.append(
            Table(
                ["TRL key", "value"],
                [[k, _setting(v)] for k, v in trl.items()],
                caption="The keys set under trl: (passed to TRL's config; every other field keeps TRL's default).",
            )
        )
    return Section("Training setup", blocks)


def _progress(run: Run, records: Sequence[Mapping[str, Any]]) -> Section:
    m = run.manifest
    status = m.get("status", "?")
    logged = [r["step"] for r in records if isinstance(r.get("step"), int)]
    step = m.get("global_step", max(logged, default=None))
    rows: list[list[Any]] = [["status", status], ["global step", step]]
    if m.get("steps_this_run") is not None:
        rows.append(["steps this run", m["steps_this_run"]])
    rows.append(["steps / s", num(m.get("steps_per_s"), 4) if m.get("steps_per_s") else None])
    if m.get("resumed_from"):
        rows.append(["resumed from", m["resumed_from"]])
    if m.get("final_train_loss") is not None:
        rows.append(["final train loss", num(m["final_train_loss"], 4)])
    timings = m.get("timings_s") or {}
    for k in ("train", "wall"):
        if timings.get(k) is not None:
            rows.append([f"{k} time", dur(timings[k])])
    if m.get("reason"):  # stopped or interrupted: why
        rows.append(["reason", m["reason"]])
    error = m.get("error")
    if isinstance(error, Mapping):  # {type, message, traceback}, as every command records a failure
        rows.append(["error", f"{error.get('type')}: {error.get('message')}"])
    elif error:  # manifests of older versions: one string
        rows.append(["error", error])
    blocks: list[Block] = [Table(["field", "value"], rows)]
    if status != "complete":
        blocks.insert(
            0,
            Text(
                f"This training is not complete (status: {status}): the figures cover the metrics logged so far; "
                "rerun the same command to resume from its last checkpoint.",
            ),
        )
    return Section("Training progress", blocks)


def _metrics_section(run: Run, records: Sequence[Mapping[str, Any]]) -> Section:
    if not any(k in r for r in records for k in PLOTTED):
        return Section("Training metrics", [Text("metrics.jsonl holds no loss or reward metrics yet.", note=True)])
    m = run.manifest
    title = f"{str(m.get('method') or '').upper()} of {m.get('base_model', '?')}".strip()
    blocks: list[Block] = [
        Fig(
            "training_metrics",
            plots.training_metrics(records, PLOTTED, title=title),
            "Loss, reward accuracy (share of pairs whose chosen response gets the higher implicit reward) and "
            "reward margin (chosen minus rejected) against the step: train lines, eval points on the held-out prompts.",
        )
    ]
    train = [r for r in records if r.get("split") == "train" and any(k in r for k in PLOTTED)]
    if train:
        first, last = train[0], train[-1]
        rows = [[k, first.get(k), last.get(k)] for k in PLOTTED if k in first or k in last]
        blocks.append(
            Table(
                ["train metric", f"first logged (step {first.get('step')})", f"last logged (step {last.get('step')})"],
                [[k, num(a, 4), num(b, 4)] for k, a, b in rows],
            )
        )
    return Section("Training metrics", blocks)


def eval_before_after(
    manifest: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The eval metrics at step 0 and at the last evaluated step: the manifest's ``eval_before`` /
    ``eval_after``, else (a run killed before it wrote them) the eval records of ``metrics.jsonl``."""
    evals = [r for r in records if r.get("split") == "eval" and isinstance(r.get("step"), int)]
    before, after = manifest.get("eval_before"), manifest.get("eval_after")
    if not before and evals:
        at0 = [r for r in evals if r["step"] == 0]
        before = dict(at0[-1]) if at0 else None
    if not after and evals:
        last = max(r["step"] for r in evals)
        after = dict([r for r in evals if r["step"] == last][-1]) if last > 0 else None
    return before, after


def _before_after(run: Run, records: Sequence[Mapping[str, Any]]) -> Section:
    title = "Held-out evaluation: before and after training"
    before, after = eval_before_after(run.manifest, records)
    if not before and not after:
        note = (
            "No evaluation on held-out prompts (split.eval_fraction=0)."
            if (run.manifest.get("data") or {}).get("eval_rows") == 0
            else "No eval metrics logged yet."
        )
        return Section(title, [Text(note, note=True)])
    b, a = before or {}, after or {}
    rows = []
    for k in EVAL_KEYS:
        x, y = b.get(k), a.get(k)
        if x is None and y is None:
            continue
        change = y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None
        rows.append([k, num(x, 4), num(y, 4), num(change, 4) if change is None else f"{change:+.4f}"])
    header = ["eval metric", f"before (step {b.get('step', 0)})", f"after (step {a.get('step', '–')})", "change"]
    n = (run.manifest.get("data") or {}).get("eval_rows")
    note = (
        f"On the held-out prompts ({num(n)} rows; no held-out prompt was trained on). "
        if n
        else "On the held-out prompts. "
    ) + (
        "Rewards are the implicit rewards of the trained policy against the base (reference) model: at step 0 the "
        "policy is the base, so they are 0 and the accuracy is 0; a rising accuracy and margin mean the model "
        "learned to prefer the chosen responses of prompts it never saw."
    )
    return Section(title, [Text(note, note=True), Table(header, rows)])


def _model_section(run: Run) -> Section:
    m = run.manifest
    name = m.get("name")
    title = "Trained model"
    if not name or m.get("status") != "complete":
        return Section(
            title, [Text("No trained model yet: the model is saved when the training completes.", note=True)]
        )
    # the copy in this folder wins over the path recorded at training time (the folder may have moved)
    conf = run.dir / "conf" / "model" / f"{name}.yaml"
    if not conf.exists() and m.get("model_config"):
        conf = Path(m["model_config"])
    model_dir = run.dir / "model" if (run.dir / "model").is_dir() else Path(m.get("model_dir") or run.dir / "model")
    rows: list[list[Any]] = [
        ["model name", name],
        ["weights", str(model_dir)],
        ["model config", str(conf)],
        ["saved as", m.get("save_dtype")],
    ]
    serve = f"python -m serve up --conf-dir {shlex.quote(str(conf.parent))} --model {shlex.quote(name)}"
    blocks: list[Block] = [
        Table(["field", "value"], rows),
        Text("Serve it with vLLM (every role can then name it):"),
        Code("serve command", serve, "sh"),
    ]
    base = str(m.get("base_model") or "")
    prompts = run.dir / "eval_prompts.jsonl"
    if base and "/" not in base and prompts.exists():  # a conf/model name (a local folder has no model entry)
        use = (
            f"mapo winrate hydra.searchpath=[file://{conf.parent.parent}] 'model=[{base},{name}]' "
            f"'configurations=[{{name: trained, generator: {name}, reviewers: []}}]' 'roles.baselines=[{base}]' "
            f"roles.judge=JUDGE prompts.source=file prompts.path={prompts} prompts.limit=null"
        )
        blocks += [
            Text(
                "Its win rate against the base model on the held-out prompts (any configured judge; "
                "the report of that run shows the trained-vs-base table):"
            ),
            Code("winrate command", use, "sh"),
        ]
    return Section(title, blocks)


def train_sections(run: Run, n_examples: int = 3) -> list[Section]:
    """Every section specific to a train run, in report order (``n_examples`` is unused: no examples)."""
    del n_examples
    records = run.records("metrics.jsonl")
    return [
        _setup(run, _config(run)),
        _progress(run, records),
        _metrics_section(run, records),
        _before_after(run, records),
        _model_section(run),
    ]
