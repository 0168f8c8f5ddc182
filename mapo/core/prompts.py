"""Prompt templates are files: ``prompts/<set>/<name>.txt``, referenced by name.

Placeholders are ``{field}``; a template is checked against the fields supplied when it is
rendered, and its SHA-256 is recorded with every judgement so results name their prompt.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mapo.core.config import ConfigError, resource_dir
from mapo.core.types import Message


def prompts_root() -> Path:
    """``$MAPO_PROMPTS``, else the shipped prompts/ folder."""
    return Path(os.environ.get("MAPO_PROMPTS", resource_dir("prompts")))


@dataclass(frozen=True)
class Template:
    """One prompt file: its text and the ``{field}`` placeholders it needs."""

    set: str
    name: str
    text: str
    fields: frozenset[str]

    @property
    def sha(self) -> str:
        """First 16 hex digits of the text's SHA-256: recorded with every result it produced."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def render(self, **values: object) -> str:
        """The text with ``values`` filled in; exactly the template's placeholders must be given."""
        missing = self.fields - values.keys()
        extra = values.keys() - self.fields
        if missing or extra:
            raise ConfigError(
                f"prompts/{self.set}/{self.name}.txt: placeholders {sorted(self.fields)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        return self.text.format(**values)


@cache
def load(prompt_set: str, name: str) -> Template:
    """``prompts/<prompt_set>/<name>.txt`` (cached); ConfigError naming the file when missing or malformed."""
    path = prompts_root() / prompt_set / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (prompts_root() / prompt_set).glob("*.txt"))
        raise ConfigError(
            f"no prompt {name!r} in set {prompt_set!r} ({path}); available: {', '.join(available) or 'none'}"
        )
    text = path.read_text(encoding="utf-8").rstrip("\n")
    try:
        fields = frozenset(f for _, f, _, _ in string.Formatter().parse(text) if f)
    except ValueError as e:
        raise ConfigError(f"{path}: bad placeholder syntax ({e}); write literal braces as {{{{ }}}}") from None
    return Template(set=prompt_set, name=name, text=text, fields=fields)


# Delimiters our templates own; look-alikes inside judged text are defused so a response
# cannot close its own block or declare its own verdict.
_DELIMITER_MARKERS = (
    "[The Start of",
    "[The End of",
    "[Start of",
    "[End of",
    "< Start of",
    "< End of",
    "< The Start of",
    "< The End of",
    "###",
)


def quote_untrusted(text: str) -> str:
    """``text`` with our block delimiters defused (a zero-width space after their first character)."""
    for marker in _DELIMITER_MARKERS:
        if marker in text:
            text = text.replace(marker, marker[0] + "\u200b" + marker[1:])
    return text


def render_turns(template: Callable[[str], Template], turns: Sequence[Message], assistant: str) -> str:
    """A conversation as one block of text for a judge or a reviewer to read: each turn through
    ``multiturn_turn_user`` / ``multiturn_turn_assistant`` (``assistant`` names the answering side), joined
    by a blank line, every turn's text defused (:func:`quote_untrusted`). ``template`` loads a prompt of
    the caller's prompt set by name."""
    user, answer = template("multiturn_turn_user"), template("multiturn_turn_assistant")
    return "\n\n".join(
        user.render(content=quote_untrusted(m["content"]))
        if m["role"] == "user"
        else answer.render(assistant=assistant, content=quote_untrusted(m["content"]))
        for m in turns
    )
