"""mapo.core."""
