"""The scriptable CLI: every command that prints data takes --json and prints one JSON
document in the admin API's field names, on the local store and against a server alike;
the exit codes the README documents (0 ok, 1 refused, 2 usage, 3 not found, 4 server
unreachable, 5 key refused)."""

from __future__ import annotations

import dataclasses
import json
import re

import pydantic
import pytest
import typer
from typer.testing import CliRunner

from tests.platform.conftest import LiveServer
from tests.services import free_port
from wharf.api import admin, admin_keys
from wharf.cli import app as wharf_app
from wharf.platform.accounts import ensure_admin
from wharf.platform.core import Platform
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

# Commands that print no data of their own (a server; an export that is already CSV/JSON).
NO_JSON = {"serve", "requests export"}
# Fields a script may rely on, whatever else the admin API adds later.
MUST = {
    "AccountOut": {"id", "name", "status", "is_admin", "created_at", "quota_chars_per_day", "quota_tokens_per_day",
                   "rpm", "tpm", "qps", "max_concurrency"},
    "CredentialOut": {"id", "account_id", "kind", "label", "public_id", "created_at", "revoked_at", "rpm", "tpm"},
    "IssuedCredentialOut": {"credential", "public_id", "secret"},
    "ServiceOut": {"id", "account_id", "endpoint", "url_suffix", "model", "kind", "description", "created_at"},
    "UsageRowOut": {"key", "requests", "prompt_tokens", "completion_tokens", "generated_chars", "errors"},
    "LexiconOut": {"terms", "count", "path", "version"},
    "ScopeOut": {"credential_id", "expires_at", "allowed_models", "allowed_services", "quota_chars_per_day",
                 "quota_tokens_per_day"},
    "CredentialQuotaOut": {"credential_id", "day", "chars_limit", "tokens_limit", "chars_used", "tokens_used",
                           "chars_reserved", "tokens_reserved"},
    "RotatedOut": {"credential", "public_id", "secret", "old"},
    "ContentStorageOut": {"account_id", "retention_days"},
    "ContentOut": {"request_id", "account_id", "created_at", "expires_at", "prompt", "outputs"},
    "page": {"data", "next_cursor"},
}
REQUEST_FIELDS = {"request_id", "created_at", "account_id", "credential_id", "service_id", "model", "dialect",
                  "status", "prompt_tokens", "completion_tokens", "generated_chars", "ttft_ms", "latency_ms"}


def _fields(schema: str) -> set[str]:
    from wharf.cli.output import _schema

    return set(_schema(schema).model_fields)


def _check(schema: str, doc) -> None:
    rows = doc if isinstance(doc, list) else [doc]
    for row in rows:
        assert MUST[schema] <= set(row), (schema, row)
        if schema != "page":
            assert set(row) == _fields(schema), (schema, set(row) ^ _fields(schema))


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()
    env = {"WHARF_DATA_DIR": str(tmp_path), "WHARF_DATABASE_URL": "", "WHARF_SECRET_KEY": "",
           "WHARF_SERVER": "", "WHARF_ADMIN_KEY": "", "WHARF_MODELS": '{"xl": "/nowhere"}', "COLUMNS": "200"}

    def invoke(*args):
        return runner.invoke(wharf_app, [str(a) for a in args], env=env)
    return invoke


def _json(r):
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout             # one document on one line: `| jq` and json.loads alike
    return json.loads(lines[0])


def _walk(cmd, path: tuple[str, ...] = ()):
    if hasattr(cmd, "commands"):            # a group (typer >= 0.20 has its own copy of click)
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def _commands() -> dict:
    return dict(_walk(typer.main.get_command(wharf_app)))


def test_every_data_command_has_json():
    commands = _commands()
    assert "keys quota" in commands and "requests list" in commands
    missing = [name for name, cmd in commands.items()
               if name not in NO_JSON and not any("--json" in p.opts for p in cmd.params)]
    assert missing == [], f"commands that print data without --json: {missing}"


