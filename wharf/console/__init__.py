"""Web console at /console: services, credentials, usage charts, playground, models.

One HTML shell (templates/index.html) + static/app.js + static/console.css; no CDN.

Security design
  * Sign-in: POST /console/session {"api_key"} (JSON only, same-origin Origin if sent).
    The key is verified with platform.authenticator.bearer(); a NEW random session id is
    minted every time (the old one, if any, is destroyed: no fixation) and set as cookie
    `wharf_console` (HttpOnly, SameSite=Strict, Path=/console, Secure on https).
  * The API key lives only in the server-side session table (console_sessions in the
    shared store, Fernet-encrypted with the server key; the cookie value is stored only
    as its SHA-256, see wharf/platform/console_sessions.py); JavaScript never sees it.
    The browser reaches the admin API and the dialects through same-origin proxy routes
    under /console/api/..., which attach the session's key (or, for Qianfan / SenseNova,
    a token / JWT made from one of the user's own credentials).
  * CSRF: every state-changing console request (POST/PATCH/PUT/DELETE under /console/api
    and DELETE /console/session) must carry X-CSRF-Token equal to the session's token
    (compared in constant time), on top of SameSite=Strict.
  * Every request re-verifies the session's key, so a revoked key or disabled account
    ends the console session on the next click.
  * HTML is served with a strict CSP (no inline script, self only) and the JS builds the
    DOM with textContent only, so stored strings (service descriptions, labels) can
    never become markup.
Sessions live in the shared store, so every replica behind a load balancer knows them
(and a sign-out on one ends them on all); they expire after SESSION_TTL_S of inactivity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
from pathlib import Path

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse

from wharf.errors import NotFound, WharfError
from wharf.platform.console_sessions import SESSION_TTL_S, Session

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
COOKIE = "wharf_console"
# A browser sends one value (two at most, with a planted duplicate); beyond this many the
# rest is ignored, so a header stuffed with values costs no more than one lookup.
MAX_COOKIE_VALUES = 8
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SEC_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

# Playground targets: dialect -> (allowed path prefix, auth scheme)
QIANFAN_PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop/"
DIALECT_PATHS = {
    "openai-chat": ("/v1/chat/completions", "bearer"),
    "openai-completions": ("/v1/completions", "bearer"),
    "welm": ("/welm/v1/completions", "bearer"),
    "qianfan-chat": (QIANFAN_PREFIX + "chat/", "qianfan_app"),
    "qianfan-completions": (QIANFAN_PREFIX + "completions/", "qianfan_app"),
    "sensenova": ("/v1/llm/completions", "sensenova"),
    "sensenova-chat": ("/v1/llm/chat-completions", "sensenova"),
}


def _err(status: int, message: str, type_: str = "console_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None}},
                        status_code=status, headers={"Cache-Control": "no-store"})


def _loopback(request: Request) -> str:
    """The address this very server answers on (the socket the request came in on)."""
    server = request.scope.get("server") or ("127.0.0.1", 8000)
    host, port = server[0], server[1]
    if host in ("0.0.0.0", "", None):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _cookie_values(request: Request) -> list[str]:
    """Every value sent for our cookie: a planted duplicate (e.g. Path=/ from a sibling
    origin) must neither shadow nor replace the real one."""
    out = []
    for part in request.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            out.append(value.strip().strip('"'))
            if len(out) == MAX_COOKIE_VALUES:
                break
    return out


def build_console_router() -> APIRouter:
    r = APIRouter(tags=["console"], include_in_schema=False)
    clients: dict[str, httpx.AsyncClient] = {}

    def client(request: Request) -> httpx.AsyncClient:
        base = _loopback(request)
        c = clients.get(base)
        if c is None or c.is_closed:
            c = clients[base] = httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120, connect=10))
        return c

    def platform(request: Request):
        return request.app.state.platform

    async def current(request: Request) -> tuple[str | None, Session | None, object | None]:
        """(sid, session, principal) — principal None when signed out or the key no longer works."""
        plat, values = platform(request), _cookie_values(request)

        def look_up():      # store work only: one hop to a worker thread per console request
            found = plat.console_sessions.find(values)
            if found is None:
                return None, None, None
            sid, sess = found
            try:
                return sid, sess, plat.authenticator.bearer(sess.key)
            except WharfError:
                plat.console_sessions.drop(sid)
                return sid, None, None
        return await asyncio.to_thread(look_up)

    def csrf_ok(request: Request, sess: Session) -> bool:
        token = request.headers.get("x-csrf-token", "")
        return bool(token) and hmac.compare_digest(token.encode(), sess.csrf.encode())

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    # -- pages and static files ---------------------------------------------------------
    @r.get("/console", response_class=HTMLResponse)
    @r.get("/console/", response_class=HTMLResponse)
    async def index():
        html = (TEMPLATES / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=SEC_HEADERS)

    static_files = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}

    @r.get("/console/static/{name}")
    async def static(name: str):
        path = static_files.get(name)
        if path is None:
            return _err(404, "not found")
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    # -- session ----------------------------------------------------------------------
    def me_payload(p, sess: Session) -> dict:
        return {"signed_in": True, "csrf": sess.csrf,
                "account": {"id": p.account_id, "name": p.account_name, "is_admin": p.is_admin},
                "credential_id": p.credential_id}

    @r.get("/console/session")
    async def get_session(request: Request):
        _, sess, p = await current(request)
        if p is None:
            return JSONResponse({"signed_in": False}, headers={"Cache-Control": "no-store"})
        return JSONResponse(me_payload(p, sess), headers={"Cache-Control": "no-store"})

    @r.post("/console/session")
    async def sign_in(request: Request):
        if not request.headers.get("content-type", "").startswith("application/json") or not same_origin(request):
            return _err(403, "sign-in must be a same-origin JSON request", "csrf")
        try:
            body = json.loads(await request.body())
            key = str(body.get("api_key", "")).strip()
        except (ValueError, AttributeError):
            return _err(400, "body must be JSON {\"api_key\": ...}")
        try:
            p = await asyncio.to_thread(platform(request).authenticator.bearer, key)
            sid, sess = await asyncio.to_thread(platform(request).console_sessions.create, key, p.account_id,
                                                _cookie_values(request))
        except WharfError:
            return _err(401, "invalid API key", "auth_error")
        resp = JSONResponse(me_payload(p, sess), headers={"Cache-Control": "no-store"})
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/console",
                        secure=request.url.scheme == "https", max_age=SESSION_TTL_S)
        return resp

    @r.delete("/console/session")
    async def sign_out(request: Request):
        sid, sess, _ = await current(request)
        if sess is not None and not csrf_ok(request, sess):
            return _err(403, "missing or wrong CSRF token", "csrf")
        await asyncio.to_thread(platform(request).console_sessions.drop, sid)
        resp = JSONResponse({"signed_in": False})
        resp.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return resp

    async def guard(request: Request):
        """-> (session, principal, None) or (None, None, error response)."""
        _, sess, p = await current(request)
        if p is None:
            return None, None, _err(401, "not signed in", "auth_error")
        if request.method in UNSAFE and not csrf_ok(request, sess):
            return None, None, _err(403, "missing or wrong CSRF token", "csrf")
        return sess, p, None

    # -- proxy to the admin API ---------------------------------------------------------
    @r.api_route("/console/api/admin/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"])
    async def admin_proxy(path: str, request: Request):
        sess, p, bad = await guard(request)
        if bad:
            return bad
        if ".." in path or path.startswith("/"):
            return _err(400, "bad path")
        body = await request.body() if request.method in UNSAFE else None
        headers = {"Authorization": f"Bearer {sess.key}",
                   # Already counted per session and IP here: spares the admin API's IP bucket
                   # (every console user's call comes from this server's own address).
                   "X-Wharf-Console-Proxy": getattr(request.app.state, "console_proxy_token", "")}
        if body:
            headers["Content-Type"] = "application/json"
        c = client(request)
        up = await c.send(c.build_request(request.method, f"/admin/api/{path}",
                                          params=list(request.query_params.multi_items()),
                                          content=body, headers=headers), stream=True)
        out = {"Cache-Control": "no-store"}
        if "content-disposition" in up.headers:      # an export names its file
            out["Content-Disposition"] = up.headers["content-disposition"]
        if path == "requests/export":
            # Relayed as it comes: an export of millions of records is never held here whole.
            async def relay():
                try:
                    async for chunk in up.aiter_bytes():
                        yield chunk
                finally:
                    await up.aclose()
            return StreamingResponse(relay(), status_code=up.status_code, headers=out,
                                     media_type=up.headers.get("content-type"))
        try:
            content = await up.aread()
        finally:
            await up.aclose()
        return Response(content, status_code=up.status_code, headers=out, media_type=up.headers.get("content-type"))

    # -- per-day usage series (per model and per service) --------------------------------
    @r.get("/console/api/usage-series")
    async def usage_series(request: Request, days: int = 30, all: bool = False):
        sess, p, bad = await guard(request)
        if bad:
            return bad
        days = max(1, min(days, 366))
        plat = platform(request)
        until = plat.quota.today()
        since = until - dt.timedelta(days=days - 1)
        # Every account's only for an admin who asks; the caller's own otherwise.
        account = None if (all and p.is_admin) else p.account_id
        data = await asyncio.to_thread(plat.usage.daily_series, account, since, until)
        return JSONResponse({"since": since.isoformat(), "until": until.isoformat(), "account_id": account,
                             **data}, headers={"Cache-Control": "no-store"})

    # -- engine stats (read-only, for the models page) -------------------------------------
    @r.get("/console/api/engine")
    async def engine(request: Request):
        sess, p, bad = await guard(request)
        if bad:
            return bad
        up = await client(request).get("/engine/stats", headers={"Authorization": f"Bearer {sess.key}"})
        return Response(up.content, status_code=up.status_code, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    # -- playground proxy -----------------------------------------------------------------
    @r.post("/console/api/playground")
    async def playground(request: Request):
        sess, p, bad = await guard(request)
        if bad:
            return bad
        try:
            spec = json.loads(await request.body())
            dialect, path, body = spec["dialect"], spec["path"], spec["body"]
            assert isinstance(body, dict) and isinstance(path, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _err(400, "body must be JSON {dialect, path, body, credential_id?}")
        if dialect not in DIALECT_PATHS:
            return _err(400, f"unknown dialect {dialect!r}")
        prefix, scheme = DIALECT_PATHS[dialect]
        ok_path = (path.startswith(prefix) and "/" not in path[len(prefix):] and len(path) > len(prefix)
                   if prefix.endswith("/") else path == prefix)
        if not ok_path or "?" in path or ".." in path:
            return _err(400, f"path must be {prefix}{'<endpoint>' if prefix.endswith('/') else ''}")
        plat = platform(request)
        headers = {"Content-Type": "application/json"}
        params = {}
        try:
            if scheme == "bearer":
                headers["Authorization"] = f"Bearer {sess.key}"
            elif scheme == "qianfan_app":     # a token of one of the user's own credentials
                params["access_token"] = await asyncio.to_thread(
                    plat.authenticator.client_token, p.account_id, spec.get("credential_id"), "qianfan_app")
            else:
                token = await asyncio.to_thread(plat.authenticator.client_token, p.account_id,
                                                spec.get("credential_id"), "sensenova")
                headers["Authorization"] = f"Bearer {token}"
        except NotFound as e:                 # not one of the user's active credentials of that kind
            return _err(400, e.message)
        except WharfError as e:
            return _err(400, f"credential: {e.message}")
        c = client(request)
        req = c.build_request("POST", path, params=params, headers=headers,
                              # ASCII escapes: a lone surrogate ("\\ud800") stays an escape, and the
                              # dialect refuses it in its own shape (not a UnicodeEncodeError here).
                              content=json.dumps(body).encode())
        up = await c.send(req, stream=True)

        async def relay():
            try:
                async for chunk in up.aiter_raw():
                    yield chunk
            finally:
                await up.aclose()

        return StreamingResponse(relay(), status_code=up.status_code,
                                 media_type=up.headers.get("content-type", "application/octet-stream"),
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                                          "X-Upstream-Status": str(up.status_code)})

    return r
