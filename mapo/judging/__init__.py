"""mapo.judging."""
