"""mapo: preference-optimization datasets built by teams of open LLMs, and how well LLM
judges agree with humans (arXiv 2408.08688)."""

from mapo.client import Constraint, EndpointUnavailable, LLMClient
from mapo.config import ConfigError, JudgeConfig, ModelConfig, RunConfig
from mapo.types import Completion, Label, Message, Pick, Verdict

__all__ = [
    "Completion",
    "ConfigError",
    "Constraint",
    "EndpointUnavailable",
    "JudgeConfig",
    "LLMClient",
    "Label",
    "Message",
    "ModelConfig",
    "Pick",
    "RunConfig",
    "Verdict",
]
__version__ = "0.1.0"
