"""The typed config of ``mapo train`` (conf/train.yaml + the conf/train/ group).

mapo owns what ties the run together (dataset, base model, split, LoRA, the run folder); the
trainer itself is configured by ``trl:``, a dict merged into TRL's ``DPOConfig`` / ``KTOConfig``
so that every TRL option is settable from the command line (``++trl.warmup_steps=10``). Its keys
are checked against the TRL dataclass before anything is loaded, and an unknown key is an error
that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mapo.core.config import Choice, ConfigError, ModelConfig, ProgressMode

__all__ = [
    "MANAGED_TRL_KEYS",
    "LoraSettings",
    "SaveDtype",
    "SplitConfig",
    "TrainMethod",
    "TrainRunConfig",
    "check",
    "register_schema",
    "trl_config_class",
]


class TrainMethod(Choice):
    """``method``: preference optimisation, DPO (paired, TRL DPOTrainer) or KTO (unpaired, TRL KTOTrainer)."""

    dpo = "dpo"
    kto = "kto"


class SaveDtype(Choice):
    """``save_dtype``: auto (the training precision: bfloat16 after bf16 training, else float32) or a dtype."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


MANAGED_TRL_KEYS = {
    "output_dir": "checkpoints go to <output_dir>/checkpoints (set output_dir or run_name instead)",
    "resume_from_checkpoint": "a rerun of the same command resumes from the last checkpoint by itself",
    "push_to_hub": "the trained model is written to <output_dir>/model and a model config (see the manifest)",
}
"""TRL/transformers fields that mapo sets itself; setting them in ``trl`` is an error that says why."""


@dataclass
class SplitConfig:
    """Train/eval split by prompt id: every row of a prompt lands on the same side."""

    eval_fraction: float = 0.1
    """Share of the prompts held out for evaluation (0 = no eval split)."""
    seed: int = 0
    """Salt of the hash that assigns prompts; the same seed gives every dataset of one build the same split."""


@dataclass
class LoraSettings:
    """Optional LoRA through peft (``pip install peft``); the adapter is merged into the saved model."""

    enabled: bool = False
    """Train a LoRA adapter instead of the full model."""
    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: Any = "all-linear"
    """Module names (a list) or ``all-linear``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Any other ``peft.LoraConfig`` field, passed through (checked against its fields)."""


