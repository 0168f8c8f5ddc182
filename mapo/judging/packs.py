"""Judge packs: specialised judge models with their own published prompts and output formats.

Each pack is a judge strategy (``judge.strategy``), registered in
:data:`mapo.judging.judge.STRATEGIES` like the paper's three, so a :class:`~mapo.judging.judge.Judge`
runs it with everything a judge has: both orders, re-asks, constrained decoding where the
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

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mapo.core import prompts
from mapo.core.types import Message, Verdict

if TYPE_CHECKING:
    from mapo.judging.judge import Attempt, Judge

__all__ = ["PACKS", "Pack", "pack_prompt_sha"]


@dataclass(frozen=True)
class Pack:
    """One pack: its prompt files (in ``judge.prompt_set``), parser kind and fixed scale."""

    system: str
    user: str
    reask: str
    parser: str
    scale: int | None
    """The score total its format fixes (None: a pick, any ``judge.scale`` is unused)."""
    rubric: str | None = None
    """A prompt file holding the score rubric (Prometheus), rendered into the user prompt."""
    pointwise: bool = False


PACKS: dict[str, Pack] = {
    "prometheus_absolute": Pack(
        "absolute.system", "absolute.user", "reask_absolute", "prometheus_score", 5, "rubric_absolute", True
    ),
    "prometheus_relative": Pack(
        "relative.system", "relative.user", "reask_relative", "prometheus_pick", None, "rubric_relative"
    ),
    "judgelm": Pack("judge.system", "judge.user", "reask", "judgelm_pair", 10),
    "pandalm": Pack("judge.system", "judge.user", "reask", "pandalm_pick", None),
    "skywork_critic": Pack("judge.system", "judge.user", "reask", "skywork_pick", None),
}
"""``judge.strategy`` -> its pack."""


def pack_prompt_sha(prompt_set: str, pack: Pack) -> str:
    """One hash over every template the pack sends (system, user, rubric, re-ask)."""
    names = [pack.system, pack.user, pack.reask, *([pack.rubric] if pack.rubric else [])]
    joined = "\0".join(prompts.load(prompt_set, n).text for n in names)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def _messages(judge: Judge, pack: Pack, **fields: str) -> list[Message]:
    values = {k: prompts.quote_untrusted(v) for k, v in fields.items()}
    if pack.rubric:
        values["rubric"] = judge.template(pack.rubric).text
    system = judge.template(pack.system).text
    user = judge.template(pack.user).render(**values)
    out: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
    return [*out, {"role": "user", "content": user}]


async def _pairwise(name: str, judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    pack = PACKS[name]
    messages = _messages(judge, pack, question=question, response_a=first, response_b=second)
    kwargs = {"scale": judge.config.scale} if pack.scale else {}
    return await judge.converse(messages, pack.parser, pack.reask, order, **kwargs)


async def _pointwise(name: str, judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    """Each response scored alone in its own conversation; the pick compares the two scores."""
    from mapo.judging.judge import Attempt

    pack = PACKS[name]
    a, b = await asyncio.gather(
        *(
            judge.converse(
                _messages(judge, pack, question=question, response=r),
                pack.parser,
                pack.reask,
                order,
                scale=judge.config.scale,
            )
            for r in (first, second)
        )
    )
    if not (a.verdict.ok and b.verdict.ok):
        reason = "; ".join(f"{side}: {x.verdict.failure}" for side, x in (("A", a), ("B", b)) if not x.verdict.ok)
        verdict = Verdict.failed(reason)
    else:
        verdict = Verdict.from_scores(a.verdict.score_a, b.verdict.score_a)  # type: ignore[arg-type]
    return Attempt(
        order=order,
        raw=a.raw + b.raw,
        verdict=verdict,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        latency_s=max(a.latency_s, b.latency_s),
        cached=a.cached and b.cached,
    )


def register(strategies: object) -> None:
    """Register every pack as a judge strategy (called once by :mod:`mapo.judging.judge`)."""
    from functools import partial

    for name, pack in PACKS.items():
        fn = partial(_pointwise if pack.pointwise else _pairwise, name)
        strategies.register(name)(fn)  # type: ignore[attr-defined]
