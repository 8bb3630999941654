"""Audit: daily rollups of the LLM-call projection, so reports over months read thousands of
rows rather than millions (``custos.audit.storage.rollup`` states what they hold).

- ``audit_llm_daily``: per UTC day (``YYYY-MM-DD`` text on both dialects) and each value of
  the calls' report dimensions, the number of calls, their tokens and their cost.
- ``audit_llm_daily_routes`` (no principal, status, stage or error) and
  ``audit_llm_daily_principals`` (team, principal, outcome): the same sums over fewer
  dimensions, so far fewer rows a day for the groupings they hold.
- ``audit_llm_daily_classes``: the same per day, team, operation, provider, region and
  outcome, a data class and its source (``*``: either source; null: the calls with no class).
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

#: Each rollup's dimensions (written out here: an applied migration never changes).
_DIMS = {
    "audit_llm_daily": ("team", "principal_kind", "principal_id", "operation",
                        "requested_model", "provider", "provider_name", "model", "region",
                        "status", "outcome", "stopped_at", "error_type"),
    "audit_llm_daily_routes": ("team", "operation", "requested_model", "provider",
                               "provider_name", "model", "region", "outcome"),
    "audit_llm_daily_principals": ("team", "principal_kind", "principal_id", "outcome"),
    "audit_llm_daily_classes": ("team", "operation", "provider", "provider_name", "region",
                                "outcome", "data_class", "source"),
}  # fmt: skip
_CLASSES = "audit_llm_daily_classes"
_TYPES = {"status": "INTEGER NOT NULL", "operation": "TEXT NOT NULL", "outcome": "TEXT NOT NULL"}
_MEASURES = ("requests", "input_tokens", "output_tokens", "cost_micros")
_SUMS = "count(*), sum(c.input_tokens), sum(c.output_tokens), sum(c.cost_micros)"
#: Each call's classes once per (class, source), once per class as '*', or (null, null).
_KEYED = (
    "(SELECT event_id, data_class, source FROM audit_llm_call_data_classes"
    " UNION ALL SELECT event_id, data_class, '*' FROM audit_llm_call_data_classes"
    " GROUP BY event_id, data_class"
    " UNION ALL SELECT event_id, NULL, NULL FROM audit_llm_calls n WHERE NOT EXISTS"
    " (SELECT 1 FROM audit_llm_call_data_classes x WHERE x.event_id = n.event_id)) k"
)


def _table(name: str, dims: tuple[str, ...]) -> str:
    columns = [f"    day {'TEXT NOT NULL'}"]
    columns += [f"    {d} {_TYPES.get(d, 'TEXT')}" for d in dims]
    columns += [f"    {m} BIGINT NOT NULL" for m in _MEASURES]
    return f"CREATE TABLE {name} (\n" + ",\n".join(columns) + "\n);\n"


def _key(name: str, dims: tuple[str, ...], dialect: str) -> str:
    if dialect == "postgresql":
        return (f"CREATE UNIQUE INDEX {name}_key ON {name}\n"
                f"    (day, {', '.join(dims)}) NULLS NOT DISTINCT;\n")  # fmt: skip
    keyed = ", ".join(d if d in _TYPES else f"ifnull({d}, 0)" for d in dims)
    return f"CREATE UNIQUE INDEX {name}_key ON {name}\n    (day, {keyed});\n"


def _backfill(name: str, dims: tuple[str, ...], day: str) -> str:
    """Fill a rollup from the projection (``day``: the dialect's day of ``c.time_start``)."""
    source = f"{_KEYED} JOIN audit_llm_calls c ON c.event_id = k.event_id"
    picked = [f"k.{d}" if name == _CLASSES and d in ("data_class", "source") else f"c.{d}"
              for d in dims]  # fmt: skip
    keys = ", ".join([day, *picked])
    return (
        f"INSERT INTO {name} (day, {', '.join(dims)}, {', '.join(_MEASURES)})\n"
        f"SELECT {keys}, {_SUMS}\n"
        f"FROM {source if name == _CLASSES else 'audit_llm_calls c'}\n"
        f"GROUP BY {keys};\n"
    )


def _script(dialect: str, day: str) -> str:
    return "".join(
        _table(name, dims) + _key(name, dims, dialect) + _backfill(name, dims, day)
        for name, dims in _DIMS.items()
    )


SQLITE = _script("sqlite", "substr(c.time_start, 1, 10)")
POSTGRESQL = _script("postgresql", "to_char(c.time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
