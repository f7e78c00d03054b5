"""GET /admin/api/credential-scopes over real HTTP, on SQLite and PostgreSQL: every
credential's expiry and allow-lists in one call (the console's keys page), with the
admin API's isolation rules (own account by default, another account 403 for a tenant)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.platform.conftest import LiveServer, Registry
from wharf.api.admin import build_admin_router
from wharf.api.admin_keys import build_keys_router
from wharf.platform.accounts import ensure_admin


@pytest.fixture
def api(platform):
    app = FastAPI()
    app.state.platform, app.state.registry = platform, Registry()
    app.include_router(build_admin_router())
    app.include_router(build_keys_router())
    admin_key = ensure_admin(platform.store)
    alice, bob = platform.accounts.create("alice"), platform.accounts.create("bob")
    issued = {n: platform.credentials.create(a.id, "api_key") for n, a in (("alice", alice), ("bob", bob))}
    keys = {"admin": admin_key, **{n: i.secret for n, i in issued.items()}}
    with LiveServer(app) as srv:
        def client(who):
            return httpx.Client(base_url=srv.url + "/admin/api", headers={"Authorization": f"Bearer {keys[who]}"},
                                timeout=10)
        yield client, {n: i.info.id for n, i in issued.items()}, {"alice": alice.id, "bob": bob.id}


def test_scopes_listed_per_account_with_isolation(api):
    client, cred, acct = api
    with client("admin") as admin:
        r = admin.patch(f"/credentials/{cred['alice']}/scope",
                        json={"expires_at": "2030-01-02T03:04:05Z", "allowed_models": ["xl"], "allowed_services": [7]})
        assert r.status_code == 200, r.text
        mine = admin.get("/credential-scopes", params={"account_id": acct["alice"]}).json()
        assert [s["credential_id"] for s in mine] == [cred["alice"]]
        # The same fields as GET /credentials/{id}/scope, whatever a scope comes to hold.
        assert mine[0] == admin.get(f"/credentials/{cred['alice']}/scope").json()
        assert (mine[0]["expires_at"], mine[0]["allowed_models"], mine[0]["allowed_services"]) == (
            "2030-01-02T03:04:05Z", ["xl"], [7])
        everyone = {s["credential_id"] for s in admin.get("/credential-scopes", params={"all": "true"}).json()}
        assert {cred["alice"], cred["bob"]} <= everyone
    with client("bob") as bob:
        own = bob.get("/credential-scopes").json()
        assert [s["credential_id"] for s in own] == [cred["bob"]]
        assert own[0]["expires_at"] is None and own[0]["allowed_models"] is None
        # ?all=true means nothing for a tenant; naming another account is refused.
        wide = bob.get("/credential-scopes", params={"all": "true"}).json()
        assert [s["credential_id"] for s in wide] == [cred["bob"]]
        r = bob.get("/credential-scopes", params={"account_id": acct["alice"]})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission"
