"""LLMs-as-a-jury: several judges, one aggregator (paper Step 2; inspect_ai's ``multi_scorer``).

Every juror is a :class:`mapo.judging.judge.Judge` with the same :class:`~mapo.core.config.JudgeConfig`;
they judge concurrently and their labels are combined by a registered aggregator from
:data:`mapo.metrics.agreement.AGGREGATORS` (``jury.aggregate``):

* ``mode`` (the paper): the most common pick; a multi-way mode (1-1-1, 2-2) is a **tie**;
* ``majority``: a pick held by more than half of the answering jurors, else ``jury.tie_break``
  (``tie`` | ``first_juror``: the first answering juror decides | ``abstain``: no verdict);
* ``mean_score``: mean of the jurors' scores, higher mean wins (scoring strategies only).

A juror whose judgement failed (unparseable, refused) abstains: it is left out of the
aggregate and counted in ``n_failed``; when every juror fails the jury's verdict is a
failure. Every juror's :class:`~mapo.judging.judge.PairJudgement` (with its raw texts) is kept.

>>> # jury = Jury(client, ["gemma-2-9b", "gemma-2-27b", "llama31-8b"], JudgeConfig(), JuryConfig())
>>> # j = await jury.judge_pair(question, response_a, response_b); j.label, j.members[0].label
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mapo.core.config import ConfigError, JudgeConfig, JuryConfig, RunConfig
from mapo.core.types import Label, Question
from mapo.core.verdicts import swap_label
from mapo.judging.base import EVALUATORS, Evaluator, Judgement, Probe, RecordContext, dataset_label
from mapo.judging.judge import Judge, PairJudgement, judge_setup
from mapo.llm.client import LLMClient
from mapo.metrics.agreement import jury_pick

__all__ = [
    "Jury",
    "JuryJudgement",
    "JuryVerdict",
    "combine_jurors",
    "jury_incomplete",
    "jury_name",
    "warn_self_judging",
]

log = logging.getLogger(__name__)


def jury_name(jurors: Sequence[str]) -> str:
    return "jury[" + "+".join(jurors) + "]"


@dataclass(frozen=True)
class JuryVerdict:
    """The jurors' verdicts combined (:func:`combine_jurors`), in the jurors' terms (dataset terms live)."""

    label: Label | None
    score_a: float | None
    """The mean of the answering jurors' scores (None where none answered with both)."""
    score_b: float | None
    n_failed: int
    failure: str | None


def combine_jurors(
    verdicts: Sequence[tuple[Label | None, float | None, float | None]], aggregate: str, tie_break: str
) -> JuryVerdict:
    """The one jury rule on plain values: each juror's (label, score_a, score_b), label None where it
    failed (it abstains), combined by ``aggregate`` / ``tie_break``
    (:func:`mapo.metrics.agreement.jury_pick`). :meth:`Jury.aggregate` calls it on live judgements,
    ``mapo reparse`` on stored juror records."""
    labels = [label for label, _, _ in verdicts]
    scores = [(a, b) if label is not None and a is not None and b is not None else None for label, a, b in verdicts]
    label = jury_pick(labels, aggregate, scores=scores, tie_break=tie_break)
    n_failed = sum(x is None for x in labels)
    valid = [s for s in scores if s is not None]
    sa = sum(a for a, _ in valid) / len(valid) if valid else None
    sb = sum(b for _, b in valid) / len(valid) if valid else None
    failure = None
    if label is None:
        failure = (
            f"every juror failed ({n_failed}/{len(labels)})"
            if n_failed == len(labels)
            else f"no verdict under jury.aggregate={aggregate}, tie_break={tie_break}"
        )
    return JuryVerdict(label, sa, sb, n_failed, failure)


def jury_incomplete(failed: Sequence[tuple[str, str | None]], n_members: int, failure: str | None) -> str | None:
    """Why a jury verdict is incomplete (reached with some jurors failed: ``failed`` = (juror, its failure)),
    or None (no juror failed, or the verdict itself failed); a rerun asks those jurors again. Live
    (:attr:`JuryJudgement.incomplete`) and in ``mapo reparse``."""
    if failure is not None or not failed:
        return None
    juror, why = failed[0]
    return f"{len(failed)} of {n_members} jurors failed ({juror}: {why or 'no verdict'})"