def _exercise(cli, extra: tuple, platform_for_usage) -> dict[str, object]:
    """Every data command once, with --json (and `extra`: the server options); returns the
    documents by command."""
    seen = {}

    def run(name, schema, *args):
        doc = _json(cli(*name.split(), *args, "--json", *extra))
        _check(schema, doc)
        seen[name] = doc
        return doc

    acct = run("accounts create", "AccountOut", "carol", "--quota-chars", 1000)
    assert (acct["name"], acct["quota_chars_per_day"]) == ("carol", 1000)
    assert run("accounts content", "ContentStorageOut", "carol")["retention_days"] is None
    assert run("accounts content", "ContentStorageOut", "carol", "--keep-days", 7)["retention_days"] == 7
    assert any(a["name"] == "carol" for a in run("accounts list", "AccountOut"))
    assert run("accounts limits", "AccountOut", "carol", "--rpm", 7)["rpm"] == 7
    assert run("accounts disable", "AccountOut", "carol")["status"] == "disabled"
    assert run("accounts enable", "AccountOut", "carol")["status"] == "active"
    issued = run("keys create", "IssuedCredentialOut", "-a", "carol", "--label", "脚本")
    assert issued["api_key"].startswith("wk-") and issued["credential"]["label"] == "脚本"
    cid = issued["credential"]["id"]
    assert [c["id"] for c in run("keys list", "CredentialOut", "-a", "carol")] == [cid]
    assert run("keys limits", "CredentialOut", cid, "--tpm", 900)["tpm"] == 900
    assert run("keys scope", "ScopeOut", cid, "--quota-chars", 50, "--models", "xl")["quota_chars_per_day"] == 50
    assert run("keys quota", "CredentialQuotaOut", cid)["chars_limit"] == 50
    svc = run("services create", "ServiceOut", "-a", "carol", "-e", "svc1", "-m", "xl", "-k", "chat")
    assert [s["id"] for s in run("services list", "ServiceOut", "-a", "carol")] == [svc["id"]]
    platform_for_usage(acct["id"], cid, svc["id"])
    rows = run("usage", "UsageRowOut", "-a", "carol")
    assert rows and rows[0]["requests"] == 1 and rows[0]["generated_chars"] == 5
    page = run("requests list", "page", "-a", "carol")
    assert [set(e) >= REQUEST_FIELDS for e in page["data"]] == [True]
    rec = _json(cli("requests", "show", page["data"][0]["request_id"], "--json", *extra))
    assert set(rec) >= REQUEST_FIELDS and rec["status"] == "ok" and rec["model"] == "xl"
    seen["requests show"] = rec
    kept = run("requests content", "ContentOut", rec["request_id"])
    assert (kept["prompt"], kept["outputs"]) == ("长城有多长？", ["两万多公里"])
    rotated = run("keys rotate", "RotatedOut", cid, "--grace", 0)
    _check("CredentialOut", rotated["credential"])
    _check("ScopeOut", rotated["old"])
    assert run("keys revoke", "CredentialOut", rotated["credential"]["id"])["revoked_at"] is not None
    assert run("services delete", "ServiceOut", svc["endpoint"])["id"] == svc["id"]
    audit = run("audit list", "page", "-a", "carol")
    assert audit["data"] and {"id", "created_at", "actor", "source", "object_type", "object_id", "action",
                              "before", "after"} <= set(audit["data"][0])
    return seen


def _usage_writer(db_url: str, box: SecretBox):
    def write(account_id: int, credential_id: int, service_id: int) -> None:
        store = Store.open(db_url)
        try:
            Platform(store, box).settle_and_record(
                "chatcmpl-cli-1", chars=5, tokens=7, reserved=False, content=(7, "长城有多长？", ["两万多公里"]),
                account_id=account_id, credential_id=credential_id,
                service_id=service_id, model="xl", dialect="openai", prompt_tokens=3, completion_tokens=4,
                generated_chars=5, status="ok", ttft_ms=10, latency_ms=20)
        finally:
            store.close()
    return write


def test_json_on_the_local_store(cli, tmp_path):
    assert cli("accounts", "list").exit_code == 0       # makes the store and its secret key
    seen = _exercise(cli, (), _usage_writer(f"sqlite:///{tmp_path / 'wharf.db'}", SecretBox.load(tmp_path)))
    words = tmp_path / "words.txt"
    words.write_text("敏感词\nzebra\n", encoding="utf-8")
    lex = _json(cli("safety", "lexicon", "--set", words, "--json"))
    _check("LexiconOut", lex)
    assert (lex["terms"], lex["count"]) == (["敏感词", "zebra"], 2)
    _check("LexiconOut", _json(cli("safety", "lexicon", "--json")))
    # Each command with --json was run above: a new one needs its line in _exercise.
    assert set(seen) | {"safety lexicon"} == set(_commands()) - NO_JSON


def _server_app(platform):
    from fastapi import FastAPI

    from tests.platform.conftest import Registry
    from wharf.api.admin_audit import build_audit_router
    from wharf.api.admin_content import build_content_router
    from wharf.api.admin_requests import build_requests_router

    app = FastAPI()
    app.state.platform = platform
    app.state.registry = Registry()
    for build in (admin.build_admin_router, admin_keys.build_keys_router, build_requests_router, build_audit_router,
                  build_content_router):
        app.include_router(build())
    return app


