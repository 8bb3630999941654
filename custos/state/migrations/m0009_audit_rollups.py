"""Audit: daily rollups of the LLM-call projection, so reports over months read thousands of
rows rather than millions (``custos.audit.storage.rollup`` states what they hold).

- ``audit_llm_daily``: per UTC day (``YYYY-MM-DD`` text on both dialects) and each value of
  the calls' report dimensions, the number of calls, their tokens and their cost.
- ``audit_llm_daily_classes``: the same per day, fewer dimensions (no principal, status, stage
  or error), a data class and its source (``*``: either source; null: the calls with no class).
- Each has one unique key over the day and its dimensions, null-safe: PostgreSQL's
  ``NULLS NOT DISTINCT``; on SQLite ``ifnull(column, 0)`` (an integer, which never equals a
  text value). The key's first column is the day, so a report's range is one index range.
- Both are filled here from the projection rows already stored. From then on the store's
  insert path adds to them, in the transaction that adds the projection rows, and the retention
  purge subtracts what it deletes.
- They are not append-only (every batch updates today's sums), so the guard triggers of
  migration 0005 do not cover them; ``custos audit verify`` does not trust them either: the
  report's totals can always be recomputed from the projection.
"""

_CALL_DIMS = """    team            TEXT,
    principal_kind  TEXT,
    principal_id    TEXT,
    operation       TEXT NOT NULL,
    requested_model TEXT,
    provider        TEXT,
    provider_name   TEXT,
    model           TEXT,
    region          TEXT,
    status          INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    stopped_at      TEXT,
    error_type      TEXT,"""
_CLASS_DIMS = """    team            TEXT,
    operation       TEXT NOT NULL,
    requested_model TEXT,
    provider        TEXT,
    provider_name   TEXT,
    model           TEXT,
    region          TEXT,
    outcome         TEXT NOT NULL,
    data_class      TEXT,
    source          TEXT,"""
_MEASURES = """    requests        BIGINT NOT NULL,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    cost_micros     BIGINT NOT NULL"""

_CALL_COLUMNS = (
    "team, principal_kind, principal_id, operation, requested_model, provider,"
    " provider_name, model, region, status, outcome, stopped_at, error_type"
)
_CLASS_COLUMNS = "team, operation, requested_model, provider, provider_name, model, region, outcome"
_SUMS = "count(*), sum(c.input_tokens), sum(c.output_tokens), sum(c.cost_micros)"


def _qualified(columns: str) -> str:
    return ", ".join(f"c.{c.strip()}" for c in columns.split(","))


def _backfill(day: str) -> str:
    """Fill both rollups from the projection (``day``: the dialect's day of ``c.time_start``)."""
    keyed = (
        "(SELECT event_id, data_class, source FROM audit_llm_call_data_classes"
        " UNION ALL SELECT event_id, data_class, '*' FROM audit_llm_call_data_classes"
        " GROUP BY event_id, data_class"
        " UNION ALL SELECT event_id, NULL, NULL FROM audit_llm_calls n WHERE NOT EXISTS"
        " (SELECT 1 FROM audit_llm_call_data_classes x WHERE x.event_id = n.event_id)) k"
    )
    return (
        f"INSERT INTO audit_llm_daily (day, {_CALL_COLUMNS}, requests, input_tokens,"
        f" output_tokens, cost_micros)\n"
        f"SELECT {day}, {_qualified(_CALL_COLUMNS)}, {_SUMS} FROM audit_llm_calls c\n"
        f"GROUP BY {day}, {_qualified(_CALL_COLUMNS)};\n"
        f"INSERT INTO audit_llm_daily_classes (day, {_CLASS_COLUMNS}, data_class, source,"
        " requests, input_tokens, output_tokens, cost_micros)\n"
        f"SELECT {day}, {_qualified(_CLASS_COLUMNS)}, k.data_class, k.source, {_SUMS}\n"
        f"FROM {keyed} JOIN audit_llm_calls c ON c.event_id = k.event_id\n"
        f"GROUP BY {day}, {_qualified(_CLASS_COLUMNS)}, k.data_class, k.source;\n"
    )


def _ifnull(columns: str, not_null: tuple[str, ...]) -> str:
    names = [c.strip() for c in columns.split(",")]
    return ", ".join(c if c in not_null else f"ifnull({c}, 0)" for c in names)


_NOT_NULL = ("operation", "status", "outcome")

SQLITE = (
    f"CREATE TABLE audit_llm_daily (\n    day             TEXT NOT NULL,\n{_CALL_DIMS}\n"
    f"{_MEASURES}\n);\n"
    f"CREATE UNIQUE INDEX audit_llm_daily_key ON audit_llm_daily\n"
    f"    (day, {_ifnull(_CALL_COLUMNS, _NOT_NULL)});\n"
    f"CREATE TABLE audit_llm_daily_classes (\n    day             TEXT NOT NULL,\n"
    f"{_CLASS_DIMS}\n{_MEASURES}\n);\n"
    f"CREATE UNIQUE INDEX audit_llm_daily_classes_key ON audit_llm_daily_classes\n"
    f"    (day, {_ifnull(_CLASS_COLUMNS + ', data_class, source', _NOT_NULL)});\n"
    + _backfill("substr(c.time_start, 1, 10)")
)

POSTGRESQL = (
    f"CREATE TABLE audit_llm_daily (\n    day             TEXT NOT NULL,\n{_CALL_DIMS}\n"
    f"{_MEASURES}\n);\n"
    f"CREATE UNIQUE INDEX audit_llm_daily_key ON audit_llm_daily\n"
    f"    (day, {_CALL_COLUMNS}) NULLS NOT DISTINCT;\n"
    f"CREATE TABLE audit_llm_daily_classes (\n    day             TEXT NOT NULL,\n"
    f"{_CLASS_DIMS}\n{_MEASURES}\n);\n"
    f"CREATE UNIQUE INDEX audit_llm_daily_classes_key ON audit_llm_daily_classes\n"
    f"    (day, {_CLASS_COLUMNS}, data_class, source) NULLS NOT DISTINCT;\n"
    + _backfill("to_char(c.time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
)
