"""``custos audit report|export|show|hold|content|erase``: the audit trail, over the admin API.

Like the other admin commands they call the gateway (``--url``, default ``$CUSTOS_URL`` or
http://127.0.0.1:8787) with a personal access token of an admin or auditor (``--token`` or
``$CUSTOS_TOKEN``).

- ``report --from 2026-07-01 --to 2026-09-30 --group-by team,provider [--data-class X]
  [--format table|csv|json]``: requests, tokens, cost and denials per group, with totals;
  ``--kind tool_calls --group-by team,server,tool``: MCP tool calls (calls, served, denied,
  cancelled, failed, tool errors) per group, with totals.
- ``export [--from] [--to] [--event-type T] [--output FILE]``: the records as JSON lines, each
  line the record's bytes exactly as stored (so ``SHA-256(0x00 || line)`` is its leaf hash).
- ``show REQUEST_ID``: the records of one request (or one event id), readable.
- ``hold set [--team T] --reason R``, ``hold release HOLD_ID --reason R``, ``hold list
  [--active]``: legal holds, which suspend the retention purge (set and release: admins).
- ``content REQUEST_ID``: its captured content, decrypted (``audit.content``: ``redacted`` or
  ``full``), or its digests (``hash``), or that it was erased.
- ``erase --team T | --principal P`` (admins only): destroy the content keys of a team or a
  principal; their stored content can never be read again. The records stay, and verify.

``verify``, ``keys``, ``prove``, ``check-proof`` and ``purge`` work on the store (or a file)
directly instead: see ``custos.cli.audit_store``. What the routes do is ``custos.audit.service``.

Exit status: 0 done, 1 refused or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from custos import private
from custos.audit.compliance.report import render_csv, render_table
from custos.audit.compliance.tool_report import DEFAULT_GROUP_BY as TOOL_GROUP_BY
from custos.audit.compliance.tool_report import DIMENSIONS as TOOL_DIMENSIONS
from custos.audit.compliance.tool_report import MEASURES as TOOL_MEASURES
from custos.cli import audit_store
from custos.cli.client import AdminClient, ApiError, path
from custos.cli.common import TOKEN_ENV, Run, api_options, fail, token_of, usage

Action = Callable[[AdminClient, argparse.Namespace], int]


def _run(action: Action) -> Run:
    def run(args: argparse.Namespace) -> int:
        token = token_of(args)
        if not token:
            return fail(f"no token: pass --token or set ${TOKEN_ENV}", 2)
        try:
            return action(AdminClient(args.url, token, timeout=120), args)
        except ApiError as exc:
            return fail(str(exc))

    return run


def _report(client: AdminClient, args: argparse.Namespace) -> int:
    if args.kind == "tool_calls":
        return tool_report(client, args.from_, args.to, args.group_by, args.format,
                           data_class=args.data_class, source=args.source)  # fmt: skip
    query = {"from": args.from_, "to": args.to, "group_by": args.group_by or "team,provider",
             "data_class": args.data_class, "source": args.source}  # fmt: skip
    reply = client.call("GET", path("audit", "report"), query=query)
    if args.format == "json":
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif args.format == "csv":
        sys.stdout.write(render_csv(reply))
    else:
        sys.stdout.write(render_table(reply))
    return 0


def tool_report(client: AdminClient, since: str, until: str, group_by: str | None, form: str,
                *, data_class: str | None = None, source: str | None = None) -> int:  # fmt: skip
    """The tool-call report (``GET /admin/v1/audit/report/tool-calls``) printed as ``form``:
    ``custos audit report --kind tool_calls`` and ``custos mcp report``."""
    query = {"from": since, "to": until, "group_by": group_by or TOOL_GROUP_BY,
             "data_class": data_class, "source": source}  # fmt: skip
    reply = client.call("GET", path("audit", "report", "tool-calls"), query=query)
    if form == "json":
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif form == "csv":
        sys.stdout.write(render_csv(reply, TOOL_MEASURES))
    else:
        sys.stdout.write(render_table(reply, TOOL_MEASURES))
    return 0


def _export(client: AdminClient, args: argparse.Namespace) -> int:
    out: BinaryIO = private.open_binary(args.output, "wb") if args.output else sys.stdout.buffer
    count = 0
    try:
        after = 0
        while True:
            query: dict[str, Any] = {"from": args.from_, "to": args.to,
                                     "event_type": args.event_type, "after": after}  # fmt: skip
            page = client.call("GET", path("audit", "events"), query=query)
            out.write(b"".join(r["record"].encode("utf-8") + b"\n" for r in page["data"]))
            count += len(page["data"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
    print(f"custos: exported {count} record(s)", file=sys.stderr)
    return 0


def _show(client: AdminClient, args: argparse.Namespace) -> int:
    reply = client.call("GET", path("audit", "requests", args.request_id))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    for entry in reply["data"]:
        print(f"# {entry['event_type']} {entry['event_id']}  leaf {entry['leaf_hash']}")
        print(json.dumps(json.loads(entry["record"]), indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def _hold_line(hold: dict[str, Any]) -> str:
    scope = f"team {hold['team']}" if hold["team"] else "every record"
    state = "active"
    if not hold["active"]:
        state = (f"released {hold['released_at']} by {hold['released_by']}: "
                 f"{hold['release_reason']}")  # fmt: skip
    return (f"{hold['id']}  {scope}  set {hold['set_at']} by {hold['set_by']}: "
            f"{hold['reason']}  [{state}]")  # fmt: skip


def _hold_set(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **({"team": args.team} if args.team else {})}
    print(_hold_line(client.call("POST", path("audit", "holds"), body=body)))
    return 0


def _hold_release(client: AdminClient, args: argparse.Namespace) -> int:
    reply = client.call("POST", path("audit", "holds", args.hold_id, "release"),
                        body={"reason": args.reason})  # fmt: skip
    print(_hold_line(reply))
    return 0


def _hold_list(client: AdminClient, args: argparse.Namespace) -> int:
    query = {"active": "true" if args.active else None}
    reply = client.call("GET", path("audit", "holds"), query=query)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    for hold in reply["data"]:
        print(_hold_line(hold))
    return 0


def _content(client: AdminClient, args: argparse.Namespace) -> int:
    reply = client.call("GET", path("audit", "requests", args.request_id, "content"))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    for entry in reply["data"]:
        print(f"# llm.call {entry['event_id']}  content: {entry['mode']}, {entry['state']}")
        if entry["state"] == "erased":
            print(f"content erased: its key was destroyed at {entry['erased_at']}")
        elif entry["state"] == "hashed":
            for part, digest in (entry["digests"] or {}).items():
                print(f"{part} HMAC-SHA-256 (key: the record's salt): {digest}")
        elif entry["state"] == "missing":
            print("content missing: the record names a ciphertext the store does not have")
        elif entry["state"] == "available":
            for part in ("request", "response"):
                print(f"## {part}")
                print(json.dumps(entry[part], indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def _erase(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"team": args.team} if args.team is not None else {"principal": args.principal}
    reply = client.call("POST", path("audit", "erase"), body=body)
    print(
        f"erased the content of {reply['scope']} {reply['subject']}: {reply['data_keys']} "
        f"key(s) destroyed, {reply['contents']} encrypted content part(s) deleted"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``audit`` and its commands to the ``custos`` parser."""
    parent = api_options("an admin's or auditor's token")

    audit = subparsers.add_parser(
        "audit", help="read the audit trail", description="The audit trail (admins, auditors)."
    )
    audit.set_defaults(run=lambda _args: usage(audit))
    commands = audit.add_subparsers(title="audit commands", metavar="COMMAND")
    _register_records(commands, parent)
    _register_holds(commands, parent)
    _register_content(commands, parent)
    audit_store.register(commands)


