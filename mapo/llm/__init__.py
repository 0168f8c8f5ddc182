"""Transport: the LLM client (chat, pooling, tokenize), its response cache, the Batch API (the endpoint registry it reads is
``mapo.core.endpoints``)."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.llm.cache": ("ResponseCache",),
    "mapo.llm.client": (
        "BudgetExceeded",
        "ClientStats",
        "Constraint",
        "EndpointUnavailable",
        "LLMClient",
        "RunHalt",
        "Tokenized",
        "describe",
        "grammar_failure",
        "item_failure",
        "server_text",
    ),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
