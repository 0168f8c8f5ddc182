"""The pre-flight: every role's requests rendered through its server before any item runs.

A run's command names its requests as :class:`~mapo.judging.base.Probe` s (``RunCommand.probes``:
the feedback loop's generator and reviewers, the judge, jurors, debaters, baselines, each with the
first item's real text). For each one, through the one client (same replicas, keys, retries):

1. **render**: vLLM's ``POST /tokenize`` with the messages and the generation prompt (where a
   server has none, an API model, a 1-token chat request instead: it costs one request of the
   first prompt's size per role). A 400 naming the system role (Gemma-2's template raises
   ``System role not supported``) is a finding: with ``models.<name>.system_role=auto`` the
   fallback folds system messages into the first user turn for every request of that model
   (:func:`mapo.llm.client.merge_system`) and the request is rendered again.
2. **context**: vLLM counts prompt + max_tokens against ``max_model_len`` (from ``/tokenize`` or
   the model listing, else ``serve.max_model_len``; unknown for API models: not checked, said so).
   The estimate of a role's longest request is::

       rendered(longest shape, produced texts empty) + sum(produced, each at most its max_tokens)
                                                     + the model's max_tokens

   with the longest shape of each role (:meth:`~mapo.generation.feedback.FeedbackLoop.probes`,
   :meth:`~mapo.judging.judge.Judge.probes`, :meth:`~mapo.judging.debate.Debate.probes`):
   the generator's last iteration (question + (N-1) x (response + revision message with every
   reviewer's feedback)), a reviewer's or judge's last re-ask (its prompt + the responses it is
   shown + re-asks x (answer + re-ask message)), a debater's final scores after every round
   (history of rounds x speakers turns). Rendering the shape with empty texts counts every
   template token exactly; the produced texts are bounded by max_tokens, so the estimate is an
   upper bound of what the server will count (a tokenizer may merge tokens at a boundary: a
   handful at most). Over the limit, the run stops naming the numbers: there is no safe fallback.
3. **structured output**: where the role constrains its answers, the real constraint is sent with
   a few tokens to generate. A server error naming the grammar (vLLM: ``Regex compilation timed
   out``) or an answer that breaks the constraint's literal start (a server that ignores it) is a
   finding; the fallback sends that model's requests unconstrained (the ask loop parses and
   re-asks), counted in ``usage.unconstrained``.
4. **logprobs**: with ``judge.scoring=expected`` the probe asks for the top logprobs; where the
   server sends none, the fallback is the judge's own: the written score (argmax), each answer
   counted in ``manifest.scoring``; a server that rejects the request for logprobs stops the run.

Fail or fallback is decided in one place, :func:`_fallback`. Every finding is a :class:`Finding`;
the manifest's ``preflight`` holds, per model, its roles, what was measured, the findings and the
fallbacks applied; a finding without a fallback stops the run before any item
(:class:`PreflightFailed`, a :class:`~mapo.runs.runner.RunStopped`: status ``stopped``, exit 2)
with one message naming each model, role, cause and fix.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

from mapo.core.types import Completion, Message
from mapo.judging.base import Probe
from mapo.llm.client import Constraint, LLMClient, Tokenized, grammar_failure, server_text

log = logging.getLogger(__name__)

CONSTRAINT_PROBE_TOKENS = 8
"""Tokens generated under a constraint to see whether the server honours it (the literal start of
every mapo constraint is longer than this)."""

SYSTEM_ROLE_REJECTED = re.compile(r"system", re.IGNORECASE)


class FindingKind(enum.StrEnum):
    """What the pre-flight found."""

    system_role = "system_role"
    context = "context"
    structured_output = "structured_output"
    logprobs = "logprobs"
    rejected = "rejected"


@dataclass(frozen=True)
class Finding:
    """One thing a run's model cannot do as configured; ``fallback`` says what the run does instead
    (None: the run cannot succeed and stops before any item)."""

    model: str
    role: str
    kind: FindingKind
    cause: str
    fix: str
    fallback: str | None = None

    def line(self) -> str:
        return f"model {self.model!r} ({self.role}): {self.cause}; fix: {self.fix}"


class PreflightFailed(RuntimeError):
    """A finding without a safe fallback: the run stops before any item (the runner's ``stopped``);
    ``report`` is everything the pre-flight measured (for the manifest)."""

    def __init__(self, message: str, report: Preflight) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _ModelReport:
    roles: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    rendered_by: str = "tokenize"
    """``tokenize`` (the server rendered it), ``chat`` (a 1-token request) or ``none``."""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """role -> {first_tokens, longest_tokens, turn, estimate}."""
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": self.roles,
            "max_model_len": self.max_model_len,
            "rendered_by": self.rendered_by,
            "requests": self.requests,
            "findings": [{k: v for k, v in asdict(f).items() if k != "model"} for f in self.findings],
            "fallbacks": [f.fallback for f in self.findings if f.fallback],
        }


@dataclass
class Preflight:
    """What the pre-flight measured and found, per model (``manifest.preflight``)."""

    models: dict[str, _ModelReport] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        return [f for m in self.models.values() for f in m.findings]

    def fatal(self) -> list[Finding]:
        return [f for f in self.findings if f.fallback is None]

    def to_manifest(self) -> dict[str, Any]:
        return {name: m.to_dict() for name, m in self.models.items()}


async def preflight(client: LLMClient, probes: Sequence[Probe]) -> Preflight:
    """Check every probe (module doc), applying the fallbacks that exist; raise
    :class:`PreflightFailed` naming every finding that has none."""
    report = Preflight()
    seen: set[tuple[str, str]] = set()
    for probe in probes:
        if (probe.model, probe.role) in seen:  # one probe per (model, role): the first item's
            continue
        seen.add((probe.model, probe.role))
        model = report.models.setdefault(probe.model, _ModelReport())
        model.roles.append(probe.role)
        await _check(client, probe, model)
    for f in report.findings:
        if f.fallback:
            log.warning("pre-flight: %s; the run goes on with %s", f.line(), f.fallback)
    for name, m in report.models.items():
        log.debug("pre-flight %s: %s", name, m.requests)
    fatal = report.fatal()
    if fatal:
        raise PreflightFailed("pre-flight: " + "; ".join(f.line() for f in fatal), report)
    return report


def _fallback(client: LLMClient, finding: Finding) -> Finding:
    """THE decision: apply the finding's safe fallback and say so, or leave it fatal (fallback None)."""
    if finding.kind == FindingKind.system_role and client.model_config(finding.model).system_role == "auto":
        client.merge_system_role(finding.model)
        return _with(finding, "system messages merged into the first user turn for every request of this model")
    if finding.kind == FindingKind.logprobs:  # the judge keeps the written value, counted per answer
        return _with(finding, "argmax scoring (the score as written), counted in manifest.scoring")
    if finding.kind == FindingKind.structured_output:
        client.unconstrain(finding.model, finding.cause)
        return _with(finding, "unconstrained decoding, answers parsed and re-asked; counted in usage.unconstrained")
    return finding


def _with(finding: Finding, fallback: str) -> Finding:
    return Finding(finding.model, finding.role, finding.kind, finding.cause, finding.fix, fallback)


async def _check(client: LLMClient, probe: Probe, model: _ModelReport) -> None:
    name, role = probe.model, probe.role
    first = await _render(client, probe, probe.messages, model)
    if first is None:
        return  # rejected (said), or not rendered
    entry: dict[str, Any] = {"first_tokens": first.count}
    model.requests[role] = entry
    limit = client.max_model_len(name)
    model.max_model_len = limit
    if limit is not None:
        longest = first
        if probe.longest is not None and probe.longest != probe.messages:
            longest = await _render(client, probe, probe.longest, model) or first
        grown = sum(tokens for _, tokens in probe.produced)
        need = longest.count + grown + client.max_tokens(name)
        entry.update(longest_tokens=longest.count, turn=probe.turn, estimate=need)
        if need > limit:
            parts = " + ".join(
                [f"{longest.count} rendered", *(f"{t} ({what})" for what, t in probe.produced if t)]
                + [f"{client.max_tokens(name)} max_tokens"]
            )
            model.findings.append(
                Finding(
                    name,
                    role,
                    FindingKind.context,
                    f"{probe.turn} needs up to {need} tokens ({parts}) > max_model_len {limit}",
                    f"lower models.{name}.generation.max_tokens, fewer feedback.iterations / debate.rounds / "
                    f"re-asks, or serve the model with a larger serve.max_model_len",
                )
            )
    else:
        entry["estimate"] = "not checked: the server does not say its max_model_len"
    if client.model_config(name).batch.enabled:
        return  # a request of a Batch API model waits for a batch (hours): only what /tokenize tells
    answer = None
    if probe.constraint is not None and not client.unconstrained(name):
        answer = await _constrained(client, probe, model)
    if probe.top_logprobs is not None:
        if answer is None:
            try:
                answer = await client.probe(name, probe.messages, max_tokens=1, top_logprobs=probe.top_logprobs)
            except openai.BadRequestError as e:
                model.findings.append(_rejected(probe, e, "logprobs"))
                return
        if answer.top_logprobs is None:
            model.findings.append(
                _fallback(
                    client,
                    Finding(
                        name,
                        role,
                        FindingKind.logprobs,
                        f"judge.scoring=expected needs the top {probe.top_logprobs} logprobs, and the server sends none",
                        "set judge.scoring=argmax, or serve the model where logprobs are returned "
                        f"(vLLM: --max-logprobs >= {probe.top_logprobs})",
                    ),
                )
            )


async def _render(client: LLMClient, probe: Probe, messages: list[Message], model: _ModelReport) -> Tokenized | None:
    """The prompt tokens of ``messages`` as the server renders them; a system role the template
    rejects is found (and merged where allowed, then rendered again); other rejections are fatal.
    None: rejected, or nothing could render it (a Batch API model without /tokenize)."""
    for _ in range(2):
        try:
            tokenized = await client.tokenize(probe.model, messages)
            if tokenized is None and client.model_config(probe.model).batch.enabled:
                model.rendered_by = "none (a Batch API model: no request is sent for the pre-flight)"
                return None
            if tokenized is None:  # no /tokenize (an API model): one short chat request renders it
                model.rendered_by = "chat"
                c = await client.probe(probe.model, messages, max_tokens=1)
                tokenized = Tokenized(c.prompt_tokens, None)
            return tokenized
        except openai.BadRequestError as e:
            has_system = any(m["role"] == "system" for m in messages)
            if has_system and not client.merges_system(probe.model) and SYSTEM_ROLE_REJECTED.search(server_text(e)):
                finding = _fallback(
                    client,
                    Finding(
                        probe.model,
                        probe.role,
                        FindingKind.system_role,
                        f"its chat template rejects a system message (HTTP 400: {server_text(e)})",
                        f"set models.{probe.model}.system_role=merge (or auto), or serve it with a template "
                        "that has a system role (serve.chat_template)",
                    ),
                )
                model.findings.append(finding)
                if finding.fallback is None:
                    return None
                continue  # rendered again, merged
            model.findings.append(_rejected(probe, e, "its first request"))
            return None
    return None


def _rejected(probe: Probe, e: openai.APIStatusError, what: str) -> Finding:
    return Finding(
        probe.model,
        probe.role,
        FindingKind.rejected,
        f"the server rejects {what} (HTTP {e.status_code}: {server_text(e)})",
        f"check models.{probe.model} (served_name, serve.chat_template) against the server",
    )


async def _constrained(client: LLMClient, probe: Probe, model: _ModelReport) -> Completion | None:
    """Send the role's real constraint with a few tokens to generate; a grammar the server cannot
    build, or an answer that breaks the constraint, is a finding (fallback: unconstrained). Returns
    the answer, if one came (its logprobs tell the logprob check)."""
    assert probe.constraint is not None
    cause = None
    answer: Completion | None = None
    try:
        answer = await client.probe(
            probe.model,
            probe.messages,
            max_tokens=CONSTRAINT_PROBE_TOKENS,
            constraint=probe.constraint,
            top_logprobs=probe.top_logprobs,
        )
    except openai.APIStatusError as e:
        if not grammar_failure(e):
            raise
        cause = f"the server cannot build its structured-output constraint (HTTP {e.status_code}: {server_text(e)})"
    else:
        if not follows(answer.text, probe.constraint):
            cause = (
                f"the server ignores structured outputs: asked for {_start(probe.constraint)!r}..., "
                f"it answered {answer.text[:40]!r}"
            )
    if cause is not None:
        model.findings.append(
            _fallback(
                client,
                Finding(
                    probe.model,
                    probe.role,
                    FindingKind.structured_output,
                    cause,
                    f"set models.{probe.model}.structured_output=false (or the role's constrained=off), or a "
                    "server that honours vLLM structured_outputs",
                ),
            )
        )
    return answer


def _start(constraint: Constraint) -> str:
    """The text every answer under ``constraint`` starts with ("" when it cannot be told)."""
    if constraint.regex is not None:
        return _literal_prefix(constraint.regex)
    if constraint.json_schema is not None:
        return "{"
    return ""


def follows(text: str, constraint: Constraint) -> bool:
    """Whether a short answer can be the start of an answer under ``constraint``."""
    if constraint.choice is not None:
        return any(c.startswith(text) or text.startswith(c) for c in constraint.choice)
    start = _start(constraint)
    if constraint.json_schema is not None:
        text = text.lstrip()
    n = min(len(text), len(start))
    return text[:n] == start[:n]


_META = set(".^$*+?{}[]|()")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _literal_prefix(regex: str) -> str:
    """The literal text a regex's every match starts with (``### Answer:\\n`` of
    ``### Answer:\\n(A|B)``); stops at the first construct that is not a plain character."""
    out: list[str] = []
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            if nxt in _ESCAPES:
                ch = _ESCAPES[nxt]
            elif nxt.isalnum():
                break  # a class (\d, \w, ...)
            else:
                ch = nxt
            i += 2
        elif ch in _META:
            break
        else:
            i += 1
        if i < len(regex) and regex[i] in "*+?{":  # the character just read is repeated: not literal
            break
        out.append(ch)
    return "".join(out)