def _register_records(commands: Any, parent: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report", parents=[parent],
        help="LLM calls (or MCP tool calls) grouped: requests, tokens, cost, denials",
        description="Which teams sent which data to which providers: LLM calls between two "
        "dates grouped by the dimensions given, with requests, tokens, cost and denials, and "
        "totals. With --kind tool_calls: MCP tool calls grouped by team, server, tool, ..., "
        "with calls, served, denied, cancelled, failed and tool errors. Dates are whole UTC "
        "days, both inclusive.",
    )  # fmt: skip
    report.add_argument("--kind", choices=["llm_calls", "tool_calls"], default="llm_calls",
                        help="what to report: model calls (default) or MCP tool calls")  # fmt: skip
    report.add_argument("--from", dest="from_", required=True, metavar="DATE")
    report.add_argument("--to", required=True, metavar="DATE")
    report.add_argument("--group-by",
                        help="comma-separated. LLM calls (default team,provider): team, "
                        "principal, provider, model, region, data_class, outcome, stage, "
                        "status, day, month, quarter, metadata.KEY, ...; tool calls (default "
                        f"{TOOL_GROUP_BY}): {', '.join(TOOL_DIMENSIONS)}")  # fmt: skip
    report.add_argument("--data-class", help="only calls that carry this data class")
    report.add_argument("--source", choices=["declared", "detected"],
                        help="only classes from this source: declared by the caller, or "
                        "detected in the content")  # fmt: skip
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.set_defaults(run=_run(_report))

    export = commands.add_parser(
        "export", parents=[parent], help="the records as JSON lines, byte for byte as stored",
        description="Write audit records as JSON lines, each exactly the stored bytes.",
    )  # fmt: skip
    export.add_argument("--from", dest="from_", metavar="DATE")
    export.add_argument("--to", metavar="DATE")
    export.add_argument("--event-type", help="llm.call, admin.change, config.revision, …")
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=_run(_export))

    show = commands.add_parser(
        "show", parents=[parent], help="the records of one request",
        description="Show the audit records of one request id (x-custos-request-id) or event id.",
    )  # fmt: skip
    show.add_argument("request_id", metavar="REQUEST_ID")
    show.add_argument("--json", action="store_true", help="print the API's JSON reply")
    show.set_defaults(run=_run(_show))


