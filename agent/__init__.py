"""LLM decomposition, the planning loop and the command line."""