@dataclass(kw_only=True)
class JuryJudgement(Judgement):
    """A jury's verdict on one pair (:class:`~mapo.judging.base.Judgement`).

    ``label`` is in dataset terms for the order the pair was given (model_a = first);
    ``score_a``/``score_b`` are the mean of the answering jurors' scores (None for the direct
    strategy); ``members`` keeps every juror's judgement, failed ones included. Its records are
    every juror's (kind ``juror``) and then its own.
    """

    kind: ClassVar[str] = "jury"

    aggregate: str
    tie_break: str
    members: list[PairJudgement] = field(default_factory=list)
    n_failed: int = 0

    @property
    def incomplete(self) -> str | None:
        """A verdict reached with some jurors failed: which, and the first one's reason (a rerun asks them again)."""
        failed = [(m.judge, m.failure) for m in self.members if not m.ok]
        return jury_incomplete(failed, len(self.members), self.failure)

    @property
    def raw(self) -> list[str]:
        return [t for m in self.members for t in m.raw]

    @property
    def models(self) -> list[str]:
        return [m.judge for m in self.members]

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.members)

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for m in self.members)

    @property
    def latency_s(self) -> float:
        """The slowest juror's (they judge concurrently)."""
        return max((round(m.latency_s, 4) for m in self.members), default=0.0)

    @property
    def cached(self) -> bool:
        return all(m.cached for m in self.members)

    def record_raw(self) -> list[str]:
        return []  # the jurors' raw texts are in their own records

    def detail(self, order: str) -> dict[str, Any]:
        return {
            "aggregate": self.aggregate,
            "tie_break": self.tie_break,
            "n_failed": self.n_failed,
            "members": {m.judge: dataset_label(m.label, order) for m in self.members},
        }

    def records(self, ctx: RecordContext) -> list[dict[str, Any]]:
        return [*(m.record(ctx, kind="juror", member_of=self.judge) for m in self.members), self.record(ctx)]

    def to_record(self) -> dict[str, Any]:
        return {
            **self._named("aggregate", "tie_break"),
            "n_failed": self.n_failed,
            "members": [m.to_record() for m in self.members],
        }


def _stored_member(judge: Judge, rec: Mapping[str, Any]) -> PairJudgement:
    """A juror's stored record (dataset terms) as its judgement in presentation order: the verdict and
    scores it recorded, no attempts (its raw texts stay in that record, which is not written again)."""
    swapped = rec.get("order") == "BA"
    sa, sb = rec.get("score_a"), rec.get("score_b")
    return PairJudgement(
        judge=judge.model,
        strategy=judge.config.strategy,
        scale=judge.config.scale,
        prompt_sha=judge.prompt_sha,
        setup=judge.setup,
        label=swap_label(rec["label"]) if swapped else rec["label"],
        score_a=sb if swapped else sa,
        score_b=sa if swapped else sb,
    )


def warn_self_judging(judges: Iterable[str], producers: Iterable[str], what: str = "judge") -> list[str]:
    """Log a warning for each judge that also produced a response it judges (self-preference
    bias; inspect_ai warns the same way). Model names compare case-insensitively."""
    made = {p.lower() for p in producers if p}
    hits = []
    for j in dict.fromkeys(judges):
        if j.lower() in made:
            hits.append(j)
            log.warning("%s %s also produced a response it judges (self-preference bias)", what, j)
    return hits


