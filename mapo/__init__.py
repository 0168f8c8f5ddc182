"""mapo: preference-optimization datasets built by teams of open LLMs, and how well LLM
judges agree with humans (arXiv 2408.08688)."""

from mapo.agreement import cohen_kappa, jury_pick, jury_subsets, position_bias
from mapo.client import Constraint, EndpointUnavailable, LLMClient
from mapo.config import ConfigError, JudgeConfig, ModelConfig, RunConfig
from mapo.debate import Debate
from mapo.feedback import FeedbackLoop
from mapo.judge import Judge, PairJudgement
from mapo.jury import Jury
from mapo.parsers import PARSERS, constrained_regex
from mapo.types import Completion, Label, Message, Pick, Verdict

__all__ = [
    "PARSERS",
    "Completion",
    "ConfigError",
    "Constraint",
    "Debate",
    "EndpointUnavailable",
    "FeedbackLoop",
    "Judge",
    "JudgeConfig",
    "Jury",
    "LLMClient",
    "Label",
    "Message",
    "ModelConfig",
    "PairJudgement",
    "Pick",
    "RunConfig",
    "Verdict",
    "cohen_kappa",
    "constrained_regex",
    "jury_pick",
    "jury_subsets",
    "position_bias",
]
__version__ = "0.1.0"
