"""Progress for long stages: a tqdm bar on a terminal; periodic one-line summaries in logs
(SLURM output files) where redraws would be noise.

Every display shows items done/total, rate, ETA, requests in flight, retries, failed items
and tokens so far (with tokens/s). In log mode a heartbeat thread writes a line every
``every_s`` seconds (``$MAPO_PROGRESS_EVERY_S``, default 30) *even when no item finishes*, so
a stalled stage (a slow or hung server) is visible in the log as ``in flight N`` with the
done count standing still. One line looks like::

    build: 120/500 items (24.0%), 1.85 items/s, elapsed 0:01:05, eta 0:03:25, in flight 64,
    requests 1210, retries 3, cached 0, failed 1, 84211 tokens (1295.6 tok/s)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any

from mapo.llm.client import ClientStats

__all__ = ["Progress", "format_duration"]

log = logging.getLogger("mapo.runs.progress")

MODES = ("auto", "bar", "log", "off")


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _default_every_s() -> float:
    try:
        return float(os.environ.get("MAPO_PROGRESS_EVERY_S", "30"))
    except ValueError:
        return 30.0


class Progress:
    """Counts items of one stage; ``mode``: auto (bar on a TTY, else log) | bar | log | off."""

    def __init__(
        self, desc: str, total: int | None, stats: ClientStats, mode: str = "auto", every_s: float | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; allowed: {', '.join(MODES)}")
        self.desc, self.total, self.stats = desc, total, stats
        self.done = self.failed = 0
        self.t0 = time.monotonic()
        self.every_s = _default_every_s() if every_s is None else every_s
        self._last = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self.mode = ("bar" if sys.stderr.isatty() else "log") if mode == "auto" else mode
        self._bar = None
        self._heartbeat: threading.Thread | None = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
        elif self.mode == "log":
            log.info("%s: started, %s items", desc, total if total is not None else "?")
            if self.every_s > 0:
                self._heartbeat = threading.Thread(target=self._beat, name=f"progress-{desc}", daemon=True)
                self._heartbeat.start()

    # ---- figures ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every figure a display shows, as numbers (None = unknown)."""
        s = self.stats
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if (rate > 0 and self.total is not None) else None
        return {
            "done": self.done,
            "total": self.total,
            "failed": self.failed,
            "elapsed_s": elapsed,
            "rate": rate,
            "eta_s": max(eta, 0.0) if eta is not None else None,
            "in_flight": s.in_flight,
            "requests": s.requests,
            "retries": s.retries,
            "cached": s.cached,
            "tokens": s.completion_tokens,
            "tok_per_s": s.completion_tokens / elapsed,
        }

    def _postfix(self) -> dict:
        p = self.snapshot()
        return {
            "in_flight": p["in_flight"],
            "retries": p["retries"],
            "failed": p["failed"],
            "tok": p["tokens"],
            "tok/s": round(p["tok_per_s"], 1),
            "cached": p["cached"],
        }

    def format_line(self) -> str:
        p = self.snapshot()
        total = p["total"]
        pct = f" ({100 * p['done'] / total:.1f}%)" if total else ""
        rate = f"{p['rate']:.2f} items/s" if p["rate"] >= 0.01 or p["done"] == 0 else f"{1 / p['rate']:.0f} s/item"
        return (
            f"{self.desc}: {p['done']}/{total if total is not None else '?'} items{pct}, {rate}, "
            f"elapsed {format_duration(p['elapsed_s'])}, eta {format_duration(p['eta_s'])}, "
            f"in flight {p['in_flight']}, requests {p['requests']}, retries {p['retries']}, cached {p['cached']}, "
            f"failed {p['failed']}, {p['tokens']} tokens ({p['tok_per_s']:.1f} tok/s)"
        )

    # ---- updates ---------------------------------------------------------------------
    def update(self, n: int = 1, failed: bool = False) -> None:
        self.done += n
        self.failed += int(failed)
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(self._postfix(), refresh=False)
        elif self.mode == "log":
            with self._lock:
                due = time.monotonic() - self._last >= self.every_s
            if due:
                self.log_line()

    def log_line(self) -> None:
        with self._lock:
            self._last = time.monotonic()
        log.info("%s", self.format_line())

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every_s, 1.0)):
            with self._lock:
                due = time.monotonic() - self._last >= self.every_s
            if due:
                self.log_line()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.close()
        elif self.mode == "log":
            log.info("%s (finished)", self.format_line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
