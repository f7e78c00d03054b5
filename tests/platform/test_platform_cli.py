"""`wharf accounts|keys|services|usage` on a real SQLite store, and against a live admin API."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from tests.platform.conftest import LiveServer, admin_app
from wharf.cli.admin import register
from wharf.platform.accounts import ensure_admin
from wharf.platform.core import Platform
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store


@pytest.fixture
def cli(tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    env = {"WHARF_DATA_DIR": str(tmp_path), "WHARF_DATABASE_URL": "", "WHARF_SECRET_KEY": "",
           "WHARF_SERVER": "", "WHARF_ADMIN_KEY": "", "WHARF_MODELS": '{"xl": "/nowhere"}',
           "COLUMNS": "200"}

    def invoke(*args):
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_local_workflow(cli, tmp_path):
    r = cli("accounts", "create", "alice", "--quota-chars", "1000")
    assert r.exit_code == 0, r.output
    assert "alice" in cli("accounts", "list").output
    r = cli("keys", "create", "--account", "alice", "--kind", "qianfan_iam", "--label", "ci")
    assert r.exit_code == 0, r.output
    sk = re.search(r"Secret Key: (\w+)", r.output).group(1)
    ak = re.search(r"Access Key: (\w+)", r.output).group(1)
    listing = cli("keys", "list", "--account", "alice").output
    assert ak in listing and sk not in listing
    assert (tmp_path / "secret.key").exists()
    r = cli("services", "create", "-a", "alice", "-e", "test1", "-m", "xl", "-k", "completions")
    assert r.exit_code == 0, r.output
    endpoint = re.search(r"\b[a-z0-9]{8}_test1\b", r.output).group(0)     # the prefixed endpoint
    assert endpoint in cli("services", "list").output
    assert cli("usage", "--account", "alice", "--days", "3").exit_code == 0
    assert cli("accounts", "disable", "alice").exit_code == 0
    assert "disabled" in cli("accounts", "list").output
    assert cli("accounts", "enable", "alice").exit_code == 0
    cred_id = re.search(r"^│\s*(\d+)\s*│", listing, re.M).group(1)
    assert cli("keys", "revoke", cred_id).exit_code == 0
    assert cli("services", "delete", endpoint).exit_code == 0
    assert endpoint not in cli("services", "list").output
    # the SQLite file never holds the secret
    data = b"".join(p.read_bytes() for p in tmp_path.glob("wharf.db*"))
    assert sk.encode() not in data


@pytest.mark.parametrize("args, message", [
    (("accounts", "create", "alice"), "already exists"),
    (("accounts", "create", "bad name"), "name must be"),
    (("accounts", "disable", "nobody"), "not found"),
    (("keys", "create", "--account", "nobody"), "not found"),
    (("keys", "create"), "--account is required"),
    (("keys", "revoke", "999"), "not found"),
    (("services", "create", "-a", "alice", "-e", "Bad!", "-m", "xl"), "endpoint must be"),
    (("services", "create", "-a", "alice", "-e", "ok", "-m", "no-such-model"), "unknown model"),
    (("services", "delete", "nope"), "not found"),
    (("usage", "--group-by", "colour"), "group_by"),
])
def test_bad_input_exits_nonzero(cli, args, message):
    assert cli("accounts", "create", "alice").exit_code == 0
    r = cli(*args)
    assert r.exit_code != 0
    assert message in r.output


def test_local_lexicon_goes_to_the_store_and_the_file(cli, tmp_path):
    """On the local store, --set writes the shared store (which running servers poll) and
    the lexicon file; showing it reads the store."""
    words = tmp_path / "words.txt"
    words.write_text("# comment\nzebra\n敏感词\n", encoding="utf-8")
    r = cli("safety", "lexicon", "--set", str(words))
    assert r.exit_code == 0, r.output
    assert "2 term(s)" in r.output and "WHARF_LEXICON_REFRESH_S" in r.output
    assert (tmp_path / "lexicon.txt").read_text(encoding="utf-8").splitlines()[1:] == ["zebra", "敏感词"]
    store = Store.open(f"sqlite:///{tmp_path / 'wharf.db'}")
    try:
        from wharf.platform.lexicon_store import LexiconStore
        stored = LexiconStore(store).read()
        assert (stored.version, stored.terms) == (1, ["zebra", "敏感词"])
    finally:
        store.close()
    (tmp_path / "lexicon.txt").write_text("stale-file-term\n", encoding="utf-8")
    assert cli("safety", "lexicon").output.split() == ["zebra", "敏感词"]       # the store wins


def test_bad_kind(cli):
    cli("accounts", "create", "alice")
    r = cli("keys", "create", "-a", "alice", "--kind", "password")
    assert r.exit_code == 2 and "--kind must be" in r.output


def test_remote_mode(cli, tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'remote.db'}")
    plat = Platform(store, SecretBox(SecretBox.generate_key()))
    key = ensure_admin(store)
    try:
        with LiveServer(admin_app(plat)) as srv:
            remote = ("--server", srv.url, "--admin-key", key)
            r = cli("accounts", "create", "bob", *remote)
            assert r.exit_code == 0, r.output
            r = cli("keys", "create", "-a", "bob", "-k", "sensenova", *remote)
            assert r.exit_code == 0 and "Secret access key" in r.output, r.output
            r = cli("services", "create", "-a", "bob", "-e", "svc1", "-m", "xl", *remote)
            assert r.exit_code == 0, r.output
            endpoint = re.search(r"\b[a-z0-9]{8}_svc1\b", r.output).group(0)
            assert endpoint in cli("services", "list", *remote).output
            assert "bob" in cli("accounts", "list", *remote).output
            assert cli("usage", *remote).exit_code == 0
            assert cli("services", "delete", endpoint, *remote).exit_code == 0
            r = cli("accounts", "create", "bob", *remote)
            assert r.exit_code == 1 and "409" in r.output
            r = cli("accounts", "list", "--server", srv.url, "--admin-key", "wk-wrong")
            assert r.exit_code == 5 and "401" in r.output      # the key was refused
        # the local store was not touched
        assert not (tmp_path / "wharf.db").exists()
        assert [a.name for a in plat.accounts.list()] == ["admin", "bob"]
    finally:
        store.close()
