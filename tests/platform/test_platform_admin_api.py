"""The admin API over real HTTP (uvicorn on 127.0.0.1) against a real database."""

from __future__ import annotations

import re

import httpx
import pytest

from wharf.platform.accounts import ensure_admin


@pytest.fixture
def api(platform, live_admin):
    admin_key = ensure_admin(platform.store)
    alice = platform.accounts.create("alice")
    bob = platform.accounts.create("bob")
    keys = {"admin": admin_key,
            "alice": platform.credentials.create(alice.id, "api_key").secret,
            "bob": platform.credentials.create(bob.id, "api_key").secret}

    def client(who=None):
        headers = {"Authorization": f"Bearer {keys[who]}"} if who else {}
        return httpx.Client(base_url=live_admin.url + "/admin/api", headers=headers, timeout=10)

    return client, {"alice": alice.id, "bob": bob.id}


def _err(resp, status, type_=None):
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert set(body) == {"message", "type", "param"} and body["message"]
    if type_:
        assert body["type"] == type_
    return body


def test_auth_required(api):
    client, _ = api
    _err(client().get("/accounts"), 401, "auth")
    bad = httpx.get(client().base_url.join("accounts"), headers={"Authorization": "Bearer wk-nope"})
    _err(bad, 401, "auth")
    assert client("alice").get("/me").json()["account"]["name"] == "alice"


def test_admin_manages_accounts(api):
    client, ids = api
    admin = client("admin")
    r = admin.post("/accounts", json={"name": "carol", "quota_chars_per_day": 500, "rpm": 30})
    assert r.status_code == 201 and r.json()["quota_chars_per_day"] == 500
    cid = r.json()["id"]
    _err(admin.post("/accounts", json={"name": "carol"}), 409, "conflict")
    _err(admin.post("/accounts", json={"name": "bad name"}), 400, "invalid_param")
    _err(admin.post("/accounts", json={"name": ""}), 422)
    _err(admin.post("/accounts", json={"name": "dan", "rpm": -1}), 422)
    assert {a["name"] for a in admin.get("/accounts").json()} == {"admin", "alice", "bob", "carol"}
    assert admin.patch(f"/accounts/{cid}", json={"rpm": None, "tpm": 9}).json()["tpm"] == 9
    assert admin.get(f"/accounts/{cid}").json()["rpm"] is None
    assert admin.post(f"/accounts/{cid}/disable").json()["status"] == "disabled"
    assert admin.post(f"/accounts/{cid}/enable").json()["status"] == "active"
    _err(admin.get("/accounts/9999"), 404, "not_found")
    # non-admins cannot
    alice = client("alice")
    _err(alice.post("/accounts", json={"name": "eve"}), 403, "permission")
    _err(alice.post(f"/accounts/{ids['bob']}/disable"), 403)
    assert [a["name"] for a in alice.get("/accounts").json()] == ["alice"]
    _err(alice.get(f"/accounts/{ids['bob']}"), 404)


def test_disabling_an_account_locks_it_out_at_once(api):
    client, ids = api
    assert client("bob").get("/me").status_code == 200
    client("admin").post(f"/accounts/{ids['bob']}/disable")
    assert _err(client("bob").get("/me"), 401)["message"]


def test_credentials_ownership_and_secrets_once(api):
    client, ids = api
    alice, bob = client("alice"), client("bob")
    r = alice.post("/credentials", json={"kind": "qianfan_app", "label": "sdk"})
    assert r.status_code == 201
    issued = r.json()
    assert issued["api_key"] == issued["public_id"] and issued["secret_key"] == issued["secret"]
    cred_id = issued["credential"]["id"]
    listing = alice.get("/credentials")
    assert listing.status_code == 200 and issued["secret"] not in listing.text
    assert {c["kind"] for c in listing.json()} == {"api_key", "qianfan_app"}
    assert issued["secret"] not in alice.get(f"/credentials/{cred_id}").text
    # bob can neither see nor touch alice's credential
    _err(bob.get(f"/credentials/{cred_id}"), 404)
    _err(bob.post(f"/credentials/{cred_id}/revoke"), 404)
    _err(bob.get("/credentials", params={"account_id": ids["alice"]}), 403)
    _err(bob.post("/credentials", json={"account_id": ids["alice"], "kind": "api_key"}), 403)
    assert all(c["account_id"] == ids["bob"] for c in bob.get("/credentials").json())
    _err(alice.post("/credentials", json={"kind": "password"}), 422)
    # admin may create for anyone; the new key works
    new = client("admin").post("/credentials", json={"account_id": ids["bob"], "kind": "api_key"}).json()
    assert new["api_key"].startswith("wk-")
    assert len(client("admin").get("/credentials", params={"all": True}).json()) == 5
    # revoke: the key stops working on the next request
    own_key_id = [c for c in alice.get("/credentials").json() if c["kind"] == "api_key"][0]["id"]
    assert alice.post(f"/credentials/{own_key_id}/revoke").json()["revoked_at"]
    _err(alice.get("/me"), 401)


