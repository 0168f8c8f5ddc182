"""The faults of a model request, by meaning: :class:`RunHalt` stops the run (everything finished so far
saved), :class:`ItemFault` fails one item and the run goes on. Raised by the client and the Batch API
queue alike (``client.py``, ``batch.py``).
"""

from __future__ import annotations

__all__ = [
    "BadReply",
    "BatchFailed",
    "BatchRequestRejected",
    "BudgetExceeded",
    "EndpointUnavailable",
    "ItemFault",
    "ModelNotFound",
    "QuotaExhausted",
    "RequestRejected",
    "RunHalt",
    "UnencodableText",
]


class RunHalt(RuntimeError):
    """A fault after which the run must stop, everything finished so far saved (the runner marks it
    "stopped" with this message). Subclasses: :class:`EndpointUnavailable`, :class:`BudgetExceeded`."""


class EndpointUnavailable(RunHalt):
    """A model stayed unreachable or failing through every retry: the run stops, work so far is saved."""


class BudgetExceeded(RunHalt):
    """The next request could take the priced cost past ``client.budget_usd``: it is not sent, the run stops."""


class BatchFailed(RunHalt):
    """A Batch API job failed as a whole (e.g. its file was refused), or a request stayed unanswered
    through every retry: the run stops, everything finished so far saved."""


class ItemFault(Exception):
    """A fault that belongs to one request's item, not to the endpoint: the item fails, the run goes on."""


class UnencodableText(ItemFault):
    """A message holds text that cannot be encoded as UTF-8 (e.g. a lone surrogate): bad input, never sent."""


class RequestRejected(ItemFault):
    """The server refused this one request (HTTP 400/413/422 that names the request, e.g. a prompt
    beyond the context window): not retried, the item fails with the server's text."""


class ModelNotFound(RunHalt):
    """The server does not serve the configured model (HTTP 404, or a 400 saying so): the run stops."""


class QuotaExhausted(RunHalt):
    """The provider refuses for quota or billing (e.g. 429 ``insufficient_quota``): no retry helps, the run stops."""


class BadReply(ItemFault):
    """The server answered, but with text mapo cannot store (e.g. a lone surrogate): never retried."""


class BatchRequestRejected(ItemFault):
    """The Batch API answered one request with an error that is not transient (e.g. a 400): the item fails."""
