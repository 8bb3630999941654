"""Audit: the query projection of ``mcp.tool_call`` records, so reports group tool calls with
one indexed query (``custos audit report --kind tool_calls``) instead of reading every record.

- ``audit_tool_calls``: one row per tool call with the columns a report groups or filters by
  (who, which endpoint, server and tool, how it ended, where it stopped, how long it took).
  Everything in it is also in the record, except that a NUL character in text is U+FFFD here
  on both stores. Indexed only where its readers look: on time (the report) and on request id
  (``custos audit show``); an index on team or principal cost every insert and served no
  query (as migration 0006 found for model calls). Only ``event_id`` and ``time_start`` are
  required: a record the gateway could only build in part (``audit.repaired: ["$"]``) still
  gets its row, with nulls where it says nothing.
- ``audit_tool_call_data_classes``: a tool call's data classes (class, count, source; a class
  named twice by one source: the first), with the call's time, indexed on class and time, as
  ``audit_llm_call_data_classes`` for model calls.
- Both filled here from the tool-call records already stored (bodies the purge emptied have none);
  from then on the store's insert path adds the rows in the transaction that adds the records,
  and the retention purge deletes them with the bodies.
- Both guarded like the other projections (migration 0005): INSERT; DELETE only inside a purge
  window; no UPDATE (and no TRUNCATE on PostgreSQL).
- ``audit_tool_daily``: the daily rollup (``custos.audit.storage.tool_rollup`` states what it
  holds): per UTC day (``YYYY-MM-DD`` text) and each value of team, endpoint, server, tool,
  region, outcome, stage and error, the number of calls and of tool errors. One unique key,
  null-safe as migration 0009's (PostgreSQL ``NULLS NOT DISTINCT``; SQLite ``ifnull(column,
  0)``), day first. Filled here from the rows above; from then on the insert path adds to it
  in the transaction that adds the rows, and the purge subtracts what it deletes. Not guarded
  (every batch updates today's sums), and verify does not trust it: the report's figures can
  always be recomputed from the rows.
"""

#: (column, SQLite type, PostgreSQL type, record key), after ``event_id`` and ``time_start``
#: (written out here: an applied migration never changes).
_COLUMNS = (
    ("request_id", "TEXT", "TEXT", "request_id"),
    ("team", "TEXT", "TEXT", "team"),
    ("principal_kind", "TEXT", "TEXT", "principal.kind"),
    ("principal_id", "TEXT", "TEXT", "principal.id"),
    ("token_id", "TEXT", "TEXT", "auth.token_id"),
    ("endpoint", "TEXT", "TEXT", "mcp.endpoint"),
    ("server", "TEXT", "TEXT", "mcp.server"),
    ("tool", "TEXT", "TEXT", "mcp.tool"),
    ("called_as", "TEXT", "TEXT", "mcp.tool.called_as"),
    ("region", "TEXT", "TEXT", "cloud.region"),
    ("status", "INTEGER", "INTEGER", "http.response.status_code"),
    ("outcome", "TEXT", "TEXT", "outcome"),
    ("stopped_at", "TEXT", "TEXT", "stopped_at"),
    ("error_type", "TEXT", "TEXT", "error.type"),
    ("tool_error", "INTEGER", "BOOLEAN", "mcp.result.is_error"),
    ("latency_ms", "INTEGER", "BIGINT", "latency_ms"),
    ("config_revision", "TEXT", "TEXT", "config.revision"),
)
_NAMES = ", ".join(c for c, _, _, _ in _COLUMNS)
_PG_CASTS = {"INTEGER": "::integer", "BIGINT": "::bigint", "BOOLEAN": "::boolean"}


def _table(time_type: str, dialect: int) -> str:
    columns = ["    event_id   TEXT PRIMARY KEY", f"    time_start {time_type} NOT NULL"]
    columns += [f"    {c} {types[dialect]}" for c, *types, _ in _COLUMNS]
    return "CREATE TABLE audit_tool_calls (\n" + ",\n".join(columns) + "\n);\n"


_INDEXES = """CREATE INDEX audit_tool_calls_time ON audit_tool_calls (time_start);
CREATE INDEX audit_tool_calls_request ON audit_tool_calls (request_id);
"""

# A NUL in text (``\\u0000``) is projected as U+FFFD on both stores, as the insert path does:
# PostgreSQL text cannot hold one, and SQLite's JSON functions end a text at it. Escaped
# backslashes are set aside as chr(1) first (canonical JSON never holds it raw).
# SQLite: the store keeps audit_events.at in the text the insert path writes time_start in.
_SQLITE_TEXT = (
    "replace(replace(replace(CAST(record AS TEXT), char(92) || char(92), char(1)),"
    " char(92) || 'u0000', char(92) || 'ufffd'), char(1), char(92) || char(92))"
)
_SQLITE_FILL = (
    f"INSERT INTO audit_tool_calls (event_id, time_start, {_NAMES})\n"
    "SELECT event_id, at, "
    + ", ".join(f"json_extract(r, '$.\"{key}\"')" for _, _, _, key in _COLUMNS)
    + f"\nFROM (SELECT event_id, at, {_SQLITE_TEXT} AS r FROM audit_events\n"
    "      WHERE event_type = 'mcp.tool_call' AND length(record) > 0);\n"
)