@pytest.fixture
def remote(tmp_path):
    url = f"sqlite:///{tmp_path / 'remote.db'}"
    box = SecretBox(SecretBox.generate_key())
    store = Store.open(url)
    plat = Platform(store, box, model_exists={"xl"}.__contains__)
    key = ensure_admin(store)
    with LiveServer(_server_app(plat)) as srv:
        yield srv, key, plat, _usage_writer(url, box)
    store.close()


def test_json_against_a_server_has_the_same_fields(cli, tmp_path, remote):
    srv, key, _, writer = remote
    seen_remote = _exercise(cli, ("--server", srv.url, "--admin-key", key), writer)
    assert not (tmp_path / "wharf.db").exists()         # the local store was never opened
    assert cli("accounts", "list").exit_code == 0
    seen_local = _exercise(cli, (), _usage_writer(f"sqlite:///{tmp_path / 'wharf.db'}", SecretBox.load(tmp_path)))
    def first(doc):
        """A document's first record: of a page, of a list, or the record itself."""
        if isinstance(doc, dict) and "data" in doc:
            return doc["data"][0]
        return doc[0] if isinstance(doc, list) else doc

    for name, doc in seen_remote.items():
        assert set(first(doc)) == set(first(seen_local[name])), name


def test_exit_codes(cli, tmp_path, remote):
    srv, key, plat, _ = remote
    on = ("--server", srv.url, "--admin-key", key)
    assert cli("accounts", "create", "dave").exit_code == 0
    # 1: the store or server refused
    assert cli("accounts", "create", "dave").exit_code == 1
    assert cli("accounts", "create", "dave", *on).exit_code == 0
    r = cli("accounts", "create", "dave", *on)
    assert r.exit_code == 1 and "409" in r.output
    # 2: bad usage
    assert cli("accounts", "list", "--no-such-option").exit_code == 2
    assert cli("keys", "rotate", "1", "--grace", "-5").exit_code == 2
    assert cli("requests", "list", "--since", "yesterday-ish").exit_code == 2
    assert cli("keys", "create").exit_code == 2                          # --account is required locally
    assert cli("accounts", "list", "--server", srv.url).exit_code == 2   # no --admin-key
    # 3: not found, locally and on the server
    for extra in ((), on):
        assert cli("keys", "revoke", 999, *extra).exit_code == 3
        assert cli("keys", "quota", 999, *extra).exit_code == 3
        assert cli("requests", "show", "chatcmpl-nope", *extra).exit_code == 3
        assert cli("accounts", "disable", "nobody", *extra).exit_code == 3
        assert cli("services", "delete", "nope", *extra).exit_code == 3
    # 4: the server cannot be reached
    r = cli("accounts", "list", "--json", "--server", f"http://127.0.0.1:{free_port()}", "--admin-key", key)
    assert r.exit_code == 4 and "cannot reach" in r.output and r.stdout == ""
    # 5: the key is refused, or may not do this
    assert cli("accounts", "list", "--server", srv.url, "--admin-key", "wk-wrong").exit_code == 5
    acct = plat.accounts.create("erin")
    tenant = plat.credentials.create(acct.id, "api_key")
    tenant_on = ("--server", srv.url, "--admin-key", tenant.secret)
    assert cli("keys", "scope", tenant.info.id, "--quota-chars", 1, *tenant_on).exit_code == 5
    assert cli("keys", "scope", tenant.info.id, "--json", *tenant_on).exit_code == 0
    # Errors never reach stdout, so `--json | jq` sees nothing rather than half a document.
    r = cli("keys", "revoke", 999, "--json")
    assert r.stdout == "" and re.search(r"not found", r.output)


def test_response_schema_is_the_dataclass_fields_and_defaults():
    @dataclasses.dataclass(frozen=True)
    class Row:
        """A row."""
        a: int
        tags: list[str] = dataclasses.field(default_factory=list)
        note: str | None = None

    model = admin.response_schema(Row, "RowOut")
    assert (model.__name__, model.__doc__) == ("RowOut", "A row.")
    assert model.model_json_schema()["required"] == ["a"]
    assert model.model_validate(Row(a=1)).model_dump() == {"a": 1, "tags": [], "note": None}
    with pytest.raises(pydantic.ValidationError):
        model.model_validate({"tags": ["x"]})
