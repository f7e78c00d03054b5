"""The admin commands' operations on accounts, credentials, services, usage and the lexicon,
each written once (wharf/cli/transport.py: the in-process half and the admin API request
beside it). Every one answers in the admin API's fields."""

from __future__ import annotations

import datetime as dt

from wharf.cli.transport import Call, Transport, account_params
from wharf.platform.lexicon_terms import replace_lexicon, stored_or_file


def accounts_create(t: Transport, name: str, is_admin: bool, limits: dict) -> dict:
    return t.run(Call(lambda local: local.p.accounts.create(name, is_admin=is_admin, **limits).to_dict(),
                      "POST", "/accounts", json={"name": name, "is_admin": is_admin, **limits}))


def accounts_list(t: Transport) -> list[dict]:
    return t.run(Call(lambda local: [a.to_dict() for a in local.p.accounts.list()], "GET", "/accounts"))


def accounts_status(t: Transport, ref: str, status: str) -> dict:
    acc = t.account(ref)
    action = "enable" if status == "active" else "disable"
    return t.run(Call(lambda local: local.p.accounts.set_status(acc, status).to_dict(),
                      "POST", f"/accounts/{acc}/{action}"))


def accounts_limits(t: Transport, ref: str, limits: dict) -> dict:
    acc = t.account(ref)
    return t.run(Call(lambda local: local.p.accounts.update_limits(acc, **limits).to_dict(),
                      "PATCH", f"/accounts/{acc}", json=limits))


def keys_create(t: Transport, account: str | None, kind: str, label: str) -> dict:
    acc = t.own_account(account)
    return t.run(Call(lambda local: local.p.credentials.create(acc, kind, label=label).to_dict(),
                      "POST", "/credentials", json={"account_id": acc, "kind": kind, "label": label}))


def keys_list(t: Transport, account: str | None) -> list[dict]:
    acc = t.account(account)
    return t.run(Call(lambda local: [c.to_dict() for c in local.p.credentials.list(acc)],
                      "GET", "/credentials", params=account_params(acc)))


def keys_revoke(t: Transport, cred_id: int) -> dict:
    return t.run(Call(lambda local: local.p.credentials.revoke(cred_id).to_dict(),
                      "POST", f"/credentials/{cred_id}/revoke"))


def keys_limits(t: Transport, cred_id: int, limits: dict) -> dict:
    return t.run(Call(lambda local: local.p.credentials.update_limits(cred_id, **limits).to_dict(),
                      "PATCH", f"/credentials/{cred_id}", json=limits))


def services_create(t: Transport, account: str | None, endpoint: str, model: str, kind: str,
                    description: str) -> dict:
    acc = t.own_account(account)
    return t.run(Call(lambda local: local.p.services.create(acc, endpoint, model, kind, description).to_dict(),
                      "POST", "/services", json={"account_id": acc, "endpoint": endpoint, "model": model,
                                                 "kind": kind, "description": description}))


def services_list(t: Transport, account: str | None) -> list[dict]:
    acc = t.account(account)
    return t.run(Call(lambda local: [s.to_dict() for s in local.p.services.list(acc)],
                      "GET", "/services", params=account_params(acc)))


def services_delete(t: Transport, ref: str) -> dict:
    """The service (by id or endpoint) as it was before it was deleted."""
    sid = int(ref) if ref.isascii() and ref.isdigit() else t.service_id(ref)
    svc = t.run(Call(lambda local: local.p.services.get(sid).to_dict(), "GET", f"/services/{sid}"))
    t.run(Call(lambda local: local.p.services.delete(sid), "DELETE", f"/services/{sid}"))
    return svc


def usage(t: Transport, account: str | None, days: int, group_by: str) -> list[dict]:
    acc = t.account(account)

    def local(here) -> dict:
        until = here.p.quota.today()
        since = until - dt.timedelta(days=days - 1)
        return {"rows": [r.to_dict() for r in here.p.usage.usage_summary(acc, since, until, group_by)]}
    return t.run(Call(local, "GET", "/usage", params={"days": days, "group_by": group_by,
                                                      **account_params(acc)}))["rows"]


def _stored_lexicon(here) -> dict:
    path = here.settings.resolved_lexicon_path
    terms, version = stored_or_file(here.p.lexicon, path)
    return {"terms": terms, "count": len(terms), "path": str(path), "version": version}


def lexicon_get(t: Transport) -> dict:
    """The lexicon servers enforce (on the local store: the stored one, the file while it has none)."""
    return t.run(Call(_stored_lexicon, "GET", "/safety/lexicon"))


def lexicon_set(t: Transport, terms: list[str]) -> dict:
    def local(here) -> dict:
        replace_lexicon(here.p.lexicon, terms, here.settings.resolved_lexicon_path)
        return _stored_lexicon(here)
    return t.run(Call(local, "PUT", "/safety/lexicon", json={"terms": terms}))
