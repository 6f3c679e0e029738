"""A loopback fake of the Massive provider: REST chain snapshots and the WebSocket protocol.

It speaks the protocol as the provider's published spec (the official client repository's REST and
WebSocket spec files) and its observed behaviour describe it, so tests drive the official ``massive``
client code end to end against what production meets:

* WebSocket: ``connected`` on open; ``auth`` answered ``auth_success`` or ``auth_failed``; no ``auth``
  within ``auth_timeout_s`` answered ``auth_timeout`` and closed; ``subscribe`` answered ``success``
  per channel. The connection limit is per market and enforced the provider's way: a connection past
  it is accepted (``auth_success``), and the *oldest* connection gets ``max_connections`` and is
  closed with 1008.
* REST ``/v3/snapshot/options/{u}``: pages of at most 250 (``limit`` above that is answered 400 with
  the provider's error body); ``next_url`` carries only an opaque ``cursor`` (the filter lives in it)
  and is given whenever a page is full, so a chain of exactly N x limit contracts ends with a page
  without ``results`` (the provider omits the key when a page is empty); a ticker the plan does not
  cover is answered 403 ``NOT_AUTHORIZED``. ``/v3/snapshot/indices`` with ``last_updated`` and
  ``timeframe``. Every request needs the bearer key.
* ``timeframe`` is ``REAL-TIME`` or, for a delayed plan, ``DELAYED`` on every value that carries one.

Tests push frames with ``broadcast`` and cut connections with ``drop_all``; ``provider_shapes`` gives
chain results the shapes the spec documents (empty ``greeks``, quotes without ``last_updated``,
``last_trade`` and ``day`` blocks).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve

PAGE_LIMIT = 250
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit for your account."
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def provider_shapes(results: list[dict[str, Any]], now_ns: int, every: int = 7) -> list[dict[str, Any]]:
    """Chain results in the shapes the spec documents, cycling over the contracts: some with empty
    ``greeks`` (deep in the money), some quotes without ``last_updated``, ``last_trade`` (with
    conditions and ``sip_timestamp``) and ``day`` blocks on others."""
    out = []
    for i, r in enumerate(results):
        r = orjson.loads(orjson.dumps(r))
        kind = i % every
        if kind == 1:
            r["greeks"] = {}
        elif kind == 2 and "last_quote" in r:
            r["last_quote"].pop("last_updated", None)
        elif kind == 3:
            q = r.get("last_quote") or {}
            px = q.get("ask") or 1.0
            r["last_trade"] = {"price": px, "size": 2, "exchange": 302, "conditions": [209], "sip_timestamp": now_ns}
            r["day"] = {"volume": 120, "open": px, "close": px, "high": px, "low": px, "last_updated": now_ns}
        out.append(r)
    return out


@dataclass
class FakeProvider:
    api_key: str = "test-key"
    chains: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # provider ticker -> results
    indices: dict[str, float] = field(default_factory=dict)  # "I:SPX" -> value
    max_connections: int = 4  # per market
    auth_timeout_s: float = 10.0
    timeframe: str = "REAL-TIME"  # or DELAYED
    not_authorized: set[str] = field(default_factory=set)  # provider tickers answered 403
    rest_status: list[int] = field(default_factory=list)  # statuses to answer before succeeding (429, 503)
    rest_port: int = field(default_factory=_free_port)
    ws_port: int = field(default_factory=_free_port)
    requests: list[str] = field(default_factory=list)
    subscriptions: list[tuple[str, str]] = field(default_factory=list)  # (market, params)
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (market, subscribe/unsubscribe, params)
    evictions: int = 0
    connections_opened: int = 0
    _authed: dict[ServerConnection, str] = field(default_factory=dict)  # in connection order
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _servers: list[Any] = field(default_factory=list)
    on_subscribe: Callable[[str, str], None] | None = None

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def ws_feed(self) -> str:
        return f"127.0.0.1:{self.ws_port}"

    # --- REST ----------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _error(self, status: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"request_id": f"fake-{time.time_ns()}", **body}, status_code=status)

    async def _chain(self, request: Request) -> Response:
        self.requests.append(str(request.url))
        if not self._authorized(request):
            return self._error(401, {"status": "ERROR", "error": "Unknown API Key"})
        if self.rest_status:
            return self._error(self.rest_status.pop(0), {"status": "ERROR", "error": "try later"})
        ticker = request.path_params["underlying"]
        if ticker in self.not_authorized:
            return self._error(
                403,
                {
                    "status": "NOT_AUTHORIZED",
                    "message": "You are not entitled to this data. Please upgrade your plan at https://massive.com/pricing",
                },
            )
        q = dict(request.query_params)
        if "cursor" in q:  # the filter and the offset travel inside the opaque cursor only
            q = orjson.loads(base64.urlsafe_b64decode(q["cursor"]))
        limit = int(q.get("limit", 10))
        if limit > PAGE_LIMIT:
            return self._error(400, {"status": "ERROR", "error": f"Limit must be less than or equal to {PAGE_LIMIT}"})
        lo, hi = q.get("strike_price.gte"), q.get("strike_price.lte")
        exp_lo, exp_hi = q.get("expiration_date.gte"), q.get("expiration_date.lte")
        sel = [
            r
            for r in self.chains.get(ticker, [])
            if (lo is None or r["details"]["strike_price"] >= float(lo))
            and (hi is None or r["details"]["strike_price"] <= float(hi))
            and (exp_lo is None or r["details"]["expiration_date"] >= exp_lo)
            and (exp_hi is None or r["details"]["expiration_date"] <= exp_hi)
        ]
        start = int(q.get("offset", 0))
        rows = [self._timeframed(r) for r in sel[start : start + limit]]
        page: dict[str, Any] = {"status": "OK", "request_id": f"fake-{start}"}
        if rows:
            page["results"] = rows
        if len(rows) == limit:
            cursor = base64.urlsafe_b64encode(orjson.dumps({**q, "offset": start + limit})).decode()
            page["next_url"] = f"{self.rest_base}/v3/snapshot/options/{ticker}?cursor={cursor}"
        return Response(orjson.dumps(page), media_type="application/json")

    def _timeframed(self, r: dict[str, Any]) -> dict[str, Any]:
        if self.timeframe == "REAL-TIME":
            return r
        r = orjson.loads(orjson.dumps(r))
        for block in ("last_quote", "last_trade", "underlying_asset"):
            if isinstance(r.get(block), dict):
                r[block]["timeframe"] = self.timeframe
        return r

    async def _indices(self, request: Request) -> Response:
        self.requests.append(str(request.url))
        if not self._authorized(request):
            return self._error(401, {"status": "ERROR", "error": "Unknown API Key"})
        wanted = request.query_params.get("ticker.any_of", "").split(",")
        results: list[dict[str, Any]] = []
        for t in wanted:
            if t in self.indices:
                results.append(
                    {
                        "ticker": t,
                        "value": self.indices[t],
                        "type": "indices",
                        "market_status": "open",
                        "last_updated": time.time_ns(),
                        "timeframe": self.timeframe,
                    }
                )
            elif t:
                results.append({"ticker": t, "error": "NOT_FOUND", "message": "Ticker not found."})
        return Response(orjson.dumps({"status": "OK", "results": results}), media_type="application/json")

    # --- WebSocket -----------------------------------------------------------------------

    async def _status(self, conn: ServerConnection, status: str, message: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await conn.send(orjson.dumps([{"ev": "status", "status": status, "message": message}]).decode())

    async def _ws(self, conn: ServerConnection) -> None:
        market = (conn.request.path if conn.request else "/").strip("/")
        self.connections_opened += 1
        await self._status(conn, "connected", "Connected Successfully")
        try:
            auth = orjson.loads(await asyncio.wait_for(conn.recv(), self.auth_timeout_s))
        except TimeoutError:
            await self._status(conn, "auth_timeout", "No authentication request received.")
            await conn.close(1008)
            return
        except websockets.ConnectionClosed:
            return
        if auth.get("action") != "auth" or auth.get("params") != self.api_key:
            await self._status(conn, "auth_failed", "authentication failed")
            await conn.close()
            return
        await self._status(conn, "auth_success", "authenticated")
        self._authed[conn] = market
        mine = [c for c, m in self._authed.items() if m == market]
        for oldest in mine[: max(len(mine) - self.max_connections, 0)]:  # the provider evicts the oldest
            self.evictions += 1
            self._authed.pop(oldest, None)
            await self._status(oldest, "max_connections", MAX_CONNECTIONS_MESSAGE)
            with contextlib.suppress(Exception):
                await oldest.close(1008, "max_connections")
        try:
            async for raw in conn:
                msg = orjson.loads(raw)
                if msg.get("action") in ("subscribe", "unsubscribe"):
                    params = str(msg.get("params", ""))
                    self.subscriptions.append((market, params))
                    self.actions.append((market, msg["action"], params))
                    if self.on_subscribe:
                        self.on_subscribe(market, params)
                    verb = "subscribed to" if msg["action"] == "subscribe" else "unsubscribed to"
                    statuses = [
                        {"ev": "status", "status": "success", "message": f"{verb}: {p}"} for p in params.split(",")
                    ]
                    await conn.send(orjson.dumps(statuses).decode())
        except websockets.ConnectionClosed:
            pass
        finally:
            self._authed.pop(conn, None)

    async def broadcast(self, market: str, frame: Sequence[dict[str, Any]] | bytes) -> int:
        """Send one frame to every authenticated client of ``market`` (options / indices)."""
        data = frame if isinstance(frame, bytes) else orjson.dumps(list(frame))
        n = 0
        for conn, m in list(self._authed.items()):
            if m == market:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await conn.send(data.decode())
                    n += 1
        return n

    async def drop_all(self) -> None:
        """Cut every connection abnormally (as a network failure would)."""
        for conn in list(self._authed):
            with contextlib.suppress(Exception):
                conn.transport.abort()  # no close frame: the client sees ConnectionClosedError
        self._authed.clear()

    def connected(self, market: str | None = None) -> int:
        return sum(1 for m in self._authed.values() if market is None or m == market)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = Starlette(
            routes=[
                Route("/v3/snapshot/options/{underlying}", self._chain),
                Route("/v3/snapshot/indices", self._indices),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.rest_port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None
        self._servers.append(server)
        self._tasks.append(asyncio.create_task(server.serve()))
        ws = await serve(self._ws, "127.0.0.1", self.ws_port)
        self._servers.append(ws)
        while not server.started:  # noqa: ASYNC110 -- uvicorn exposes no event for "listening"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for s in self._servers:
            if isinstance(s, uvicorn.Server):
                s.should_exit = True
            else:
                s.close()
                with contextlib.suppress(Exception):
                    await s.wait_closed()
        for t in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5)
