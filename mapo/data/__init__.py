"""mapo.data."""
