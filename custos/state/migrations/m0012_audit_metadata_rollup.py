"""Audit: a daily rollup of the calls' metadata, so spend per metadata key (``custos audit
report --group-by metadata.project``, the console's spend page) sums thousands of rows rather
than parsing millions of records.

- ``audit_llm_daily_metadata``: per UTC day, team, provider account, provider model, outcome,
  and each metadata key and value a call carries (the ``X-Custos-Metadata`` object its record
  holds), the number of calls, their tokens and their cost. A call counts once per key it
  carries; the calls without a key are the day's calls less those with it
  (``custos.audit.storage.rollup`` states the contract).
- One unique key over the key, the day and the dimensions, null-safe as migration 0009's.
  The metadata key comes first: a report asks for one key over a range of days, which is one
  index range that skips the other keys' rows.
- Filled here from the records of the calls already stored (each record's ``metadata``: the
  projection has no column for it). From then on the store's insert path adds to it and the
  retention purge subtracts from it, as for the other rollups. PostgreSQL reads the records as
  ``json``, not ``jsonb``: a record may hold an escaped NUL elsewhere, which only ``jsonb``
  refuses; metadata values never hold one (``custos.policy.metadata`` refuses control
  characters).
"""

_DIMS = ("team", "provider", "model", "outcome", "key", "value")
_MEASURES = ("requests", "input_tokens", "output_tokens", "cost_micros")
_SUMS = "count(*), sum(c.input_tokens), sum(c.output_tokens), sum(c.cost_micros)"

_TABLE = """CREATE TABLE audit_llm_daily_metadata (
    day           TEXT NOT NULL,
    team          TEXT,
    provider      TEXT,
    model         TEXT,
    outcome       TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT,
    requests      BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_micros   BIGINT NOT NULL
);
"""


def _fill(day: str, pairs: str, key: str, value: str) -> str:
    keys = f"{day}, c.team, c.provider, c.model, c.outcome, {key}, {value}"
    return (
        f"INSERT INTO audit_llm_daily_metadata ({', '.join(('day', *_DIMS))},"
        f" {', '.join(_MEASURES)})\n"
        f"SELECT {keys}, {_SUMS}\n"
        "FROM audit_llm_calls c JOIN audit_events e ON e.event_id = c.event_id\n"
        f"    CROSS JOIN {pairs}\n"
        f"GROUP BY {keys};\n"
    )


SQLITE = (
    _TABLE + "CREATE UNIQUE INDEX audit_llm_daily_metadata_key ON audit_llm_daily_metadata\n"
    "    (key, day, ifnull(team, 0), ifnull(provider, 0), ifnull(model, 0), outcome,"
    " ifnull(value, 0));\n"
    + _fill(
        "substr(c.time_start, 1, 10)",
        "json_each(CAST(e.record AS TEXT), '$.metadata') m",
        "m.key",
        "m.value",
    )
)

POSTGRESQL = (
    _TABLE + "CREATE UNIQUE INDEX audit_llm_daily_metadata_key ON audit_llm_daily_metadata\n"
    "    (key, day, team, provider, model, outcome, value) NULLS NOT DISTINCT;\n"
    + _fill(
        "to_char(c.time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "LATERAL json_each_text(convert_from(e.record, 'UTF8')::json -> 'metadata') m",
        "m.key",
        "m.value",
    )
)
