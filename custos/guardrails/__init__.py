"""Guardrails: checks and rewrites of what goes to and comes from the models.

Today this holds the built-in PII detectors (``pii``); the four hooks come with their issue.
"""
