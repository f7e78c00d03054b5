"""`wharf accounts content` and `wharf requests content`: whether an account keeps its
prompts and outputs (off by default; wharf/platform/request_content.py), and what was kept
for one request; on the local store or a server (--server)."""

from __future__ import annotations

from typing import Annotated

import typer

from wharf.cli.admin import AdminKey, Server, accounts_app, console
from wharf.cli.output import EXIT_USAGE, Json, print_json, shaped
from wharf.cli.requests import requests_app
from wharf.cli.transport import Call, err_console, jsonable, run
from wharf.platform.request_content import MAX_RETENTION_DAYS


@accounts_app.command("content")
def accounts_content(account: Annotated[str, typer.Argument(help="Account name or id.")],
                     keep_days: Annotated[int | None, typer.Option(
                         "--keep-days", min=1, max=MAX_RETENTION_DAYS,
                         help="Store each request's prompt and outputs, kept this many days.")] = None,
                     off: Annotated[bool, typer.Option("--off", help="Store nothing; what was stored is "
                                                                     "deleted at the next prune.")] = False,
                     as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Show whether an account stores prompts and outputs, or turn it on (--keep-days) or off."""
    if off and keep_days is not None:
        err_console.print("[red]error:[/red] --keep-days and --off exclude each other", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    change = off or keep_days is not None

    def go(t):
        acc = t.account(account)

        def local(here) -> dict:
            store = here.p.request_contents
            days = store.set_policy(acc, None if off else keep_days) if change else store.policy(acc)
            return {"account_id": acc, "retention_days": days}
        path = f"/accounts/{acc}/content-storage"
        if change:
            return t.run(Call(local, "PUT", path, json={"retention_days": None if off else keep_days}))
        return t.run(Call(local, "GET", path))
    out = run(server, admin_key, go)
    if as_json:
        print_json(shaped("ContentStorageOut", out))
        return
    days = out["retention_days"]
    console.print(f"account {out['account_id']}: " + ("prompts and outputs are not stored" if days is None else
                                                      f"prompts and outputs are kept {days} day(s)"),
                  highlight=False)


@requests_app.command("content")
def requests_content(request_id: Annotated[str, typer.Argument(help="The id the client got.")],
                     as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """A request's stored prompt and outputs (only for accounts that store them)."""
    call = Call(lambda here: jsonable(here.p.request_contents.get(request_id).to_dict()),
                "GET", f"/requests/{request_id}/content")
    out = run(server, admin_key, lambda t: t.run(call))
    if as_json:
        print_json(shaped("ContentOut", out))
        return
    console.print(f"request {out['request_id']} (kept until {out['expires_at']})", highlight=False)
    console.print("prompt:", highlight=False)
    console.print(out["prompt"], highlight=False, markup=False)
    for i, text in enumerate(out["outputs"]):
        console.print(f"output {i}:", highlight=False)
        console.print(text, highlight=False, markup=False)
