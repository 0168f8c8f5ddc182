"""Transport: the LLM client (chat, pooling, tokenize), its response cache, the endpoint registry, the Batch API."""

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
    "mapo.llm.endpoints": ("Endpoint",),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
