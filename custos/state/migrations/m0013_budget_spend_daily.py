"""Budgets: the settled spend of each budget counter per UTC day, for the console's burn-down.

``budget_spend_daily`` holds, per budget, period, split and day, what the ledger wrote that day
(``custos.state.ledger``: each flush adds its batch here and to ``budget_spend`` in one
transaction, so the days of a period add up to its total). The day is the flush's, within about
a second of the settlement. Spend written before this migration has no days.
"""

SQLITE = """
CREATE TABLE budget_spend_daily (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    day          TEXT NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period, split, day)
);
"""

POSTGRESQL = """
CREATE TABLE budget_spend_daily (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    day          TEXT NOT NULL,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period, split, day)
);
"""
