"""The audit log over a real `wharf serve` on SQLite and on PostgreSQL: every change made
through the admin API and the CLI is recorded with who, what, when and the values before
and after (never a secret), in the change's own transaction; listed in the admin API
(admins: everyone's, others: their own account's) and `wharf audit list`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.conftest import MODEL
from wharf.platform import audit
from wharf.platform.models import Account

ADMIN = "/admin/api"


def _api(srv, method, path, key, **kw) -> httpx.Response:
    return httpx.request(method, srv.url + ADMIN + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=30, **kw)


def _audit(srv, key, **params) -> list[dict]:
    r = _api(srv, "GET", "/audit", key, params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _me(srv, key) -> dict:
    return _api(srv, "GET", "/me", key).json()


def test_every_admin_change_is_recorded_without_secrets(srv):
    ops = srv.ops_key()
    me = _me(srv, ops)
    name = f"au-{uuid.uuid4().hex[:6]}"
    acct = _api(srv, "POST", "/accounts", ops, json={"name": name, "rpm": 10}).json()
    aid = acct["id"]
    assert _api(srv, "PATCH", f"/accounts/{aid}", ops, json={"rpm": 20, "key_rpm": 5}).status_code == 200
    assert _api(srv, "POST", f"/accounts/{aid}/disable", ops).status_code == 200
    issued = _api(srv, "POST", "/credentials", ops, json={"account_id": aid, "label": "k"}).json()
    cid = issued["credential"]["id"]
    assert _api(srv, "PATCH", f"/credentials/{cid}", ops, json={"rpm": 3}).status_code == 200
    assert _api(srv, "PATCH", f"/credentials/{cid}/scope", ops, json={"allowed_models": [MODEL]}).status_code == 200
    rotated = _api(srv, "POST", f"/credentials/{cid}/rotate", ops, json={"grace_s": 60}).json()
    assert _api(srv, "POST", f"/credentials/{cid}/revoke", ops).status_code == 200
    svc = _api(srv, "POST", "/services", ops, json={"account_id": aid, "endpoint": "aud1", "model": MODEL,
                                                    "kind": "chat"}).json()
    assert _api(srv, "PATCH", f"/services/{svc['id']}", ops, json={"description": "d"}).status_code == 200
    assert _api(srv, "DELETE", f"/services/{svc['id']}", ops).status_code == 204
    term = f"term-{uuid.uuid4().hex[:6]}"
    assert _api(srv, "PUT", "/safety/lexicon", ops, json={"terms": [term]}).status_code == 200

    r = _api(srv, "GET", "/audit", ops, params={"limit": 500})
    # Never a secret: neither the secrets issued nor their stored (hashed / encrypted) forms.
    for secret in (issued["secret"], rotated["secret"]):
        assert secret not in r.text
    assert "secret_hash" not in r.text and "secret_encrypted" not in r.text
    mine = [e for e in reversed(r.json()["data"]) if e["account_id"] == aid]
    for e in mine:                          # who: the admin's account and credential
        assert e["actor"] == "credential" and e["actor_account_id"] == me["account"]["id"]
        assert e["actor_credential_id"] == me["credential_id"]
    got = [(e["source"].split(" ")[0], e["object_type"], e["action"]) for e in mine]
    assert got[:3] == [("POST", "account", "create"), ("PATCH", "account", "update"), ("POST", "account", "update")]
    create, limits, disable = mine[:3]
    assert create["source"] == "POST /admin/api/accounts" and create["after"]["rpm"] == 10
    assert limits["before"] == {"rpm": 10, "key_rpm": None} and limits["after"] == {"rpm": 20, "key_rpm": 5}
    assert disable["before"] == {"status": "active"} and disable["after"] == {"status": "disabled"}
    by_source = {}
    for e in mine[3:]:
        by_source.setdefault(e["source"], []).append(e)
    cred_create = by_source["POST /admin/api/credentials"]
    # The new credential came under the account's ceiling key_rpm 5.
    assert [e["action"] for e in cred_create] == ["create"] and cred_create[0]["after"]["rpm"] == 5
    # An operator's limit on a credential also lowers the account's ceiling above it: both logged.
    patch = sorted((e["object_type"], e["before"], e["after"])
                   for e in by_source[f"PATCH /admin/api/credentials/{cid}"])
    assert patch == [("account", {"key_rpm": 5}, {"key_rpm": 3}), ("credential", {"rpm": 5}, {"rpm": 3})]
    scope = by_source[f"PATCH /admin/api/credentials/{cid}/scope"][0]
    assert scope["before"] == {"allowed_models": None} and scope["after"] == {"allowed_models": [MODEL]}
    rot = by_source[f"POST /admin/api/credentials/{cid}/rotate"]
    new_id = rotated["credential"]["id"]
    assert {(e["object_id"], e["action"]) for e in rot} >= {(new_id, "create"), (cid, "update")}
    assert next(e for e in rot if e["object_id"] == cid)["after"]["expires_at"]
    assert by_source[f"POST /admin/api/credentials/{cid}/revoke"][0]["before"] == {"revoked_at": None}
    svc_log = [e["action"] for e in by_source["POST /admin/api/services"] +
               by_source[f"PATCH /admin/api/services/{svc['id']}"] +
               by_source[f"DELETE /admin/api/services/{svc['id']}"]]
    assert svc_log == ["create", "update", "delete"]
    lex = _audit(srv, ops, object_type="lexicon")[0]
    assert lex["account_id"] is None and lex["after"]["added"] == [term] and lex["source"].startswith("PUT ")
    # Reads write nothing; one object's history by object_type + object_id.
    n = len(_audit(srv, ops))
    _api(srv, "GET", "/accounts", ops)
    assert len(_audit(srv, ops)) == n
    hist = _audit(srv, ops, object_type="account", object_id=aid)
    assert [e["source"] for e in hist] == [f"PATCH /admin/api/credentials/{cid}",
                                           f"POST /admin/api/accounts/{aid}/disable",
                                           f"PATCH /admin/api/accounts/{aid}", "POST /admin/api/accounts"]


def test_accounts_see_only_their_own_entries(srv):
    a, akey = srv.account(f"au-a-{uuid.uuid4().hex[:6]}")
    _, bkey = srv.account(f"au-b-{uuid.uuid4().hex[:6]}")
    # A tenant's own changes, recorded with its own credential.
    made = _api(srv, "POST", "/credentials", akey, json={"label": "mine"}).json()
    assert _api(srv, "POST", "/services", akey, json={"endpoint": "aud2", "model": MODEL,
                                                      "kind": "completions"}).status_code == 201
    # An admin's change to a's account shows in a's log too (it is a's account's history).
    assert _api(srv, "PATCH", f"/accounts/{a.id}", srv.ops_key(), json={"tpm": 1000}).status_code == 200
    seen = _audit(srv, akey)
    assert {e["account_id"] for e in seen} == {a.id} and len(seen) == 3
    own = [e for e in seen if e["object_type"] == "credential"]
    assert own[0]["object_id"] == made["credential"]["id"] and own[0]["actor_account_id"] == a.id
    # b sees none of it, and may not ask for a's; nor for the lexicon's (no account).
    assert _audit(srv, bkey) == []
    assert _api(srv, "GET", "/audit", bkey, params={"account_id": a.id}).status_code == 403
    assert _audit(srv, bkey, object_type="lexicon") == []
    assert _audit(srv, bkey, object_type="credential", object_id=made["credential"]["id"]) == []
    # Refused changes leave no entry.
    assert _api(srv, "PATCH", f"/accounts/{a.id}", akey, json={"rpm": 1}).status_code == 403
    assert _api(srv, "POST", "/accounts", srv.ops_key(), json={"name": a.name}).status_code == 409
    assert len(_audit(srv, akey)) == 3
    # Keyset pages: each entry once, newest first.
    pages, cursor = [], None
    while True:
        r = _api(srv, "GET", "/audit", akey, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages += [e["id"] for e in r["data"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert pages == [e["id"] for e in seen]
    # Bad input: the admin API's own errors.
    assert _api(srv, "GET", "/audit", akey, params={"cursor": "x"}).json()["error"]["param"] == "cursor"
    assert _api(srv, "GET", "/audit", akey, params={"object_type": "model"}).status_code == 422
    assert _api(srv, "GET", "/audit", akey, params={"limit": 0}).status_code == 422
    assert _api(srv, "GET", "/audit", "wk-nope").status_code == 401


def test_a_change_rolled_back_leaves_no_entry(srv):
    """The entry is written in the change's transaction: a failure after the change was
    flushed takes both back."""
    p = srv.platform
    acct, _ = srv.account(f"au-rb-{uuid.uuid4().hex[:6]}")
    with audit.acting(audit.Operation(source="test", actor=audit.LOCAL_CLI)):
        with pytest.raises(RuntimeError), p.store.write() as s:
            s.get(Account, acct.id).rpm = 7
            s.flush()
            raise RuntimeError("after the flush")
        p.accounts.update_limits(acct.id, rpm=8)
    assert p.accounts.get(acct.id).rpm == 8
    entries, _ = p.audit.page(account_id=acct.id)
    assert [(e.before, e.after) for e in entries] == [({"rpm": None}, {"rpm": 8})]


def _cli(srv, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wharf", *args], env=srv.env, capture_output=True, text=True,
                          timeout=120)


def test_cli_changes_are_recorded_as_local_cli_and_listed(srv):
    name = f"au-cli-{uuid.uuid4().hex[:6]}"
    assert _cli(srv, "accounts", "create", name, "--rpm", "4").returncode == 0
    assert _cli(srv, "accounts", "limits", name, "--rpm", "9").returncode == 0
    aid = srv.platform.accounts.get_by_name(name).id
    r = _cli(srv, "audit", "list", "--account", name, "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)["data"]
    assert [(e["actor"], e["source"], e["action"]) for e in entries] == [
        ("local CLI", "wharf accounts limits", "update"), ("local CLI", "wharf accounts create", "create")]
    assert entries[0]["actor_account_id"] is None and entries[0]["after"] == {"rpm": 9}
    # Over a server: the admin API's list, the same fields.
    r = _cli(srv, "audit", "list", "--account", str(aid), "--json", "--server", srv.url,
             "--admin-key", srv.ops_key())
    assert r.returncode == 0, r.stderr
    assert [e["id"] for e in json.loads(r.stdout)["data"]] == [e["id"] for e in entries]
    r = _cli(srv, "audit", "list", "--limit", "1", "--json")
    page = json.loads(r.stdout)
    assert len(page["data"]) == 1 and page["next_cursor"]
    assert _cli(srv, "audit", "list", "--cursor", "nope").returncode == 1
    assert _cli(srv, "audit", "list", "--limit", "0").returncode == 2
