"""`wharf requests list|show|export`: the request log, on the local store or a server.

Same backends as the other admin commands (wharf/cli/admin.py): the local store by
default, a server's admin API with --server/--admin-key. On the local store, and with an
admin key and no --account, every account's requests are listed. Field names are the
admin API's (GET /admin/api/requests), in --json output and in exports alike.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import typer

from wharf.cli.admin import AdminKey, Server, console, print_page
from wharf.cli.output import EXIT_USAGE, print_json
from wharf.cli.transport import Call, CliError, account_params, jsonable, run
from wharf.platform.request_log import FIELDS, RequestFilter, export_csv, export_json

requests_app = typer.Typer(help="The request log: find a request by its id, list, export.", no_args_is_help=True)

Account = Annotated[str | None, typer.Option("--account", "-a", help="Account name or id.")]
Credential = Annotated[int | None, typer.Option("--credential", help="Credential id.")]
ServiceId = Annotated[int | None, typer.Option("--service", help="Service id.")]
Model = Annotated[str | None, typer.Option("--model", "-m")]
Dialect = Annotated[str | None, typer.Option("--dialect", help="openai | qianfan | welm | sensenova")]
Status = Annotated[str | None, typer.Option("--status", help="ok | cancelled | blocked | error | error:<kind>")]
Since = Annotated[str | None, typer.Option("--since", help="From this time (ISO 8601; UTC without an offset).")]
Until = Annotated[str | None, typer.Option("--until", help="Before this time (ISO 8601; UTC without an offset).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (the admin API's fields) instead of a table.")]
LIST_COLS = ["request_id", "created_at", "account_id", "dialect", "model", "status", "prompt_tokens",
             "completion_tokens", "ttft_ms", "latency_ms"]


def _time(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option} must be an ISO 8601 time, e.g. 2026-12-03T10:00 (got {value!r})",
                       EXIT_USAGE) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


class Query:
    """The filters, as the platform takes them (filter(): a RequestFilter, built on the local
    store only, so a server judges its own values) and as the admin API does (params)."""

    def __init__(self, t, account, credential, service, model, dialect, status, since, until):
        acc = t.account(account)
        self.fields = dict(credential_id=credential, service_id=service, model=model, dialect=dialect,
                           status=status, since=_time(since, "--since"), until=_time(until, "--until"))
        self.account_id = acc
        params = {**self.fields, **account_params(acc)}
        self.params = {k: (v.isoformat() if isinstance(v, dt.datetime) else v)
                       for k, v in params.items() if v is not None}

    def filter(self) -> RequestFilter:
        return RequestFilter(account_id=self.account_id, **self.fields)


@requests_app.command("list")
def requests_list(account: Account = None, credential: Credential = None, service: ServiceId = None,
                  model: Model = None, dialect: Dialect = None, status: Status = None, since: Since = None,
                  until: Until = None,
                  limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 50,
                  cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the page before.")]
                  = None,
                  as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Requests, newest first, one page; the next page with --cursor NEXT_CURSOR."""
    def fetch(t):
        q = Query(t, account, credential, service, model, dialect, status, since, until)

        def local(here) -> dict:
            entries, nxt = here.p.request_log.page(q.filter(), cursor=cursor, limit=limit)
            return {"data": [jsonable(e.to_dict()) for e in entries], "next_cursor": nxt}
        return t.run(Call(local, "GET", "/requests", params={**q.params, "limit": limit,
                                                              **({"cursor": cursor} if cursor else {})}))
    page = run(server, admin_key, fetch)
    print_page("requests", page, LIST_COLS, as_json)


@requests_app.command("show")
def requests_show(request_id: Annotated[str, typer.Argument(help="The id the client got (body id or "
                                                            "X-Request-Id header).")],
                  as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """One request's record."""
    call = Call(lambda here: jsonable(here.p.request_log.get(request_id).to_dict()),
                "GET", f"/requests/{request_id}")
    entry = run(server, admin_key, lambda t: t.run(call))
    if as_json:
        print_json(entry)
        return
    for name in FIELDS:
        console.print(f"{name:>18}: {'' if entry.get(name) is None else entry[name]}", highlight=False)


@requests_app.command("export")
def requests_export(account: Account = None, credential: Credential = None, service: ServiceId = None,
                    model: Model = None, dialect: Dialect = None, status: Status = None, since: Since = None,
                    until: Until = None,
                    fmt: Annotated[str, typer.Option("--format", "-f", help="csv | json")] = "csv",
                    output: Annotated[str | None, typer.Option("--output", "-o", help="File (default: stdout).")]
                    = None,
                    server: Server = None, admin_key: AdminKey = None):
    """Every matching request, newest first, as CSV or a JSON array (streamed)."""
    if fmt not in ("csv", "json"):
        raise typer.BadParameter("--format must be csv or json")

    def export(t):
        q = Query(t, account, credential, service, model, dialect, status, since, until)
        write = export_csv if fmt == "csv" else export_json
        call = Call(lambda here: write(here.p.request_log.iterate(q.filter())),
                    "GET", "/requests/export", params={**q.params, "format": fmt})
        parts = t.stream(call)     # the local store checks the filters here, before a file is made
        out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            for part in parts:
                out.write(part)
        finally:
            if output:
                out.close()
    run(server, admin_key, export)


def register(app: typer.Typer) -> None:
    app.add_typer(requests_app, name="requests")
