"""Admin commands: `wharf accounts|keys|services|usage|safety ...`.

By default they work on the local store (the database and secret key that
Settings name: WHARF_DATA_DIR, WHARF_DATABASE_URL, WHARF_SECRET_KEY). With
`--server URL --admin-key KEY` (or env WHARF_SERVER / WHARF_ADMIN_KEY) they
call a running server's admin API instead: the same operations (wharf/cli/operations.py)
over either transport (wharf/cli/transport.py). `--json` prints what a command shows in the
admin API's field names, and the exit code says how it ended (wharf/cli/output.py).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wharf.cli import operations as ops
from wharf.cli.output import EXIT_USAGE, Json, print_json, shaped
from wharf.cli.transport import err_console, run

console = Console()

Server = Annotated[str | None, typer.Option("--server", envvar="WHARF_SERVER",
                                            help="Use a running server's admin API at this URL.")]
AdminKey = Annotated[str | None, typer.Option("--admin-key", envvar="WHARF_ADMIN_KEY",
                                              help="API key for --server (an admin account's key).")]
KINDS = ("api_key", "qianfan_app", "qianfan_iam", "sensenova")


def show(as_json: bool, schema: str, data, table) -> None:
    """`data` as JSON in the admin API's `schema` fields, or as the command's own view (`table()`)."""
    if as_json:
        print_json(shaped(schema, data))
    else:
        table()


def print_page(title: str, page: dict, cols: list[str], as_json: bool) -> None:
    """A keyset page ({"data", "next_cursor"}) as one JSON line, or as a table and the
    option that fetches the next page."""
    if as_json:
        print(json.dumps(page, ensure_ascii=False))
        return
    _table(title, page["data"], cols)
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}", highlight=False)


def _table(title: str, rows: list[dict], cols: list[str]) -> None:
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, (dt.datetime,)):
                v = v.strftime("%Y-%m-%d %H:%M")
            elif isinstance(v, str) and len(v) > 19 and v[4:5] == "-" and "T" in v:
                v = v[:16].replace("T", " ")
            vals.append("" if v is None else str(v))
        t.add_row(*vals)
    console.print(t)


# -- commands ----------------------------------------------------------------------------

accounts_app = typer.Typer(help="Accounts: create, list, disable, enable.", no_args_is_help=True)
keys_app = typer.Typer(help="Credentials: API keys, Qianfan app/IAM keys, SenseNova keys.", no_args_is_help=True)
services_app = typer.Typer(help="Services: an endpoint bound to a model and a kind.", no_args_is_help=True)

ACCOUNT_COLS = ["id", "name", "status", "is_admin", "quota_chars_per_day", "quota_tokens_per_day", "rpm",
                "tpm", "created_at"]


_KEY_CEILING = "The most the account may give one of its own {} (its {}); not given: no ceiling."


@accounts_app.command("create")
def accounts_create(name: str,
                    admin: Annotated[bool, typer.Option("--admin", help="An admin account.")] = False,
                    quota_chars: Annotated[int | None, typer.Option(min=0, help="Generated characters a day.")] = None,
                    quota_tokens: Annotated[int | None, typer.Option(min=0, help="Tokens a day.")] = None,
                    rpm: Annotated[int | None, typer.Option(min=0)] = None,
                    tpm: Annotated[int | None, typer.Option(min=0)] = None,
                    qps: Annotated[int | None, typer.Option(min=0)] = None,
                    max_concurrency: Annotated[int | None, typer.Option(min=0)] = None,
                    key_rpm: Annotated[int | None, typer.Option(min=0, help=_KEY_CEILING.format("keys", "rpm"))]
                    = None,
                    key_tpm: Annotated[int | None, typer.Option(min=0)] = None,
                    key_qps: Annotated[int | None, typer.Option(min=0)] = None,
                    key_max_concurrency: Annotated[int | None, typer.Option(min=0)] = None,
                    service_rpm: Annotated[int | None, typer.Option(min=0, help=_KEY_CEILING.format("services",
                                                                                                    "rpm"))] = None,
                    service_tpm: Annotated[int | None, typer.Option(min=0)] = None,
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Create an account. A limit not given: none (or the WHARF_DEFAULT_* one); 0: nothing allowed."""
    limits = {k: v for k, v in dict(quota_chars_per_day=quota_chars, quota_tokens_per_day=quota_tokens,
                                    rpm=rpm, tpm=tpm, qps=qps, max_concurrency=max_concurrency,
                                    key_rpm=key_rpm, key_tpm=key_tpm, key_qps=key_qps,
                                    key_max_concurrency=key_max_concurrency, service_rpm=service_rpm,
                                    service_tpm=service_tpm).items()
              if v is not None}
    a = run(server, admin_key, lambda t: ops.accounts_create(t, name, admin, limits))
    show(as_json, "AccountOut", a, lambda: _table("account created", [a], ACCOUNT_COLS))


