"""Budgets and rate limits on the request path (stages 4 and 5) and their settlement.

``Limiter`` (``custos.limits.service``) is the entry point; the rules are compiled per revision
in ``custos.policy.limits`` and the counters live in ``custos.state.counters``.
"""

from custos.limits.service import BudgetReport, Limiter, Metering, SplitReport

__all__ = ["BudgetReport", "Limiter", "Metering", "SplitReport"]