def test_services_ownership_and_validation(api):
    client, ids = api
    alice, bob = client("alice"), client("bob")
    r = alice.post("/services", json={"endpoint": "test1", "model": "xl", "kind": "completions"})
    assert r.status_code == 201, r.text
    sid, endpoint = r.json()["id"], r.json()["endpoint"]
    assert r.json()["account_id"] == ids["alice"]
    assert re.fullmatch(r"[a-z0-9]{8}_test1", endpoint) and r.json()["url_suffix"] == "test1"
    # Another account may choose test1 too: it gets an endpoint of its own.
    r = bob.post("/services", json={"endpoint": "test1", "model": "xl", "kind": "chat"})
    assert r.status_code == 201 and r.json()["endpoint"] not in (endpoint, "test1")
    assert bob.delete(f"/services/{r.json()['id']}").status_code == 204
    _err(bob.post("/services", json={"endpoint": "ok1", "model": "gpt-99", "kind": "chat"}), 400)
    _err(bob.post("/services", json={"endpoint": "Bad Endpoint", "model": "xl", "kind": "chat"}), 400)
    _err(bob.post("/services", json={"endpoint": "ok2", "model": "xl", "kind": "embed"}), 422)
    r = bob.post("/services", json={"endpoint": "x" * 21, "model": "xl", "kind": "chat"})
    _err(r, 400)
    assert "2-20 characters" in r.text
    _err(bob.post("/services", json={"endpoint": "ok3", "model": "xl", "kind": "chat",
                                     "account_id": ids["alice"]}), 403)
    assert bob.get("/services").json() == []
    _err(bob.get(f"/services/{sid}"), 404)
    _err(bob.patch(f"/services/{sid}", json={"description": "mine now"}), 404)
    _err(bob.delete(f"/services/{sid}"), 404)
    up = alice.patch(f"/services/{sid}", json={"description": "hello", "model": "Yi-34B-Chat"})
    assert up.status_code == 200 and up.json()["model"] == "Yi-34B-Chat"
    _err(alice.patch(f"/services/{sid}", json={"model": "nope"}), 400)
    _err(alice.patch(f"/services/{sid}", json={"endpoint": "renamed"}), 422)
    assert [s["endpoint"] for s in client("admin").get("/services", params={"all": True}).json()] == [endpoint]
    assert alice.delete(f"/services/{sid}").status_code == 204
    _err(alice.get(f"/services/{sid}"), 404)
    assert sorted(alice.get("/models").json()) == ["Yi-34B-Chat", "tiny-model", "xl"]


def test_usage_and_quota(api, platform):
    client, ids = api
    for i, (who, model) in enumerate([("alice", "xl"), ("alice", "tiny-model"), ("bob", "xl")]):
        platform.usage.record_usage(request_id=f"r{i}", account_id=ids[who], model=model, dialect="openai",
                                    prompt_tokens=3, completion_tokens=4)
    alice = client("alice")
    r = alice.get("/usage", params={"group_by": "model", "days": 1})
    assert r.status_code == 200
    assert {x["key"]: x["requests"] for x in r.json()["rows"]} == {"xl": 1, "tiny-model": 1}
    _err(alice.get("/usage", params={"account_id": ids["bob"]}), 403)
    allrows = client("admin").get("/usage", params={"all": True, "group_by": "account"}).json()["rows"]
    assert sum(x["requests"] for x in allrows) == 3
    _err(alice.get("/usage", params={"group_by": "colour"}), 422)
    q = alice.get("/quota").json()
    assert q["account_id"] == ids["alice"] and q["chars_used"] == 0


def test_openapi_lists_admin_routes(api, live_admin):
    spec = httpx.get(live_admin.url + "/openapi.json").json()
    assert "/admin/api/services" in spec["paths"] and "AccountOut" in spec["components"]["schemas"]
