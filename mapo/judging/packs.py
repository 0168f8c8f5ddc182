"""Judge packs: specialised judge models with their own published prompts and output formats.

Each pack is a judge strategy (``judge.strategy``): a :class:`Pack`, the same kind of
:class:`~mapo.judging.strategy.Strategy` object as the paper's three, registered in
:data:`mapo.judging.judge.STRATEGIES`, so a :class:`~mapo.judging.judge.Judge` runs it (and
``mapo reparse`` replays it) with everything a judge has: both orders, re-asks, constrained decoding where the
server supports it, ``judge.scoring=expected`` where the format allows, records and resume.

=====================  ==============================  ===========================  ==========
strategy               model (conf/model)              answer                       parser
=====================  ==============================  ===========================  ==========
prometheus_absolute    prometheus-7b-v2 (1-5 rubric)   ``Feedback ... [RESULT] 4``  prometheus_score
prometheus_relative    prometheus-7b-v2 (A/B)          ``Feedback ... [RESULT] B``  prometheus_pick
judgelm                judgelm-7b                      ``8 9`` then the reasons     judgelm_pair
pandalm                pandalm-7b                      ``1`` / ``2`` / ``Tie``      pandalm_pick
skywork_critic         skywork-critic-8b               ``[[A]]`` / ``[[B]]``        skywork_pick
=====================  ==============================  ===========================  ==========

Prompts are data: ``prompts/<pack>/`` holds each pack's published template (its source in
``prompts/<pack>/SOURCE.md``) and a re-ask. ``prometheus_absolute`` is pointwise: each response
is scored alone in its own conversation (like ``independent``), equal scores are a tie. The
relative formats of Prometheus and Skywork-Critic have no tie: a tie comes only from
disagreeing orders (``judge.both_orders``) or, for the scoring packs, equal scores.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from mapo.core import prompts
from mapo.core.types import Message, Question
from mapo.judging.strategy import Asker, Strategy

__all__ = ["PACKS", "Pack", "pack_prompt_sha"]


@dataclass(frozen=True, kw_only=True)
class Pack(Strategy):
    """One pack: its prompt files (in ``judge.prompt_set``), parser kind and fixed scale."""

    system: str
    user: str
    scale: int | None
    """The score total its format fixes (None: a pick, any ``judge.scale`` is unused)."""
    rubric: str | None = None
    """A prompt file holding the score rubric (Prometheus), rendered into the user prompt."""

    def parse_kwargs(self, scale: int) -> dict[str, Any]:
        return {"scale": scale} if self.scale else {}

    def prompt_sha(self, judge: Asker) -> str:
        return pack_prompt_sha(judge.config.prompt_set, self)

    def pair_messages(self, judge: Asker, question: Question, first: str, second: str) -> list[Message]:
        return self._messages(judge, question=self.single_turn(question), response_a=first, response_b=second)

    def single_messages(self, judge: Asker, question: Question, response: str) -> list[Message]:
        return self._messages(judge, question=self.single_turn(question), response=response)

    def _messages(self, judge: Asker, **fields: str) -> list[Message]:
        values = {k: prompts.quote_untrusted(v) for k, v in fields.items()}
        if self.rubric:
            values["rubric"] = judge.template(self.rubric).text
        system = judge.template(self.system).text
        user = judge.template(self.user).render(**values)
        out: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
        return [*out, {"role": "user", "content": user}]


# fmt: off
_PACK_TABLE: tuple[tuple[str, str, str, str, str, int | None, str | None, bool], ...] = (
    # name                 system             user             reask             parser              scale rubric             pointwise
    ("prometheus_absolute", "absolute.system", "absolute.user", "reask_absolute", "prometheus_score", 5,    "rubric_absolute", True),
    ("prometheus_relative", "relative.system", "relative.user", "reask_relative", "prometheus_pick",  None, "rubric_relative", False),
    ("judgelm",             "judge.system",    "judge.user",    "reask",          "judgelm_pair",     10,   None,              False),
    ("pandalm",             "judge.system",    "judge.user",    "reask",          "pandalm_pick",     None, None,              False),
    ("skywork_critic",      "judge.system",    "judge.user",    "reask",          "skywork_pick",     None, None,              False),
)
# fmt: on
"""One row per pack (the module doc's table): its prompt files in ``prompts/<pack>/``, parser kind, fixed scale,
rubric file and whether it scores each response alone."""

PACKS: dict[str, Pack] = {
    name: Pack(
        name=name,
        system=system,
        user=user,
        reask=reask,
        parser=parser,
        scale=scale,
        rubric=rubric,
        pointwise=pointwise,
        keeps_side_logprobs=pointwise,  # judge.scoring=expected: each side's distributions, as independent keeps them
    )
    for name, system, user, reask, parser, scale, rubric, pointwise in _PACK_TABLE
}
"""``judge.strategy`` -> its pack."""


def pack_prompt_sha(prompt_set: str, pack: Pack) -> str:
    """One hash over every template the pack sends (system, user, rubric, re-ask)."""
    names = [pack.system, pack.user, pack.reask, *([pack.rubric] if pack.rubric else [])]
    joined = "\0".join(prompts.load(prompt_set, n).text for n in names)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]
