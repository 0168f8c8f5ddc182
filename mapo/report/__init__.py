"""mapo.report."""
