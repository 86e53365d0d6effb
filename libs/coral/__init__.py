"""coral: evaluate and improve how LLM agents reason together."""
