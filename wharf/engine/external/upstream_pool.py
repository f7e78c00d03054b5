"""Several replicas of an upstream engine: which one gets the next request, which are up.

The upstream backend (upstream.py) may stand in front of N OpenAI-compatible servers.
For each attempt it asks the pool for a member that serves the model and is healthy:
the one with the fewest requests in flight from this gateway, counted over all models
(a replica's capacity is shared by everything it serves); ties go to the member picked
longest ago, which is round-robin when the gateway is idle.

Health. A member that cannot be connected to is marked down for a cooldown (2 s,
doubling on every failed probe up to 30 s). A small background task, owned by the pool
and started on the running loop by the first request, probes each down member with
GET /v1/models once its cooldown is over; an answer brings it back with the models it
lists now. So a recovered replica gets traffic again without a user request failing on
it first, and replicas that were down when the gateway started join the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from wharf.engine.types import UpstreamStats

log = logging.getLogger("wharf.upstream")

# Constants, not settings: a dead replica costs one extra connect attempt per request
# that happens to be routed there first, so the exact values matter little.
COOLDOWN_FIRST_S = 2.0
COOLDOWN_MAX_S = 30.0
PROBE_TICK_S = 0.5           # how often the probe task looks for members due a probe
PROBE_TIMEOUT_S = 5.0


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class UpstreamModel:
    """One entry of an upstream's /v1/models."""

    id: str
    root: str
    max_model_len: int | None = None
    parent: str | None = None


def model_cards(payload) -> list[UpstreamModel]:
    """The models in a /v1/models answer (OpenAI's shape; vLLM's `max_model_len`, others'
    `context_length` / `context_size`); entries without an id are skipped."""
    out = []
    for card in (payload.get("data") or []) if isinstance(payload, dict) else []:
        if not isinstance(card, dict) or not card.get("id"):
            continue
        mml = card.get("max_model_len") or card.get("context_length") or card.get("context_size")
        out.append(UpstreamModel(id=str(card["id"]), root=str(card.get("root") or card["id"]),
                                 max_model_len=int(mml) if isinstance(mml, (int, float)) and mml > 0 else None,
                                 parent=card.get("parent")))
    return out


@dataclass(eq=False)
class Member:
    """One replica. `models`: upstream model id -> root (what weights it is)."""

    url: str
    models: dict[str, str] = field(default_factory=dict)
    healthy: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    cooldown: float = 0.0        # seconds it stays down after the last failure
    retry_at: float = 0.0        # when the probe task tries it again
    last_pick: int = 0           # pick sequence number, for round-robin among ties


