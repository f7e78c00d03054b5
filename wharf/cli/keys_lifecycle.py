"""`wharf keys scope|quota|rotate`: a credential's expiry, allow-lists, own daily quota and
rotation (wharf/platform/key_scope.py, quota.py), on the local store or a server (--server)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from wharf.cli.admin import SECRET_NAMES, AdminKey, Server, console, keys_app
from wharf.cli.output import Json, print_json, shaped
from wharf.cli.transport import Call, run


def _out(data: dict, as_json: bool, schema: str) -> None:
    if as_json:
        print_json(shaped(schema, data))
        return
    for k, v in data.items():
        console.print(f"{k:>20}: {'' if v is None else v}", highlight=False)


def _jsonable(d: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in d.items()}


@keys_app.command("scope")
def keys_scope(credential_id: int,
               expires_at: Annotated[str | None, typer.Option("--expires-at", help="ISO 8601 time (UTC without "
                                                              "an offset); 'never' clears it.")] = None,
               models: Annotated[str | None, typer.Option("--models", help="Comma-separated model names; "
                                                          "'any' clears the list.")] = None,
               services: Annotated[str | None, typer.Option("--services", help="Comma-separated service ids; "
                                                            "'any' clears the list.")] = None,
               quota_chars: Annotated[int | None, typer.Option(help="Its own generated characters a day, on top "
                                                               "of the account's; negative clears it.")] = None,
               quota_tokens: Annotated[int | None, typer.Option(help="Its own tokens a day; negative clears "
                                                                "it.")] = None,
               as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Show a credential's expiry, allow-lists and own daily quota, or set them (only what
    is given changes; 0 allows nothing)."""
    fields: dict = {}
    for name, value in (("quota_chars_per_day", quota_chars), ("quota_tokens_per_day", quota_tokens)):
        if value is not None:
            fields[name] = None if value < 0 else value
    try:
        if expires_at is not None:
            t = None if expires_at == "never" else dt.datetime.fromisoformat(expires_at)
            fields["expires_at"] = t if t is None or t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
        if models is not None:
            fields["allowed_models"] = None if models == "any" else [m.strip() for m in models.split(",") if m.strip()]
        if services is not None:
            fields["allowed_services"] = (None if services == "any"
                                          else [int(x) for x in services.split(",") if x.strip()])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    def local(here) -> dict:
        scopes = here.p.key_scopes
        return _jsonable((scopes.set(credential_id, **fields) if fields else scopes.get(credential_id)).to_dict())
    path = f"/credentials/{credential_id}/scope"
    call = Call(local, "PATCH", path, json=_jsonable(fields)) if fields else Call(local, "GET", path)
    _out(run(server, admin_key, lambda t: t.run(call)), as_json, "ScopeOut")


@keys_app.command("quota")
def keys_quota(credential_id: int, as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Today's quota of a credential: its own limits and what it (with the rest of its
    rotation line) used and holds."""
    call = Call(lambda here: {k: (v.isoformat() if isinstance(v, dt.date) else v)
                              for k, v in here.p.quota.credential_status(credential_id).to_dict().items()},
                "GET", f"/credentials/{credential_id}/quota")
    _out(run(server, admin_key, lambda t: t.run(call)), as_json, "CredentialQuotaOut")


@keys_app.command("rotate")
def keys_rotate(credential_id: int,
                grace: Annotated[int, typer.Option("--grace", min=0, max=365 * 86400,
                                                   help="Seconds the old secret keeps working.")] = 86400,
                as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """A new secret for a credential; the old one works for --grace seconds more."""
    def local(here) -> dict:
        issued = here.p.key_scopes.rotate(credential_id, grace=dt.timedelta(seconds=grace))
        return {**_jsonable({**issued.to_dict(), "credential": _jsonable(issued.to_dict()["credential"])}),
                "old": _jsonable(here.p.key_scopes.get(credential_id).to_dict())}
    call = Call(local, "POST", f"/credentials/{credential_id}/rotate", json={"grace_s": grace})
    out = run(server, admin_key, lambda t: t.run(call))
    if as_json:
        print_json(shaped("RotatedOut", out))
        return
    cred = out["credential"]
    console.print(f"credential {cred['id']} ({cred['kind']}) replaces {credential_id}, "
                  f"which works until {out['old']['expires_at']}", highlight=False)
    for title, key in SECRET_NAMES[cred["kind"]]:
        console.print(f"  {title}: {out[key]}", soft_wrap=True, highlight=False)
    console.print("[yellow]Store the secret now: it cannot be shown again.[/yellow]")


