"""`wharf audit list`: who changed what (wharf/platform/audit.py), on the local store or a
server (--server). Field names are the admin API's (GET /admin/api/audit)."""

from __future__ import annotations

from typing import Annotated

import typer

from wharf.cli.admin import AdminKey, Server, print_page
from wharf.cli.transport import Call, jsonable, run

audit_app = typer.Typer(help="The audit log: every change made through the admin API, console or CLI.",
                        no_args_is_help=True)
COLS = ["id", "created_at", "actor", "actor_account_id", "source", "object_type", "object_id", "action"]



@audit_app.command("list")
def audit_list(account: Annotated[str | None, typer.Option("--account", "-a", help="Account name or id.")] = None,
               object_type: Annotated[str | None, typer.Option(
                   "--type", help="account | credential | service | lexicon")] = None,
               limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500)] = 50,
               cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the page before.")]
               = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
               server: Server = None, admin_key: AdminKey = None):
    """Changes, newest first, one page (every account's unless --account)."""
    def fetch(t):
        acc = t.account(account)

        def local(here) -> dict:
            entries, nxt = here.p.audit.page(account_id=acc, object_type=object_type, cursor=cursor, limit=limit)
            return {"data": [jsonable(e.to_dict()) for e in entries], "next_cursor": nxt}
        params = {"account_id": acc, "object_type": object_type, "cursor": cursor, "limit": limit}
        return t.run(Call(local, "GET", "/audit", params={k: v for k, v in params.items() if v is not None}))
    page = run(server, admin_key, fetch)
    print_page("audit", page, COLS, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