@dataclass
class TrainRunConfig:
    """Everything ``mapo train`` reads. The method-specific part comes from conf/train/<method>.yaml."""

    models: dict[str, ModelConfig] = field(default_factory=dict)
    """Model configs (conf/model/): the base model is looked up here."""
    base_model: str = "smollm2-135m"
    """The model to train: a name in ``models`` (its serve.weights) or a local model folder."""
    dataset: str = "runs/build"
    """A `mapo build` run folder (uses dataset/<method>), a saved DatasetDict / Dataset, or a JSONL file."""
    method: str = MISSING
    """dpo | kto (:class:`TrainMethod`; set by the train group: ``train=dpo`` or ``train=kto``). The choices are
    typed ``str`` for Hydra and become their enum in :func:`check`, whose message names the key."""
    trl: dict[str, Any] = field(default_factory=dict)
    """Fields of trl.DPOConfig / trl.KTOConfig, passed through (``++trl.KEY=VALUE`` adds any)."""
    name: str | None = None
    """Name of the trained model's config and endpoint; default ``<base_model>-<method>``."""
    split: SplitConfig = field(default_factory=SplitConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    save_dtype: str = SaveDtype.auto
    """dtype of the saved model (:class:`SaveDtype`): auto (bfloat16 after bf16 training, else float32) | float32 |
    bfloat16 | float16."""
    progress: str = ProgressMode.auto
    """:class:`mapo.core.config.ProgressMode` (the choices of ``client.progress``): auto (a bar on a terminal, a
    log line per logging step otherwise) | bar | log | off."""
    run_name: str = "train"
    """Names the run folder (runs/<run_name>); rerunning the same command resumes from the last checkpoint."""
    output_dir: str = "runs/train"
    """The run folder (set from Hydra's output dir)."""


def trl_config_class(method: str) -> type:
    """``trl.DPOConfig`` or ``trl.KTOConfig``."""
    import trl

    return trl.DPOConfig if method == "dpo" else trl.KTOConfig


def _unknown(keys: list[str], known: set[str], where: str, what: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}.{key}: not a field of {what}{hint}")


_WORDS = {float: "a number", int: "an integer", bool: "true or false"}


def _scalars(hint: Any) -> set[Any]:
    """The plain types a field's hint allows (``float | None`` -> {float, None}); ``object``: not checked here."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_scalars(a) for a in typing.get_args(hint)))
    if hint is type(None):
        return {None}
    return {hint} if hint in (bool, int, float) else {object}


def _check_trl_values(values: dict[str, Any], cls: type) -> None:
    """A number, integer or boolean field of TRL's config given something else (``trl.learning_rate=abc``):
    a config error naming the key, before any model is loaded (TRL's dataclass takes it, and training
    failed steps later with a TypeError: ``failed``, exit 1). A number written as text is read as one."""
    hints = typing.get_type_hints(cls)
    for key, value in list(values.items()):
        allowed = _scalars(hints.get(key, object))
        if object in allowed or (value is None and None in allowed):
            continue
        kind = float if float in allowed else int if int in allowed else bool
        if isinstance(value, bool) or kind is bool:
            ok = isinstance(value, bool) and bool in allowed
        elif isinstance(value, (int, float, str)):
            try:
                number = float(value) if kind is float else int(value)  # int("2.5") fails, as it should
            except (TypeError, ValueError):
                ok = False
            else:
                ok = kind is float or float(value) == number
                if ok and isinstance(value, str):  # numbers given as numbers stay as given
                    values[key] = number
        else:
            ok = False
        if not ok:
            raise ConfigError(f"trl.{key}={value!r}: not {_WORDS[kind]} (trl.{cls.__name__}.{key})")


def _forced_keys(obj: Any, prefix: str = "") -> list[str]:
    """Keys Hydra's ``+key=value`` forced into the typed sections (the dicts ``models``, ``trl`` and
    ``lora.options`` are checked elsewhere)."""
    if not dataclasses.is_dataclass(obj):
        return []
    known = {f.name: f for f in dataclasses.fields(obj)}
    out = [f"{prefix}{k}" for k in vars(obj) if k not in known]
    for f in known.values():
        out += _forced_keys(getattr(obj, f.name), f"{prefix}{f.name}.")
    return out


def check(cfg: TrainRunConfig) -> None:
    """Fail before any model or dataset is loaded, naming the key."""
    forced = _forced_keys(cfg)
    if forced:
        raise ConfigError(f"unknown config key(s): {', '.join(forced)} (see mapo/training/config.py for the fields)")
    try:
        cfg.method = TrainMethod.parse(cfg.method, "method")  # the choices: validated once, enums from here on
    except ConfigError as e:
        raise ConfigError(f"{e} (choose with train=dpo|kto)") from None
    import trl

    cls = trl_config_class(cfg.method)
    _unknown(
        list(cfg.trl), {f.name for f in dataclasses.fields(cls)}, "trl", f"trl.{cls.__name__} (TRL {trl.__version__})"
    )
    for key, why in MANAGED_TRL_KEYS.items():
        if key in cfg.trl:
            raise ConfigError(f"trl.{key} is set by mapo: {why}")
    _check_trl_values(cfg.trl, cls)
    if not 0 <= cfg.split.eval_fraction < 1:
        raise ConfigError(f"split.eval_fraction must be in [0, 1), got {cfg.split.eval_fraction}")
    cfg.save_dtype = SaveDtype.parse(cfg.save_dtype, "save_dtype")
    cfg.progress = ProgressMode.parse(cfg.progress, "progress")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name or "." in cfg.name):
        raise ConfigError(f"name={cfg.name!r}: a model name without '/' or '.' (Hydra keys cannot hold dots)")
    if cfg.lora.enabled:
        if cfg.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {cfg.lora.r}")
        try:
            import peft
        except ImportError:
            raise ConfigError("lora.enabled=true needs peft: pip install peft (or mapo[train])") from None
        _unknown(
            list(cfg.lora.options),
            {f.name for f in dataclasses.fields(peft.LoraConfig)},
            "lora.options",
            f"peft.LoraConfig (peft {peft.__version__})",
        )


def register_schema() -> None:
    """Register the schema (``train_schema``) that conf/train.yaml extends."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainRunConfig)
