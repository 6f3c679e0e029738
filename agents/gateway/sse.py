"""Server-Sent Events for the gateway: preformatted events, shared compression, prompt disconnects.

Every event is formatted once and shared by every client that gets it (the hub renders a diff once,
the model cache a snapshot once per version). A client that accepts gzip gets the same events
compressed: each event is deflated once, independently of the others, into a run of non-final
deflate blocks ending on a byte boundary (a sync flush), so one compressed copy of an event serves
every client, concatenated behind each client's own gzip header; the client's trailer (CRC-32 and
length of what it was sent) closes its stream. Nothing is buffered: a browser's EventSource sees
each event as soon as it is sent.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PING_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name or time, unknown OS
DEFLATE_LEVEL = 6
OFFLOAD_BYTES = 16 * 1024  # events at least this large are compressed off the event loop
SLICE_BYTES = 256 * 1024  # a large REST body goes out in slices of this size
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@dataclass
class Segment:
    """One or more SSE events, as sent; ``deflated`` is computed once, on first use."""

    raw: bytes
    _deflated: bytes | None = field(default=None, repr=False)

    @property
    def deflated(self) -> bytes:
        if self._deflated is None:
            c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
            self._deflated = c.compress(self.raw) + c.flush(zlib.Z_SYNC_FLUSH)
        return self._deflated


def sse_event(event: str, version: int | str | None, data: bytes, *, feed: str | None = None) -> bytes:
    """One SSE event, preformatted: the JSON goes out as stored, without a str round trip. With
    ``version``, an ``id:`` line; with ``feed``, a first ``data:`` line naming it (a tab's feeds)."""
    out = b"event: " + event.encode()
    if version is not None:
        out += b"\r\nid: " + str(version).encode()
    if feed is not None:
        out += b"\r\ndata: " + feed.encode()
    return out + b"\r\ndata: " + data + b"\r\n\r\n"


PING = Segment(b": ping\r\n\r\n")


def accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0")
    return False


class SseResponse(Response):
    """A stream of ``Segment``s as ``text/event-stream``, gzip'd when the client accepts it, with
    pings while idle; it stops as soon as the client disconnects."""

    media_type = "text/event-stream"

    def __init__(
        self, segments: AsyncIterator[Segment], gzip: bool, on_close: Callable[[], None] | None = None
    ) -> None:
        self.segments = segments
        self.gzip = gzip
        self.on_close = on_close  # called once when the stream ends, however it ends
        headers = dict(HEADERS)
        if gzip:
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        self.status_code = 200
        self.background = None
        self.init_headers(headers)  # no body: no Content-Length, the stream ends when it ends

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        crc, size = 0, 0
        if self.gzip:
            await send({"type": "http.response.body", "body": GZIP_HEADER, "more_body": True})
        pending: asyncio.Future[Segment] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(self.segments))
                done, _ = await asyncio.wait([pending], timeout=PING_S)
                if pending in done:
                    try:
                        seg = pending.result()
                    except StopAsyncIteration:
                        pending = None
                        break
                    pending = None
                else:
                    seg = PING
                if self.gzip:
                    if seg._deflated is None and len(seg.raw) >= OFFLOAD_BYTES:
                        # A large event (a snapshot, a derived model's whole document): compressed in
                        # a worker thread (zlib releases the GIL), never on the loop every client shares.
                        await asyncio.to_thread(getattr, seg, "deflated")
                    crc, size = zlib.crc32(seg.raw, crc), size + len(seg.raw)
                await send(
                    {"type": "http.response.body", "body": seg.deflated if self.gzip else seg.raw, "more_body": True}
                )
        finally:
            if pending is not None:
                # Cancelled (a disconnect): the generator unwinds (and unsubscribes) as its task ends.
                pending.cancel()
                pending.add_done_callback(_retrieve)
        end = b""
        if self.gzip:  # the last (empty) block, then the gzip trailer: CRC-32 and length of what was sent
            end = b"\x03\x00" + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
        await send({"type": "http.response.body", "body": end, "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            stream = asyncio.ensure_future(self._stream(send))
            watch = asyncio.ensure_future(disconnected())
            try:
                await asyncio.wait([stream, watch], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stream, watch):
                    task.cancel()
                for result in await asyncio.gather(stream, watch, return_exceptions=True):
                    if isinstance(result, Exception) and not isinstance(result, OSError):
                        raise result
        finally:
            if self.on_close is not None:
                self.on_close()
                self.on_close = None


class LargeJson(Response):
    """A large JSON body (a whole grid is 3 MB) sent in slices of ``SLICE_BYTES``, each written when
    the transport has room: the event loop serves the live feeds between slices, and the transport
    never buffers the whole body (its buffer is moved on every partial send)."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, len(body), SLICE_BYTES):
            end = start + SLICE_BYTES
            await send({"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < len(body)})
        if not body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _retrieve(task: asyncio.Future[Segment]) -> None:
    """Collect an abandoned read's outcome so it is never reported as unretrieved."""
    if not task.cancelled():
        task.exception()
