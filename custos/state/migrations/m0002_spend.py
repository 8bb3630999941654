"""Budgets: the durable spend ledger, the counter seed epoch, and budget alerts sent.

- ``budget_spend`` holds the settled spend of every budget counter (one budget, one period, one
  split), in integer micro-dollars. Gateways add to it in batches (``custos.state.ledger``); a
  restarted Redis, or a restarted gateway with in-process counters, is seeded from it.
- ``counter_epoch`` is one row. ``epoch`` counts the times shared counters were seeded from the
  ledger; every ledger flush and every seed updates this row, so on PostgreSQL they serialise on
  its row lock (SQLite serialises every writer anyway). That order is what lets a flush know
  whether a seed already counted what it is writing (see ``custos.state.ledger``).
- ``budget_alerts`` records each alert threshold crossed, once per budget, period, split and
  percentage: the primary key is the "once" across replicas and restarts.

The period is written ``kind:YYYY-MM-DD`` (the UTC start) or ``total``; the split is the
canonical ``dimension=value`` list (empty for a budget without ``applies_per``).
"""

SQLITE = """
CREATE TABLE budget_spend (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (budget_id, period, split)
);
CREATE INDEX budget_spend_period ON budget_spend (period);

CREATE TABLE counter_epoch (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    epoch   INTEGER NOT NULL,
    flushes INTEGER NOT NULL
);
INSERT INTO counter_epoch (id, epoch, flushes) VALUES (1, 0, 0);

CREATE TABLE budget_alerts (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    percent      INTEGER NOT NULL,
    claimed_at   TEXT NOT NULL,
    delivered_at TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    PRIMARY KEY (budget_id, period, split, percent)
);
"""

POSTGRESQL = """
CREATE TABLE budget_spend (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (budget_id, period, split)
);
CREATE INDEX budget_spend_period ON budget_spend (period);

CREATE TABLE counter_epoch (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    epoch   BIGINT NOT NULL,
    flushes BIGINT NOT NULL
);
INSERT INTO counter_epoch (id, epoch, flushes) VALUES (1, 0, 0);

CREATE TABLE budget_alerts (
    budget_id    TEXT NOT NULL,
    period       TEXT NOT NULL,
    split        TEXT NOT NULL,
    percent      INTEGER NOT NULL,
    claimed_at   TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    PRIMARY KEY (budget_id, period, split, percent)
);
"""
