"""Admin commands: `wharf accounts|keys|services|usage|safety ...`.

By default they work on the local store (the database and secret key that
Settings name: WHARF_DATA_DIR, WHARF_DATABASE_URL, WHARF_SECRET_KEY). With
`--server URL --admin-key KEY` (or env WHARF_SERVER / WHARF_ADMIN_KEY) they
call a running server's admin API instead. `--json` prints what a command shows in the
admin API's field names, and the exit code says how it ended (wharf/cli/output.py).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from wharf.cli.output import (
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Json,
    exit_code_for,
    exit_code_for_status,
    print_json,
    shaped,
)
from wharf.errors import WharfError
from wharf.platform import audit

console = Console()
err_console = Console(stderr=True)

Server = Annotated[str | None, typer.Option("--server", envvar="WHARF_SERVER",
                                            help="Use a running server's admin API at this URL.")]
AdminKey = Annotated[str | None, typer.Option("--admin-key", envvar="WHARF_ADMIN_KEY",
                                              help="API key for --server (an admin account's key).")]
KINDS = ("api_key", "qianfan_app", "qianfan_iam", "sensenova")


class CliError(Exception):
    """An expected failure: its message goes to stderr and the command exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# -- backends: the same operations on the local store or over HTTP --------------------

class Local:
    def __init__(self):
        from wharf.config import Settings
        from wharf.platform.core import Platform

        self.settings = Settings()
        self.p = Platform.open(self.settings, model_exists=self._model_exists)

    def _model_exists(self, name: str) -> bool:
        s = self.settings
        names = set(s.models) | set(s.aliases)
        if s.load_default_model:
            names.add(s.default_model)
        return name in names

    def _acc(self, ref) -> int:
        if ref is None:
            raise CliError("--account is required when working on the local store", EXIT_USAGE)
        return self.p.accounts.resolve(ref).id

    def accounts_create(self, name, is_admin, limits):
        return self.p.accounts.create(name, is_admin=is_admin, **limits).to_dict()

    def accounts_list(self):
        return [a.to_dict() for a in self.p.accounts.list()]

    def accounts_status(self, ref, status):
        return self.p.accounts.set_status(self._acc(ref), status).to_dict()

    def accounts_limits(self, ref, limits):
        return self.p.accounts.update_limits(self._acc(ref), **limits).to_dict()

    def keys_limits(self, cred_id, limits):
        return self.p.credentials.update_limits(cred_id, **limits).to_dict()

    def lexicon_get(self):
        """The store's lexicon (what servers enforce); the file only while the store has none."""
        from wharf.platform.safety import load_terms

        path = self.settings.resolved_lexicon_path
        stored = self.p.lexicon.read()
        if stored is not None:
            return {"terms": stored.terms, "count": len(stored.terms), "path": str(path), "version": stored.version}
        terms = load_terms(path) if path.exists() else []
        return {"terms": terms, "count": len(terms), "path": str(path), "version": None}

    def lexicon_set(self, terms):
        from wharf.api.admin import _write_lexicon

        self.p.lexicon.replace(terms)
        _write_lexicon(self.settings.resolved_lexicon_path, terms)
        return self.lexicon_get()

    def keys_create(self, account, kind, label):
        return self.p.credentials.create(self._acc(account), kind, label=label).to_dict()

    def keys_list(self, account):
        return [c.to_dict() for c in self.p.credentials.list(None if account is None else self._acc(account))]

    def keys_revoke(self, cred_id):
        return self.p.credentials.revoke(cred_id).to_dict()

    def services_create(self, account, endpoint, model, kind, description):
        return self.p.services.create(self._acc(account), endpoint, model, kind, description).to_dict()

    def services_list(self, account):
        return [s.to_dict() for s in self.p.services.list(None if account is None else self._acc(account))]

    def services_delete(self, ref):
        svc = self.p.services.get(int(ref)) if ref.isdigit() else self.p.services.get_by_endpoint(ref)
        self.p.services.delete(svc.id)
        return svc.to_dict()

    def usage(self, account, days, group_by):
        acc = None if account is None else self._acc(account)
        until = self.p.quota.today()
        since = until - dt.timedelta(days=days - 1)
        return [r.to_dict() for r in self.p.usage.usage_summary(acc, since, until, group_by)]

    def close(self):
        self.p.close()


