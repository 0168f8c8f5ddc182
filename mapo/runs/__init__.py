"""mapo.runs."""