def _register_holds(commands: Any, parent: argparse.ArgumentParser) -> None:
    hold = commands.add_parser(
        "hold", help="legal holds: suspend the retention purge",
        description="Legal holds suspend the retention purge: for every record, or for the LLM "
        "and MCP tool calls of one team. Admins set and release them, with a reason; each "
        "change is an admin event.",
    )  # fmt: skip
    hold.set_defaults(run=lambda _args: usage(hold))
    holds = hold.add_subparsers(title="hold commands", metavar="COMMAND")
    hold_set = holds.add_parser("set", parents=[parent], help="set a hold (admin)")
    hold_set.add_argument("--team", help="hold this team's records only (default: every record)")
    hold_set.add_argument("--reason", required=True)
    hold_set.set_defaults(run=_run(_hold_set))
    release = holds.add_parser("release", parents=[parent], help="release a hold (admin)")
    release.add_argument("hold_id", metavar="HOLD_ID")
    release.add_argument("--reason", required=True)
    release.set_defaults(run=_run(_hold_release))
    listing = holds.add_parser("list", parents=[parent], help="list holds (admin, auditor)")
    listing.add_argument("--active", action="store_true", help="only holds in force")
    listing.add_argument("--json", action="store_true", help="print the API's JSON reply")
    listing.set_defaults(run=_run(_hold_list))


def _register_content(commands: Any, parent: argparse.ArgumentParser) -> None:
    content = commands.add_parser(
        "content", parents=[parent], help="the captured content of one request, decrypted",
        description="Show the prompt and completion captured for one request (audit.content: "
        "redacted or full), after checking the ciphertext against the hash in its record; or "
        "its digests (hash); or that it was erased.",
    )  # fmt: skip
    content.add_argument("request_id", metavar="REQUEST_ID")
    content.add_argument("--json", action="store_true", help="print the API's JSON reply")
    content.set_defaults(run=_run(_content))

    erase = commands.add_parser(
        "erase", parents=[parent], help="destroy a team's or a principal's content keys",
        description="Crypto-shredding: destroy the data keys of a team or a principal, and the "
        "content encrypted under them. The audit records keep only hashes, so verify still "
        "passes. Admins only; the erasure is itself recorded.",
    )  # fmt: skip
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--team", help="a team name")
    who.add_argument("--principal", help="a user id or email, or a virtual account id or name")
    erase.set_defaults(run=_run(_erase))
