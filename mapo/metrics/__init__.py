"""mapo.metrics."""
