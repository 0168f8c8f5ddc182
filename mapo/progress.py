"""Progress for long stages: a tqdm bar on a terminal; periodic one-line summaries in logs
(SLURM output files) where redraws would be noise."""

from __future__ import annotations

import logging
import sys
import time

from mapo.client import ClientStats

log = logging.getLogger("mapo.progress")


class Progress:
    def __init__(self, desc: str, total: int | None, stats: ClientStats, mode: str = "auto", every_s: float = 30.0) -> None:
        self.desc, self.total, self.stats = desc, total, stats
        self.done = self.failed = 0
        self.t0 = time.monotonic()
        self.every_s = every_s
        self._last = self.t0
        self.mode = ("bar" if sys.stderr.isatty() else "log") if mode == "auto" else mode
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)

    def _postfix(self) -> dict:
        s = self.stats
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        return {"in_flight": s.in_flight, "retries": s.retries, "failed": self.failed,
                "tok": s.completion_tokens, "tok/s": round(s.completion_tokens / elapsed, 1), "cached": s.cached}

    def update(self, n: int = 1, failed: bool = False) -> None:
        self.done += n
        self.failed += int(failed)
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(self._postfix(), refresh=False)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last >= self.every_s or (self.total and self.done >= self.total):
                self._last = now
                self.log_line()

    def log_line(self) -> None:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed else 0.0
        eta = (self.total - self.done) / rate if rate and self.total else float("nan")
        p = self._postfix()
        log.info("%s: %d/%s items, %.2f/s, eta %.0fs, in flight %d, retries %d, failed %d, %d tokens (%.1f tok/s)",
                 self.desc, self.done, self.total if self.total is not None else "?", rate, eta,
                 p["in_flight"], p["retries"], p["failed"], p["tok"], p["tok/s"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log":
            self.log_line()
