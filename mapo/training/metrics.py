"""Training metrics: one JSONL record per log event (train, eval, summary) and a PNG plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mapo.core.store import atomic_write_text, iter_records

__all__ = ["PLOTTED", "MetricsLog", "plot_metrics", "read_metrics", "truncate_after"]

log = logging.getLogger(__name__)

PLOTTED = ("loss", "rewards/accuracies", "rewards/margins")
"""The panels of ``metrics.png``: train and eval lines in each."""

_SUMMARY = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def _record_of(logs: dict[str, Any], step: int, epoch: float | None) -> dict[str, Any]:
    """A log dict of the HF Trainer -> ``{"split": train|eval|summary, "step", "epoch", <metric>: value}``.

    >>> _record_of({"eval_loss": 0.6, "eval_rewards/accuracies": 1.0}, 4, 2.0)["split"]
    'eval'
    """
    if any(k.startswith("eval_") for k in logs):
        split = "eval"
        values = {k.removeprefix("eval_"): v for k, v in logs.items()}
    elif any(k in logs for k in _SUMMARY):
        split, values = "summary", dict(logs)
    else:
        split, values = "train", dict(logs)
    return {"split": split, "step": step, "epoch": epoch, "time": round(time.time(), 3), **values}


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def MetricsLog(path: Path, *, echo: bool) -> Any:  # noqa: N802 (a class factory: transformers is imported late)
    """A ``TrainerCallback`` that appends every log event to ``path`` (world process zero only) and,
    with ``echo``, logs a one-line summary of it (the progress shown when there is no bar)."""

    class _MetricsLog(_callback_base()):  # type: ignore[misc]
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or not state.is_world_process_zero:
                return
            rec = _record_of(dict(logs), state.global_step, state.epoch)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, default=float) + "\n")
            if echo and rec["split"] != "summary":
                shown = {k: rec[k] for k in ("loss", *PLOTTED[1:], "learning_rate") if k in rec}
                log.info(
                    "%s step %d/%d: %s",
                    rec["split"],
                    state.global_step,
                    state.max_steps,
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()),
                )

    return _MetricsLog()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` ([] when absent)."""
    return list(iter_records(path)) if path.exists() else []


def truncate_after(path: Path, step: int) -> int:
    """Drop records logged after ``step`` (a killed run logged them past its last checkpoint; the
    resumed run logs those steps again). Returns how many were dropped."""
    records = read_metrics(path)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


def plot_metrics(records: list[dict[str, Any]], out: Path, title: str) -> bool:
    """Loss, reward accuracy and reward margin against the step, train and eval; False if nothing to plot."""
    if not any(k in r for r in records for k in PLOTTED):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.4))
    for ax, key in zip(axes, PLOTTED, strict=True):
        for split, style in (("train", "-"), ("eval", "o--")):
            pts = [(r["step"], r[key]) for r in records if r["split"] == split and isinstance(r.get(key), int | float)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=4)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True
