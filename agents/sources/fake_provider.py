"""A loopback fake of the Massive provider: REST chain snapshots and the WebSocket protocol.

It speaks the real handshake (``connected`` on open, ``auth`` answered ``auth_success`` or
``auth_failed``, ``subscribe`` answered ``success`` per channel, ``max_connections`` past the limit)
so tests drive the official ``massive`` client code end to end. REST: ``/v3/snapshot/options/{u}``
paginated with ``next_url`` and a cursor, ``/v3/snapshot/indices``; every request needs the bearer
key. Tests push frames with ``broadcast`` and cut connections with ``drop_all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeProvider:
    api_key: str = "test-key"
    chains: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # provider ticker -> results
    indices: dict[str, float] = field(default_factory=dict)  # "I:SPX" -> value
    max_connections: int = 4
    rest_status: list[int] = field(default_factory=list)  # statuses to answer before succeeding (429, 503)
    rest_port: int = field(default_factory=_free_port)
    ws_port: int = field(default_factory=_free_port)
    requests: list[str] = field(default_factory=list)
    subscriptions: list[tuple[str, str]] = field(default_factory=list)  # (market, params)
    _clients: set[ServerConnection] = field(default_factory=set)
    _authed: dict[ServerConnection, str] = field(default_factory=dict)
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

    async def _chain(self, request: Request) -> Response:
        self.requests.append(str(request.url))
        if not self._authorized(request):
            return JSONResponse({"status": "ERROR", "error": "Unknown API Key"}, status_code=401)
        if self.rest_status:
            return JSONResponse({"status": "ERROR", "error": "try later"}, status_code=self.rest_status.pop(0))
        ticker = request.path_params["underlying"]
        results = self.chains.get(ticker, [])
        q = request.query_params
        lo, hi = q.get("strike_price.gte"), q.get("strike_price.lte")
        exp_hi = q.get("expiration_date.lte")
        sel = [
            r
            for r in results
            if (lo is None or r["details"]["strike_price"] >= float(lo))
            and (hi is None or r["details"]["strike_price"] <= float(hi))
            and (exp_hi is None or r["details"]["expiration_date"] <= exp_hi)
        ]
        start = int(q.get("cursor", "0"))
        limit = min(int(q.get("limit", PAGE_LIMIT)), PAGE_LIMIT)
        page: dict[str, Any] = {"status": "OK", "request_id": f"fake-{start}", "results": sel[start : start + limit]}
        if start + limit < len(sel):
            rest = "&".join(f"{k}={v}" for k, v in q.items() if k != "cursor")
            page["next_url"] = f"{self.rest_base}/v3/snapshot/options/{ticker}?cursor={start + limit}&{rest}"
        return Response(orjson.dumps(page), media_type="application/json")

    async def _indices(self, request: Request) -> Response:
        self.requests.append(str(request.url))
        if not self._authorized(request):
            return JSONResponse({"status": "ERROR", "error": "Unknown API Key"}, status_code=401)
        wanted = request.query_params.get("ticker.any_of", "").split(",")
        results = []
        for t in wanted:
            if t in self.indices:
                results.append({"ticker": t, "value": self.indices[t], "type": "indices", "market_status": "open"})
            elif t:
                results.append({"ticker": t, "error": "NOT_FOUND", "message": "Ticker not found."})
        return Response(orjson.dumps({"status": "OK", "results": results}), media_type="application/json")

    # --- WebSocket -----------------------------------------------------------------------

    async def _ws(self, conn: ServerConnection) -> None:
        market = (conn.request.path if conn.request else "/").strip("/")
        await conn.send(
            orjson.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]).decode()
        )
        try:
            auth = orjson.loads(await asyncio.wait_for(conn.recv(), 10))
        except (TimeoutError, websockets.ConnectionClosed):
            return
        if auth.get("action") != "auth" or auth.get("params") != self.api_key:
            await conn.send(
                orjson.dumps([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]).decode()
            )
            await conn.close()
            return
        if len(self._authed) >= self.max_connections:
            await conn.send(
                orjson.dumps(
                    [
                        {
                            "ev": "status",
                            "status": "max_connections",
                            "message": "Maximum number of connections exceeded.",
                        }
                    ]
                ).decode()
            )
            await conn.close(1008)
            return
        await conn.send(orjson.dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}]).decode())
        self._authed[conn] = market
        try:
            async for raw in conn:
                msg = orjson.loads(raw)
                if msg.get("action") in ("subscribe", "unsubscribe"):
                    params = str(msg.get("params", ""))
                    self.subscriptions.append((market, params))
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