class Remote:
    def __init__(self, server: str, key: str | None):
        import httpx

        if not key:
            raise CliError("--admin-key (or WHARF_ADMIN_KEY) is needed with --server", EXIT_USAGE)
        self.http = httpx.Client(base_url=server.rstrip("/") + "/admin/api",
                                 headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def _call(self, method, path, **kw) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach the server: {e}", EXIT_UNREACHABLE) from None
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            raise CliError(f"server said {r.status_code}: {msg}", exit_code_for_status(r.status_code))
        return None if r.status_code == 204 else r.json()

    def _acc(self, ref) -> int | None:
        if ref is None:
            return None
        if str(ref).isdigit():
            return int(ref)
        for a in self._call("GET", "/accounts"):
            if a["name"] == ref:
                return a["id"]
        raise CliError(f"account {ref!r} not found", EXIT_NOT_FOUND)

    def accounts_create(self, name, is_admin, limits):
        return self._call("POST", "/accounts", json={"name": name, "is_admin": is_admin, **limits})

    def accounts_list(self):
        return self._call("GET", "/accounts")

    def accounts_status(self, ref, status):
        return self._call("POST", f"/accounts/{self._acc(ref)}/{'enable' if status == 'active' else 'disable'}")

    def accounts_limits(self, ref, limits):
        return self._call("PATCH", f"/accounts/{self._acc(ref)}", json=limits)

    def keys_limits(self, cred_id, limits):
        return self._call("PATCH", f"/credentials/{cred_id}", json=limits)

    def lexicon_get(self):
        return self._call("GET", "/safety/lexicon")

    def lexicon_set(self, terms):
        return self._call("PUT", "/safety/lexicon", json={"terms": terms})

    def keys_create(self, account, kind, label):
        return self._call("POST", "/credentials", json={"account_id": self._acc(account), "kind": kind,
                                                        "label": label})

    def keys_list(self, account):
        acc = self._acc(account)
        return self._call("GET", "/credentials", params={"all": True} if acc is None else {"account_id": acc})

    def keys_revoke(self, cred_id):
        return self._call("POST", f"/credentials/{cred_id}/revoke")

    def services_create(self, account, endpoint, model, kind, description):
        return self._call("POST", "/services", json={"account_id": self._acc(account), "endpoint": endpoint,
                                                     "model": model, "kind": kind, "description": description})

    def services_list(self, account):
        acc = self._acc(account)
        return self._call("GET", "/services", params={"all": True} if acc is None else {"account_id": acc})

    def services_delete(self, ref):
        if not ref.isdigit():
            match = [s for s in self._call("GET", "/services", params={"all": True}) if s["endpoint"] == ref]
            if not match:
                raise CliError(f"service {ref!r} not found", EXIT_NOT_FOUND)
            ref = str(match[0]["id"])
        svc = self._call("GET", f"/services/{ref}")
        self._call("DELETE", f"/services/{ref}")
        return svc

    def usage(self, account, days, group_by):
        acc = self._acc(account)
        params = {"days": days, "group_by": group_by, **({"all": True} if acc is None else {"account_id": acc})}
        return self._call("GET", "/usage", params=params)["rows"]

    def close(self):
        self.http.close()


def _run(server, admin_key, fn):
    """Open the backend, run fn(backend), turn every expected failure into its exit code
    (wharf/cli/output.py), the message on stderr."""
    backend = None
    try:
        if server:                           # the server audits its admin API calls itself
            backend = Remote(server, admin_key)
            return fn(backend)
        backend = Local()
        with audit.acting(audit.Operation(source=_command_path(), actor=audit.LOCAL_CLI)):
            return fn(backend)
    except (WharfError, CliError) as e:
        err_console.print(f"[red]error:[/red] {getattr(e, 'message', None) or e}")
        raise typer.Exit(e.exit_code if isinstance(e, CliError) else exit_code_for(e)) from None
    finally:
        if backend is not None:
            backend.close()


def _command_path() -> str:
    """`wharf keys rotate`: the command, without its arguments (they may name anything)."""
    try:                                  # typer >= 0.20 runs on its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context

    names = []
    ctx = get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:   # the root's name is how it was started
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["wharf", *reversed(names)])