_PG_JSON = (
    "(CASE WHEN strpos(t, chr(92) || 'u0000') = 0 THEN t ELSE replace(replace(replace(t,"
    " chr(92) || chr(92), chr(1)), chr(92) || 'u0000', chr(92) || 'ufffd'), chr(1),"
    " chr(92) || chr(92)) END)::jsonb"
)
_PG_FILL = (
    f"INSERT INTO audit_tool_calls (event_id, time_start, {_NAMES})\n"
    "SELECT event_id, at, "
    + ", ".join(f"(r ->> '{key}'){_PG_CASTS.get(pg, '')}" for _, _, pg, key in _COLUMNS)
    + f"\nFROM (SELECT event_id, at, {_PG_JSON} AS r\n"
    "      FROM (SELECT event_id, at, convert_from(record, 'UTF8') AS t FROM audit_events\n"
    "            WHERE event_type = 'mcp.tool_call' AND length(record) > 0) texts) calls;\n"
)

_CLASSES = """CREATE TABLE audit_tool_call_data_classes (
    event_id    TEXT NOT NULL,
    data_class  TEXT NOT NULL,
    source      TEXT NOT NULL,
    match_count {count},
    time_start  {time} NOT NULL,
    PRIMARY KEY (event_id, data_class, source)
){rowid};
"""
_CLASSES_INDEX = """CREATE INDEX audit_tool_call_data_classes_class
    ON audit_tool_call_data_classes (data_class, time_start);
"""
_SQLITE_CLASSES_FILL = (
    "INSERT INTO audit_tool_call_data_classes"
    " (event_id, data_class, source, match_count, time_start)\n"
    "SELECT e.event_id, json_extract(c.value, '$.class'), json_extract(c.value, '$.source'),"
    " json_extract(c.value, '$.count'), e.at\n"
    f"FROM (SELECT event_id, at, {_SQLITE_TEXT} AS r FROM audit_events\n"
    "      WHERE event_type = 'mcp.tool_call' AND length(record) > 0) e,\n"
    "     json_each(e.r, '$.data_classes') c\n"
    "WHERE json_type(e.r, '$.data_classes') = 'array'\n"
    "ORDER BY e.event_id, c.key\n"
    "ON CONFLICT DO NOTHING;\n"
)
_PG_CLASSES_FILL = (
    "INSERT INTO audit_tool_call_data_classes"
    " (event_id, data_class, source, match_count, time_start)\n"
    "SELECT event_id, c ->> 'class', c ->> 'source', (c ->> 'count')::bigint, at\n"
    f"FROM (SELECT event_id, at, {_PG_JSON} AS r\n"
    "      FROM (SELECT event_id, at, convert_from(record, 'UTF8') AS t FROM audit_events\n"
    "            WHERE event_type = 'mcp.tool_call' AND length(record) > 0) texts) calls\n"
    "CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(r -> 'data_classes')"
    " = 'array' THEN r -> 'data_classes' END) WITH ORDINALITY AS x (c, n)\n"
    "ORDER BY event_id, n\n"
    "ON CONFLICT DO NOTHING;\n"
)

_DIMS = ("team", "endpoint", "server", "tool", "region", "outcome", "stopped_at", "error_type")


def _rollup(dialect: str, day: str) -> str:
    names = ["day TEXT NOT NULL", *(f"{d} TEXT" for d in _DIMS), "calls BIGINT NOT NULL",
             "tool_errors BIGINT NOT NULL"]  # fmt: skip
    columns = ",\n".join(f"    {c}" for c in names)
    if dialect == "postgresql":
        key = f"(day, {', '.join(_DIMS)}) NULLS NOT DISTINCT"
        errors = "count(*) FILTER (WHERE tool_error)"
    else:
        key = f"(day, {', '.join(f'ifnull({d}, 0)' for d in _DIMS)})"
        errors = "sum(CASE WHEN tool_error THEN 1 ELSE 0 END)"
    keys = ", ".join([day, *_DIMS])
    return (
        f"CREATE TABLE audit_tool_daily (\n{columns}\n);\n"
        f"CREATE UNIQUE INDEX audit_tool_daily_key ON audit_tool_daily\n    {key};\n"
        f"INSERT INTO audit_tool_daily (day, {', '.join(_DIMS)}, calls, tool_errors)\n"
        f"SELECT {keys}, count(*), {errors}\nFROM audit_tool_calls\nGROUP BY {keys};\n"
    )


def _sqlite_guards(table: str) -> str:
    refused = "{table}: the audit tables are append-only ({op} refused)"
    return f"""CREATE TRIGGER audit_guard_{table}_update BEFORE UPDATE ON {table}
BEGIN
    SELECT RAISE(ABORT, '{refused.format(table=table, op="UPDATE")}');
END;
CREATE TRIGGER audit_guard_{table}_delete BEFORE DELETE ON {table}
WHEN NOT EXISTS (SELECT 1 FROM audit_purge_window)
BEGIN
    SELECT RAISE(ABORT, '{refused.format(table=table, op="DELETE")}');
END;
"""


def _pg_guards(table: str) -> str:
    return f"""CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION audit_projection_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
"""


_PROJECTIONS = ("audit_tool_calls", "audit_tool_call_data_classes")

SQLITE = (
    _table("TEXT", 0)
    + _SQLITE_FILL
    + _INDEXES
    + _CLASSES.format(count="INTEGER", time="TEXT", rowid=" WITHOUT ROWID")
    + _SQLITE_CLASSES_FILL
    + _CLASSES_INDEX
    + _rollup("sqlite", "substr(time_start, 1, 10)")
    + "".join(_sqlite_guards(t) for t in _PROJECTIONS)
)

POSTGRESQL = (
    _table("TIMESTAMPTZ", 1)
    + _PG_FILL
    + _INDEXES
    + _CLASSES.format(count="BIGINT", time="TIMESTAMPTZ", rowid="")
    + _PG_CLASSES_FILL
    + _CLASSES_INDEX
    + _rollup("postgresql", "to_char(time_start AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
    + "".join(_pg_guards(t) for t in _PROJECTIONS)
)
