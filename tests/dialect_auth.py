"""Credentials as each dialect's client presents them: a Qianfan OAuth access token and a
SenseNova JWT, the way the official SDKs make them (one copy for every raw-HTTP client)."""

from __future__ import annotations

import contextlib
import time

import httpx
import jwt


@contextlib.contextmanager
def client_for(where: str | httpx.Client):
    """A client for `where`: a live server's base URL (a new client over real sockets), or a
    client whose base_url is the server (the in-process one), used as it is."""
    if isinstance(where, str):
        with httpx.Client(base_url=where, timeout=120) as client:
            yield client
    else:
        yield where


def qianfan_token(where: str | httpx.Client, ak: str, sk: str) -> str:
    """An access token from the server's OAuth endpoint (client_credentials grant)."""
    params = {"grant_type": "client_credentials", "client_id": ak, "client_secret": sk}
    with client_for(where) as client:
        r = client.post("/oauth/2.0/token", params=params)
    r.raise_for_status()
    return r.json()["access_token"]


def sensenova_jwt(ak: str, sk: str, *, exp_in: int = 1800, nbf_in: int = -5, alg: str = "HS256") -> str:
    """A token as the sensenova SDK signs one: iss the access key id, HS256, 30 minutes."""
    now = int(time.time())
    return jwt.encode({"iss": ak, "exp": now + exp_in, "nbf": now + nbf_in}, sk, algorithm=alg)


class SensenovaAuth(httpx.Auth):
    """httpx auth: a fresh SenseNova JWT on every request, as the SDK signs one per call."""

    def __init__(self, ak: str, sk: str):
        self.ak, self.sk = ak, sk

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {sensenova_jwt(self.ak, self.sk)}"}

    def auth_flow(self, request):
        request.headers.update(self.header())
        yield request
