"""mapo.llm."""
