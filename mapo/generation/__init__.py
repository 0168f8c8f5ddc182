"""mapo.generation."""