def jsonable(row: dict) -> dict:
    """A record for --json: dates and times as ISO 8601 text, nested records too."""
    def plain(v):
        if isinstance(v, (dt.datetime, dt.date)):
            return v.isoformat()
        if isinstance(v, dict):
            return jsonable(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in row.items()}


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
    a = _run(server, admin_key, lambda b: b.accounts_create(name, admin, limits))
    show(as_json, "AccountOut", a, lambda: _table("account created", [a], ACCOUNT_COLS))


@accounts_app.command("list")
def accounts_list(as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """List accounts."""
    rows = _run(server, admin_key, lambda b: b.accounts_list())
    show(as_json, "AccountOut", rows, lambda: _table("accounts", rows, ACCOUNT_COLS))


@accounts_app.command("disable")
def accounts_disable(account: Annotated[str, typer.Argument(help="Account name or id.")],
                     as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Disable an account: its credentials stop working at once."""
    a = _run(server, admin_key, lambda b: b.accounts_status(account, "disabled"))
    show(as_json, "AccountOut", a, lambda: console.print(f"account {a['name']} is now {a['status']}"))


@accounts_app.command("enable")
def accounts_enable(account: Annotated[str, typer.Argument(help="Account name or id.")],
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Enable a disabled account."""
    a = _run(server, admin_key, lambda b: b.accounts_status(account, "active"))
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
    a = _run(server, admin_key, lambda b: b.accounts_limits(account, limits))
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
    issued = _run(server, admin_key, lambda b: b.keys_create(account, kind, label))
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
    rows = _run(server, admin_key, lambda b: b.keys_list(account))
    show(as_json, "CredentialOut", rows, lambda: _table("credentials", rows, KEY_COLS))


@keys_app.command("revoke")
def keys_revoke(credential_id: int, as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Revoke a credential: the next request with it fails."""
    c = _run(server, admin_key, lambda b: b.keys_revoke(credential_id))
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
    c = _run(server, admin_key, lambda b: b.keys_limits(credential_id, limits))
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
    s = _run(server, admin_key, lambda b: b.services_create(account, endpoint, model, kind, description))
    show(as_json, "ServiceOut", s, lambda: _table("service created", [s], SERVICE_COLS))


@services_app.command("list")
def services_list(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
                  as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """List services."""
    rows = _run(server, admin_key, lambda b: b.services_list(account))
    show(as_json, "ServiceOut", rows, lambda: _table("services", rows, SERVICE_COLS))


@services_app.command("delete")
def services_delete(service: Annotated[str, typer.Argument(help="Endpoint or id.")],
                    as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Delete a service (--json: the service as it was)."""
    s = _run(server, admin_key, lambda b: b.services_delete(service))
    show(as_json, "ServiceOut", s, lambda: console.print(f"service {s['endpoint']} deleted"))


def usage(account: Annotated[str | None, typer.Option("--account", "-a")] = None,
          days: Annotated[int, typer.Option("--days", min=1, max=3660)] = 7,
          group_by: Annotated[str, typer.Option("--group-by", help="day | model | service | account")] = "day",
          as_json: Json = False, server: Server = None, admin_key: AdminKey = None):
    """Usage totals over the last N days (quota-timezone days)."""
    rows = _run(server, admin_key, lambda b: b.usage(account, days, group_by))
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
    out = _run(server, admin_key, lambda b: b.lexicon_get() if terms is None else b.lexicon_set(terms))
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