@accounts_app.command("list")
def accounts_list(as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """List accounts."""
    rows = run(server, admin_key, ops.accounts_list)
    show(as_json, "AccountOut", rows, lambda: _table("accounts", rows, ACCOUNT_COLS))


@accounts_app.command("disable")
def accounts_disable(account: Annotated[str, typer.Argument(help="Account name or id.")],
                     as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Disable an account: its credentials stop working at once."""
    a = run(server, admin_key, lambda t: ops.accounts_status(t, account, "disabled"))
    show(as_json, "AccountOut", a, lambda: console.print(f"account {a['name']} is now {a['status']}"))


@accounts_app.command("enable")
def accounts_enable(account: Annotated[str, typer.Argument(help="Account name or id.")],
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Enable a disabled account."""
    a = run(server, admin_key, lambda t: ops.accounts_status(t, account, "active"))
    show(as_json, "AccountOut", a, lambda: console.print(f"account {a['name']} is now {a['status']}"))


def _limit_values(**given) -> dict:
    """Options given on the command line; a negative value clears that limit (null)."""
    return {k: (None if v < 0 else v) for k, v in given.items() if v is not None}



@accounts_app.command("limits")
def accounts_limits(account: Annotated[str, typer.Argument(help="Account name or id.")],
                    quota_chars: Annotated[int | None, typer.Option(help="Generated characters a day.")] = None,
                    quota_tokens: Annotated[int | None, typer.Option(help="Tokens a day.")] = None,
                    rpm: Annotated[int | None, typer.Option()] = None,
                    tpm: Annotated[int | None, typer.Option()] = None,
                    qps: Annotated[int | None, typer.Option()] = None,
                    max_concurrency: Annotated[int | None, typer.Option()] = None,
                    key_rpm: Annotated[int | None, typer.Option(help=_KEY_CEILING.format("keys", "rpm"))] = None,
                    key_tpm: Annotated[int | None, typer.Option()] = None,
                    key_qps: Annotated[int | None, typer.Option()] = None,
                    key_max_concurrency: Annotated[int | None, typer.Option()] = None,
                    service_rpm: Annotated[int | None, typer.Option(help=_KEY_CEILING.format("services",
                                                                                             "rpm"))] = None,
                    service_tpm: Annotated[int | None, typer.Option()] = None,
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Set an account's limits and daily quota (options not given are kept). 0 allows
    nothing; a negative value clears a limit, so the platform default (WHARF_DEFAULT_*)
    applies again (for the --key-* / --service-* ceilings: no ceiling). A ceiling also
    brings the account's keys / services above it down to it."""
    limits = _limit_values(quota_chars_per_day=quota_chars, quota_tokens_per_day=quota_tokens,
                           rpm=rpm, tpm=tpm, qps=qps, max_concurrency=max_concurrency,
                           key_rpm=key_rpm, key_tpm=key_tpm, key_qps=key_qps,
                           key_max_concurrency=key_max_concurrency, service_rpm=service_rpm,
                           service_tpm=service_tpm)
    a = run(server, admin_key, lambda t: ops.accounts_limits(t, account, limits))
    show(as_json, "AccountOut", a, lambda: _table(
        "account limits", [a], ACCOUNT_COLS + ["qps", "max_concurrency", "key_rpm", "key_tpm", "key_qps",
                                               "key_max_concurrency", "service_rpm", "service_tpm"]))


KEY_COLS = ["id", "account_id", "kind", "public_id", "label", "created_at", "last_used_at", "revoked_at"]
SECRET_NAMES = {"api_key": [("API key", "api_key")],
                "qianfan_app": [("API Key (client_id)", "api_key"),
                                ("Secret Key (client_secret)", "secret_key")],
                "qianfan_iam": [("Access Key", "access_key"), ("Secret Key", "secret_key")],
                "sensenova": [("Access key id", "access_key_id"), ("Secret access key", "secret_access_key")]}


@keys_app.command("create")
def keys_create(account: Annotated[str | None, typer.Option("--account", "-a", help="Account name or id.")] = None,
                kind: Annotated[str, typer.Option("--kind", "-k",
                                                  help="api_key | qianfan_app | qianfan_iam | sensenova")] = "api_key",
                label: Annotated[str, typer.Option("--label", "-l")] = "",
                as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Create a credential; its secret is shown now and never again."""
    if kind not in KINDS:
        err_console.print(f"[red]error:[/red] --kind must be one of {', '.join(KINDS)}")
        raise typer.Exit(EXIT_USAGE)
    issued = run(server, admin_key, lambda t: ops.keys_create(t, account, kind, label))
    if as_json:
        print_json(shaped("IssuedCredentialOut", issued))
        return
    cred = issued["credential"]
    console.print(f"credential {cred['id']} ({kind}) for account {cred['account_id']}")
    for title, key in SECRET_NAMES[kind]:
        console.print(f"  {title}: {issued[key]}", soft_wrap=True, highlight=False)
    console.print("[yellow]Store the secret now: it cannot be shown again.[/yellow]")


@keys_app.command("list")
def keys_list(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
              as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """List credentials (never their secrets)."""
    rows = run(server, admin_key, lambda t: ops.keys_list(t, account))
    show(as_json, "CredentialOut", rows, lambda: _table("credentials", rows, KEY_COLS))


@keys_app.command("revoke")
def keys_revoke(credential_id: int, as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Revoke a credential: the next request with it fails."""
    c = run(server, admin_key, lambda t: ops.keys_revoke(t, credential_id))
    show(as_json, "CredentialOut", c,
         lambda: console.print(f"credential {c['id']} ({c['kind']} {c['public_id']}) revoked"))


@keys_app.command("limits")
def keys_limits(credential_id: int,
                rpm: Annotated[int | None, typer.Option()] = None,
                tpm: Annotated[int | None, typer.Option()] = None,
                qps: Annotated[int | None, typer.Option()] = None,
                max_concurrency: Annotated[int | None, typer.Option()] = None,
                as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Set a credential's own limits (they narrow the account's). 0 allows nothing; a
    negative value clears one."""
    limits = _limit_values(rpm=rpm, tpm=tpm, qps=qps, max_concurrency=max_concurrency)
    c = run(server, admin_key, lambda t: ops.keys_limits(t, credential_id, limits))
    show(as_json, "CredentialOut", c, lambda: _table("credential limits", [c], [
        "id", "account_id", "kind", "public_id", "rpm", "tpm", "qps", "max_concurrency"]))


SERVICE_COLS = ["id", "account_id", "endpoint", "kind", "model", "description", "rpm", "tpm", "created_at"]


@services_app.command("create")
def services_create(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
                    endpoint: Annotated[str, typer.Option(
                        "--endpoint", "-e", help="The API address you choose, e.g. test1; the endpoint to call "
                                                 "is it behind a random prefix, e.g. lbwxxxd4_test1")]
                    = ...,
                    model: Annotated[str, typer.Option("--model", "-m")] = ...,
                    kind: Annotated[str, typer.Option("--kind", "-k", help="completions | chat")] = "chat",
                    description: Annotated[str, typer.Option("--description", "-d")] = "",
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Create a service (Qianfan's 创建服务: an API address bound to a model)."""
    s = run(server, admin_key, lambda t: ops.services_create(t, account, endpoint, model, kind, description))
    show(as_json, "ServiceOut", s, lambda: _table("service created", [s], SERVICE_COLS))


@services_app.command("list")
def services_list(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
                  as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """List services."""
    rows = run(server, admin_key, lambda t: ops.services_list(t, account))
    show(as_json, "ServiceOut", rows, lambda: _table("services", rows, SERVICE_COLS))


@services_app.command("delete")
def services_delete(service: Annotated[str, typer.Argument(help="Endpoint or id.")],
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Delete a service (--json: the service as it was)."""
    s = run(server, admin_key, lambda t: ops.services_delete(t, service))
    show(as_json, "ServiceOut", s, lambda: console.print(f"service {s['endpoint']} deleted"))


def usage(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
          days: Annotated[int, typer.Option("--days", min=1, max=3660)] = 7,
          group_by: Annotated[str, typer.Option("--group-by", help="day | model | service | account")] = "day",
          as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Usage totals over the last N days (quota-timezone days)."""
    rows = run(server, admin_key, lambda t: ops.usage(t, account, days, group_by))
    show(as_json, "UsageRowOut", rows, lambda: _table(
        f"usage, last {days} day(s), by {group_by}", rows,
        ["key", "requests", "prompt_tokens", "completion_tokens", "generated_chars", "errors"]))


safety_app = typer.Typer(help="Content safety: the sensitive-word lexicon.", no_args_is_help=True)


@safety_app.command("lexicon")
def safety_lexicon(set_file: Annotated[str | None, typer.Option("--set", help="Replace the lexicon with this "
                                                                "file's terms (one a line; '-' reads stdin).")]
                   = None,
                   as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Show the lexicon, or replace it with --set FILE. It is stored in the shared store (and the
    lexicon file): the server it is sent to (--server) applies it at once, every other server on
    the same store within WHARF_LEXICON_REFRESH_S (2 s)."""
    import sys

    from wharf.platform.safety import load_terms, parse_terms

    terms = None
    if set_file is not None:
        try:
            terms = parse_terms(sys.stdin.read()) if set_file == "-" else load_terms(set_file)
        except OSError as e:
            err_console.print(f"[red]error:[/red] cannot read {set_file}: {e}")
            raise typer.Exit(1) from None
    out = run(server, admin_key, lambda t: ops.lexicon_get(t) if terms is None else ops.lexicon_set(t, terms))
    if as_json:
        print_json(shaped("LexiconOut", out))
        return
    if terms is not None:
        console.print(f"lexicon replaced: {len(out['terms'])} term(s) in {out.get('path')}", highlight=False)
        if not server:
            console.print("Servers on this store enforce it within WHARF_LEXICON_REFRESH_S (default 2 s).",
                          highlight=False)
        return
    for t in out["terms"]:
        console.print(t, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
    app.add_typer(services_app, name="services")
    app.command("usage")(usage)
    app.add_typer(safety_app, name="safety")