class UpstreamPool:
    """The members, their load and health, and the probe task that brings them back.

    All state changes happen on the event loop thread (requests and the probe task), so
    no lock is needed; `clock` is injectable for tests of the choice logic."""

    def __init__(self, urls: Iterable[str], *, api_key: str | None = None, connect_timeout: float = 5.0,
                 max_connections: int | None = None, clock: Callable[[], float] = time.monotonic):
        unique = dict.fromkeys(u.strip().rstrip("/") for u in urls if u and u.strip())
        if not unique:
            raise ValueError("an upstream pool needs at least one URL")
        self.members = [Member(url) for url in unique]
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.clock = clock
        # upstream id -> the root the gateway serves it as; a member listing the same id
        # with other weights is not used for it (the answers would differ by replica).
        self.expected_roots: dict[str, str] = {}
        self._picks = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._probe_task: asyncio.Task | None = None
        self._closed = False

    # -- choice and health (no I/O) ---------------------------------------------------------

    def serves(self, member: Member, model_id: str) -> bool:
        root = member.models.get(model_id)
        expected = self.expected_roots.get(model_id)
        return root is not None and (expected is None or root == expected)

    def acquire(self, model_id: str, exclude: Iterable[Member] = ()) -> Member | None:
        """The healthy member serving `model_id` with the fewest requests in flight (ties:
        the one picked longest ago), now counted as in flight; None when there is none."""
        skip = set(exclude)
        candidates = [m for m in self.members if m.healthy and m not in skip and self.serves(m, model_id)]
        if not candidates:
            return None
        best = min(candidates, key=lambda m: (m.in_flight, m.last_pick))
        self._picks += 1
        best.last_pick = self._picks
        best.in_flight += 1
        best.requests += 1
        return best

    def release(self, member: Member, *, failed: bool = False, down: bool = False) -> None:
        """An attempt on `member` ended: `failed` counts it as the upstream's failure;
        `down`: it could not even be connected to."""
        member.in_flight -= 1
        if failed or down:
            member.failures += 1
        if down:
            self.mark_down(member)

    def mark_down(self, member: Member) -> None:
        """No new requests for COOLDOWN_FIRST_S; then the probe task tries it. A member
        already down stays on its own schedule (concurrent failures do not stack)."""
        if not member.healthy:
            return
        member.healthy = False
        member.cooldown = COOLDOWN_FIRST_S
        member.retry_at = self.clock() + member.cooldown
        log.warning("upstream %s is down; probing it again in %.0f s", member.url, member.cooldown)

    def probe_failed(self, member: Member, cause: object = "") -> None:
        member.healthy = False
        member.cooldown = min(max(member.cooldown * 2, COOLDOWN_FIRST_S), COOLDOWN_MAX_S)
        member.retry_at = self.clock() + member.cooldown
        log.info("upstream %s still down (%s); next probe in %.0f s", member.url, cause, member.cooldown)

    def mark_up(self, member: Member, cards: list[UpstreamModel]) -> None:
        """`member` answered its /v1/models with `cards`: it takes traffic again."""
        member.models = {c.id: c.root for c in cards}
        was_down, member.healthy, member.cooldown = not member.healthy, True, 0.0
        for model_id, root in member.models.items():
            expected = self.expected_roots.get(model_id)
            if expected is not None and root != expected:
                log.warning("upstream %s serves %s as %s, not %s: not used for it", member.url, model_id,
                            root, expected)
        if was_down:
            log.warning("upstream %s is up again (%d models)", member.url, len(member.models))

    def due(self) -> list[Member]:
        """Down members whose cooldown is over."""
        now = self.clock()
        return [m for m in self.members if not m.healthy and m.retry_at <= now]

    def stats(self) -> list[UpstreamStats]:
        return [UpstreamStats(url=m.url, healthy=m.healthy, in_flight=m.in_flight, requests=m.requests,
                              failures=m.failures, models=sorted(m.models)) for m in self.members]

    # -- HTTP: clients and the probe task ---------------------------------------------------

    def client(self, member: Member) -> httpx.AsyncClient:
        """The connection pool to `member` on the running loop."""
        self._bind_loop()
        client = self._clients.get(member.url)
        if client is None:
            client = self._clients[member.url] = httpx.AsyncClient(
                base_url=member.url, headers=auth_headers(self.api_key),
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=64))
        return client

    def start_probing(self) -> None:
        """Make sure the probe task runs on the running loop (called by each request: it
        is started lazily, on the loop that serves requests)."""
        self._bind_loop()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Clients and tasks belong to one loop; a new loop (tests, a restarted
            # server) starts afresh.
            self._loop, self._clients, self._probe_task = loop, {}, None
        if not self._closed and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = loop.create_task(self._probe_forever(), name="wharf-upstream-probe")

    async def probe(self, member: Member) -> bool:
        """GET /v1/models on `member`: up with the models it lists, or down for longer."""
        try:
            r = await self.client(member).get(
                "/v1/models", timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=min(self.connect_timeout,
                                                                               PROBE_TIMEOUT_S)))
            if r.status_code != 200:
                raise ValueError(f"/v1/models answered {r.status_code}")
            cards = model_cards(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            self.probe_failed(member, f"{type(exc).__name__}: {exc}")
            return False
        self.mark_up(member, cards)
        return True

    async def _probe_forever(self) -> None:
        while not self._closed:
            due = self.due()
            if due:
                await asyncio.gather(*(self.probe(m) for m in due))
            await asyncio.sleep(PROBE_TICK_S)

    def shutdown(self) -> None:
        """Stop probing and drop the connection pools (their loop may already be gone)."""
        self._closed = True
        loop, clients, task = self._loop, list(self._clients.values()), self._probe_task
        self._clients, self._probe_task = {}, None
        if loop is None or loop.is_closed() or not loop.is_running():
            return

        async def close() -> None:
            if task is not None:
                task.cancel()
            for client in clients:
                await client.aclose()
        loop.call_soon_threadsafe(lambda: loop.create_task(close()))