@EVALUATORS.register("jury")
class Jury(Evaluator):
    """Jurors judging concurrently, aggregated by ``jury_config.aggregate``."""

    kind: ClassVar[str] = "jury"
    config_roles: ClassVar[tuple[str, ...]] = ("jurors",)
    sections: ClassVar[tuple[tuple[str, tuple[str, ...] | None], ...]] = (("judge", None), ("jury", None))

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Jury:
        """``roles.jurors``, each judging with ``judge_config`` (default ``judge.*``), aggregated by ``jury.*``."""
        return cls(client, cfg.roles.jurors, judge_config or cfg.judge, cfg.jury)

    def __init__(
        self,
        client: LLMClient,
        jurors: Sequence[str],
        judge_config: JudgeConfig,
        jury_config: JuryConfig,
        *,
        producers: Iterable[str] = (),
        role: str = "juror",
    ) -> None:
        jurors = list(jurors)
        if not jurors:
            raise ConfigError("roles.jurors is empty: a jury needs at least one juror (two or more to aggregate)")
        jury_config.check("jury")  # aggregate and tie_break (mapo.core.config: one validator per config)
        if jury_config.aggregate == "mean_score" and judge_config.strategy == "direct":
            raise ConfigError(
                "jury.aggregate=mean_score needs scores; judge.strategy=direct gives only picks (use mode or majority)"
            )
        dupes = sorted({j for j in jurors if jurors.count(j) > 1})
        if dupes:
            raise ConfigError(
                f"roles.jurors lists {', '.join(dupes)} more than once: a juror votes once "
                "(at temperature 0 a repeated juror would only repeat its vote)"
            )
        if len(jurors) % 2 == 0 and jury_config.aggregate != "mean_score":
            log.warning(
                "the jury has an even number of members (%d): split votes become %s",
                len(jurors),
                "ties"
                if jury_config.tie_break == "tie" or jury_config.aggregate == "mode"
                else f"decided by tie_break={jury_config.tie_break}",
            )
        self.jurors = jurors
        self.judge_config = judge_config
        self.config = jury_config
        self.judges = [Judge(client, m, judge_config, role=role) for m in jurors]
        warn_self_judging(jurors, producers, "juror")

    # ---- identity (Evaluator) ----------------------------------------------------------
    @property
    def name(self) -> str:
        return jury_name(self.jurors)

    @property
    def setup(self) -> str:
        return f"{judge_setup(self.judge_config)}/{self.config.aggregate}-{self.config.tie_break}"

    @property
    def prompt_sha(self) -> str:
        return self.judges[0].prompt_sha

    @property
    def models(self) -> list[str]:
        return list(self.jurors)

    @property
    def strategy(self) -> str:
        return self.judge_config.strategy

    @property
    def scale(self) -> int:
        return self.judge_config.scale

    @property
    def ordered(self) -> bool:
        return not self.judge_config.pointwise

    @property
    def subset_members(self) -> list[str]:
        return list(self.jurors)

    @property
    def conversations(self) -> bool:
        return all(j.conversations for j in self.judges)

    @property
    def references(self) -> bool:
        return all(j.references for j in self.judges)

    @property
    def scoring_counts(self) -> Counter[str]:
        """The jurors' :attr:`Judge.scoring_counts`, summed."""
        return sum((j.scoring_counts for j in self.judges), Counter())

    def probes(
        self, question: Question, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        """Every juror's probes (:meth:`Judge.probes`)."""
        return [p for j in self.judges for p in j.probes(question, response_a, response_b, produced)]

    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> JuryJudgement:
        return await self.judge_again(question, response_a, response_b, {})

    async def judge_again(
        self, question: Question, response_a: str, response_b: str, kept: Mapping[str, Mapping[str, Any]]
    ) -> JuryJudgement:
        """The jury's verdict with the jurors in ``kept`` (stored juror records with a verdict) not asked
        again: their stored verdicts are aggregated with the others' new ones."""
        from mapo.llm.client import item_failure

        async def verdict(judge: Judge) -> PairJudgement:
            rec = kept.get(judge.model)
            if rec is not None and rec.get("label") is not None and not rec.get("failure"):
                return _stored_member(judge, rec)
            return await judge.judge_pair(question, response_a, response_b)

        results = await asyncio.gather(*(verdict(j) for j in self.judges), return_exceptions=True)
        members: list[PairJudgement] = []
        for judge, r in zip(self.judges, results, strict=True):
            if isinstance(r, BaseException):
                reason = item_failure(r) if isinstance(r, Exception) else None
                if reason is None:
                    raise r
                r = judge.failed(reason)
            members.append(r)
        return self.aggregate(members)

    def aggregate(self, members: list[PairJudgement]) -> JuryJudgement:
        """Combine juror judgements (also used on stored ones: no model call)."""
        v = combine_jurors(
            [(m.label, m.score_a, m.score_b) if m.ok else (None, None, None) for m in members],
            self.config.aggregate,
            self.config.tie_break,
        )
        return JuryJudgement(
            judge=self.name,
            strategy=self.judge_config.strategy,
            scale=self.judge_config.scale,
            prompt_sha=self.judges[0].prompt_sha,
            setup=self.setup,
            aggregate=self.config.aggregate,
            tie_break=self.config.tie_break,
            members=members,
            label=v.label,
            score_a=v.score_a,
            score_b=v.score_b,
            failure=v.failure,
            n_failed=v.n_failed,
        )
