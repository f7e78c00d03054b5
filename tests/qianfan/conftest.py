"""Fixtures for the Qianfan dialect tests: accounts with Qianfan credentials and services on
the shared live server, and the real qianfan SDK pointed at it."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import MODEL

PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"
_seq = itertools.count()


@dataclass
class QfAccount:
    account_id: int
    app_ak: str          # qianfan_app: API Key / Secret Key (OAuth)
    app_sk: str
    app_cred_id: int
    iam_ak: str          # qianfan_iam: Access Key / Secret Key (BCE signature)
    iam_sk: str
    iam_cred_id: int
    completions: str     # endpoint of a completions service
    chat: str            # endpoint of a chat service


def make_account(server, **limits) -> QfAccount:
    p = server.platform
    n = next(_seq)
    tag = uuid.uuid4().hex[:8]
    acct = p.accounts.create(f"qf-{tag}-{n}", **limits)
    app = p.credentials.create(acct.id, "qianfan_app", label="app")
    iam = p.credentials.create(acct.id, "qianfan_iam", label="iam")
    comp = p.services.create(acct.id, f"qfc{tag}_{n}", MODEL, "completions", "test completions")
    chat = p.services.create(acct.id, f"qfchat{tag}_{n}", MODEL, "chat", "test chat")
    return QfAccount(acct.id, app.public_id, app.secret, app.info.id, iam.public_id, iam.secret, iam.info.id,
                     comp.endpoint, chat.endpoint)


@pytest.fixture
def qf_account(server) -> QfAccount:
    return make_account(server)


@pytest.fixture(scope="module")
def shared_account(server) -> QfAccount:
    """One account for read-only tests of a module (saves provisioning time)."""
    return make_account(server)


def reset_sdk_config():
    import qianfan.config
    qianfan.config._GLOBAL_CONFIG = None


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    """Point the real SDK at a server; returns a function(server, oauth=(ak, sk) | iam=(ak, sk))."""
    def clear():
        for var in ("QIANFAN_AK", "QIANFAN_SK", "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY",
                    "QIANFAN_ACCESS_TOKEN", "QIANFAN_BEARER_TOKEN"):
            monkeypatch.delenv(var, raising=False)

    clear()
    monkeypatch.setenv("QIANFAN_CACHE_DIR", str(tmp_path / "qianfan-cache"))
    monkeypatch.setenv("QIANFAN_DISABLE_CACHE", "true")

    def point(server, *, oauth: tuple[str, str] | None = None, iam: tuple[str, str] | None = None):
        clear()
        monkeypatch.setenv("QIANFAN_BASE_URL", server.url)
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
        if oauth:
            monkeypatch.setenv("QIANFAN_AK", oauth[0])
            monkeypatch.setenv("QIANFAN_SK", oauth[1])
        if iam:
            monkeypatch.setenv("QIANFAN_ACCESS_KEY", iam[0])
            monkeypatch.setenv("QIANFAN_SECRET_KEY", iam[1])
        reset_sdk_config()

    yield point
    reset_sdk_config()


def get_token(server, ak: str, sk: str) -> str:
    r = httpx.post(f"{server.url}/oauth/2.0/token",
                   params={"grant_type": "client_credentials", "client_id": ak, "client_secret": sk})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]
