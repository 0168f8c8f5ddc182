"""The one secret scrubber: API keys never reach a message, a log line, a record or a manifest.

The client registers every key it sends (``api_key_env`` values, endpoint key files) with
:func:`register`; :func:`scrub` replaces each registered value, and every ``Authorization:
Bearer ...`` value, with ``[redacted]``. Text that can carry server or exception text goes
through it where it is written: log records (:func:`install_log_scrubber`, installed once at
import of the client), record lines (``RecordStore.append``), run files (``atomic_write_text``)
and the run's ending messages.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8
"""Shorter values (``EMPTY``, test placeholders) are not scrubbed: they would blank ordinary words."""

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+")
_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(value: str | None) -> None:
    """Scrub ``value`` from everything written from now on (values under 8 characters are ignored)."""
    global _pattern
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # longest first: a key that contains another is replaced whole
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def scrub(text: str, *, bearer: bool = True) -> str:
    """``text`` with every registered secret, and (``bearer``) every ``Bearer <token>`` value,
    replaced by ``[redacted]``. Records of model text pass ``bearer=False``: a response that
    explains HTTP authentication is data, and the keys mapo sends are registered anyway."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if bearer and "earer" in text:
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def scrub_value(value: Any) -> Any:
    """:func:`scrub` applied to every string inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_value(v) for v in value)
    return value


class _ScrubbingFilter(logging.Filter):
    """Formats a record's message (and its traceback) once, scrubbed, before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_mapo_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        record._mapo_scrubbed = True
        return True


_installed = False


def install_log_scrubber() -> None:
    """Scrub every log record of every logger, whatever handlers are configured later (Hydra's
    console and app.log): each record is scrubbed by the record factory as it is created."""
    global _installed
    if _installed:
        return
    _installed = True
    old_factory = logging.getLogRecordFactory()
    scrubber = _ScrubbingFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        scrubber.filter(record)
        return record

    logging.setLogRecordFactory(factory)
