"""Custos: an AI gateway with a governance control plane."""

__version__ = "0.1.0"
