"""Shared logic for the advanced-ai-risk propensity task pack (one job per module)."""
