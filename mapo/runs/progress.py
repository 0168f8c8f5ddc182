"""Progress for long runs: a tqdm bar on a terminal; periodic one-line summaries in logs
(SLURM output files) where redraws would be noise.

A run shows movement from its first seconds, before any item finishes: every display counts
requests (done and in flight) and, for commands with stages (``build``: feedback, judge;
``winrate``: generation, judge), how many items passed each stage. The ETA comes from the
share of stage work done in this session (items resumed from an earlier run are left out of
it), so it appears as soon as one item passed one stage. One log line looks like::

    build: items 3/20 (15.0%) · requests 37 done, 16 in flight · feedback 12/20, judge 3/20 ·
    elapsed 0:01:05, eta 0:03:25 · retries 0, cached 0, failed 0 · 8421 tokens (129.6 tok/s)

In log mode a heartbeat thread writes a line every ``every_s`` seconds even when nothing
finishes, so a stalled run (a slow or hung server) is visible as requests in flight with the
counts standing still. ``$MAPO_PROGRESS_EVERY_S`` fixes that interval; unset, it is 30 s for the
first five minutes and then a tenth of the elapsed time, so the log of a long run stays short
(about 25 lines for 20 minutes, 60 for ten hours).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
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


DEFAULT_EVERY_S = 30.0


def _default_every_s() -> float | None:
    """``$MAPO_PROGRESS_EVERY_S`` as a fixed interval; None (unset or unreadable): the adaptive default."""
    try:
        return float(os.environ["MAPO_PROGRESS_EVERY_S"])
    except (KeyError, ValueError):
        return None


class Progress:
    """Counts items (and their stages) of one run; ``mode``: auto (bar on a TTY, else log) | bar | log | off."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        stats: ClientStats,
        mode: str = "auto",
        every_s: float | None = None,
        stages: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; allowed: {', '.join(MODES)}")
        self.desc, self.total, self.stats = desc, total, stats
        self.done = self.failed = self.resumed = 0
        self.stages: dict[str, int] = dict.fromkeys(stages, 0)
        self.t0 = time.monotonic()
        fixed = _default_every_s() if every_s is None else every_s
        self.adaptive = fixed is None
        self.every_s = DEFAULT_EVERY_S if fixed is None else fixed
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
    def fraction(self) -> float | None:
        """Share of this session's work done (items resumed from an earlier run left out): the mean
        share of its items past each stage, or of items done without stages; None when unknown."""
        if self.total is None:
            return None
        todo = self.total - self.resumed
        if todo <= 0:
            return 1.0
        counts = list(self.stages.values()) or [self.done]
        return max(0.0, min(1.0, sum(c - self.resumed for c in counts) / (len(counts) * todo)))

    def snapshot(self) -> dict[str, Any]:
        """Every figure a display shows, as numbers (None = unknown)."""
        s = self.stats
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        f = self.fraction()
        eta = elapsed * (1 - f) / f if f else None
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
            "stages": dict(self.stages),
        }

    def _postfix(self) -> dict:
        p = self.snapshot()
        return {
            "requests": p["requests"],
            "in_flight": p["in_flight"],
            **p["stages"],
            "retries": p["retries"],
            "failed": p["failed"],
            "tok": p["tokens"],
            "tok/s": round(p["tok_per_s"], 1),
            "cached": p["cached"],
        }

    def format_line(self) -> str:
        p = self.snapshot()
        total = p["total"]
        of = total if total is not None else "?"
        pct = f" ({100 * p['done'] / total:.1f}%)" if total else ""
        parts = [
            f"{self.desc}: items {p['done']}/{of}{pct}",
            f"requests {p['requests']} done, {p['in_flight']} in flight",
        ]
        if p["stages"]:
            parts.append(", ".join(f"{name} {n}/{of}" for name, n in p["stages"].items()))
        parts += [
            f"elapsed {format_duration(p['elapsed_s'])}, eta {format_duration(p['eta_s'])}",
            f"retries {p['retries']}, cached {p['cached']}, failed {p['failed']}",
            f"{p['tokens']} tokens ({p['tok_per_s']:.1f} tok/s)",
        ]
        return " · ".join(parts)

    # ---- updates ---------------------------------------------------------------------
    def update(self, n: int = 1, failed: bool = False, resumed: bool = False) -> None:
        """``n`` items finished (``failed``: without a result); ``resumed``: done by an earlier run
        (counted past every stage, and left out of the ETA)."""
        self.done += n
        self.failed += int(failed)
        if resumed:
            self.resumed += n
            for name in self.stages:
                self.stages[name] += n
        self._refresh(n)

    def stage(self, name: str, n: int = 1) -> None:
        """``n`` items passed stage ``name`` (one of ``stages``, or a new one)."""
        self.stages[name] = self.stages.get(name, 0) + n
        self._refresh(0)

    def _refresh(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(self._postfix(), refresh=n == 0)
        elif self.mode == "log" and self._due():
            self.log_line()

    def _interval(self) -> float:
        """Seconds between log lines: fixed, or (adaptive) a tenth of the elapsed time, at least every_s."""
        if not self.adaptive:
            return self.every_s
        return max(self.every_s, (time.monotonic() - self.t0) / 10)

    def _due(self) -> bool:
        with self._lock:
            return time.monotonic() - self._last >= self._interval()

    def log_line(self) -> None:
        with self._lock:
            self._last = time.monotonic()
        log.info("%s", self.format_line())

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every_s, 1.0)):
            if self._due():
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
