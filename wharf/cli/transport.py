"""How an admin command reaches the platform: in process on the local store, or a server's
admin API over HTTP.

Each operation is written once, as a Call: the platform services it runs in process and
the admin API request that asks a server for the same thing. The transport runs the half
it can, so a command never asks which one it holds. On the local store the operator acts
(every account, no tenant ceilings; audited as the local CLI); a server decides what its
admin key may do and audits its own calls.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from wharf.cli.output import EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE, exit_code_for, exit_code_for_status
from wharf.errors import WharfError
from wharf.platform import audit

err_console = Console(stderr=True)


class CliError(Exception):
    """An expected failure: its message goes to stderr and the command exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Call:
    """One operation. `local(transport)` runs it on the local store (transport.p is the
    Platform, transport.settings the Settings); method / path / params / json are the admin
    API request (under /admin/api) that runs it on a server. Both answer in the admin API's
    fields."""

    local: Callable[[Local], Any]
    method: str
    path: str
    params: dict | None = None
    json: Any = None


def account_params(account_id: int | None) -> dict:
    """The admin API's query for one account, or for every account (an admin's key)."""
    return {"all": True} if account_id is None else {"account_id": account_id}


class Local:
    """The platform services in process, on the database and secret key Settings name."""

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

    def run(self, call: Call) -> Any:
        return call.local(self)

    def stream(self, call: Call) -> Iterator[str]:
        return iter(call.local(self))        # now: a bad filter fails before anything is written

    def account(self, ref: str | None) -> int | None:
        """An account name or id as its id (None: every account)."""
        return None if ref is None else self.p.accounts.resolve(ref).id

    def own_account(self, ref: str | None) -> int:
        """The account a new object belongs to: the operator has none of its own to default to."""
        if ref is None:
            raise CliError("--account is required when working on the local store", EXIT_USAGE)
        return self.account(ref)

    def service_id(self, endpoint: str) -> int:
        return self.p.services.get_by_endpoint(endpoint).id

    def close(self) -> None:
        self.p.close()


class Remote:
    """A running server's admin API, with an admin key."""

    def __init__(self, server: str, key: str | None):
        import httpx

        if not key:
            raise CliError("--admin-key (or WHARF_ADMIN_KEY) is needed with --server", EXIT_USAGE)
        self.http = httpx.Client(base_url=server.rstrip("/") + "/admin/api",
                                 headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def run(self, call: Call) -> Any:
        import httpx

        try:
            r = self.http.request(call.method, call.path, params=call.params, json=call.json)
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach the server: {e}", EXIT_UNREACHABLE) from None
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            raise CliError(f"server said {r.status_code}: {msg}", exit_code_for_status(r.status_code))
        return None if r.status_code == 204 else r.json()

    def stream(self, call: Call) -> Iterator[str]:
        """The answer's text as it comes (an export is never held here whole)."""
        import httpx

        try:
            with self.http.stream(call.method, call.path, params=call.params) as r:
                if r.status_code >= 400:
                    r.read()
                    raise CliError(f"server said {r.status_code}: {r.text[:200]}",
                                   exit_code_for_status(r.status_code))
                yield from r.iter_text()
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach the server: {e}", EXIT_UNREACHABLE) from None

    def account(self, ref: str | None) -> int | None:
        if ref is None:
            return None
        if str(ref).isdigit():
            return int(ref)
        for a in self.run(Call(None, "GET", "/accounts")):
            if a["name"] == ref:
                return a["id"]
        raise CliError(f"account {ref!r} not found", EXIT_NOT_FOUND)

    def own_account(self, ref: str | None) -> int | None:
        """None: the server takes the admin key's own account."""
        return self.account(ref)

    def service_id(self, endpoint: str) -> int:
        for s in self.run(Call(None, "GET", "/services", params={"all": True})):
            if s["endpoint"] == endpoint:
                return s["id"]
        raise CliError(f"service {endpoint!r} not found", EXIT_NOT_FOUND)

    def close(self) -> None:
        self.http.close()


Transport = Local | Remote


def run(server: str | None, admin_key: str | None, fn: Callable[[Transport], Any]) -> Any:
    """Open the transport (--server: that server's admin API; else the local store), run
    fn(transport), turn every expected failure into its exit code (wharf/cli/output.py),
    the message on stderr."""
    transport = None
    try:
        if server:                           # the server audits its admin API calls itself
            transport = Remote(server, admin_key)
            return fn(transport)
        transport = Local()
        with audit.acting(audit.Operation(source=_command_path(), actor=audit.LOCAL_CLI)):
            return fn(transport)
    except (WharfError, CliError) as e:
        err_console.print(f"[red]error:[/red] {getattr(e, 'message', None) or e}")
        raise typer.Exit(e.exit_code if isinstance(e, CliError) else exit_code_for(e)) from None
    finally:
        if transport is not None:
            transport.close()


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
