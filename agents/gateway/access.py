"""Who may use the gateway: the bearer token (header or sign-in cookie), the sign-in page and its rate
limit, the dashboard's pages with their Content-Security-Policy, and the refusal to listen beyond
loopback without a token.

The token comes as ``Authorization: Bearer ...`` or the ``ms_token`` cookie set by ``POST /auth``
(HttpOnly, SameSite=Strict, Secure over TLS, expiring), never in a query string, and guards
everything but health, metrics and the sign-in itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from marketswarm.agents.gateway.state import gateway_of
from marketswarm.topology.settings import Settings

TOKEN_COOKIE = "ms_token"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/auth", "/login")
COOKIE_MAX_AGE_S = 12 * 3600  # a sign-in lasts a trading day
AUTH_ATTEMPTS = 10  # sign-in attempts per address per AUTH_WINDOW_S; beyond, a 429
AUTH_WINDOW_S = 60.0
# The dashboard's pages: scripts only from this origin (no inline script, no eval); inline style
# attributes are allowed (the charts and gauges position elements with them).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")

router = APIRouter()


class ExposedWithoutTokenError(RuntimeError):
    """Raised by ``check_exposure`` when the gateway would listen beyond loopback without a token and
    nobody said ``--no-auth``."""


def check_exposure(settings: Settings) -> None:
    """Refuse a gateway that anyone on the network could read without a token, unless asked for."""
    host = settings.gateway_host
    if settings.api_token is None and not settings.gateway_no_auth and host not in LOOPBACK:
        raise ExposedWithoutTokenError(
            f"the gateway would listen on {host} without a token: set MARKETSWARM_API_TOKEN, bind "
            "MARKETSWARM_GATEWAY_HOST=127.0.0.1, or say --no-auth (MARKETSWARM_GATEWAY_NO_AUTH=1) behind "
            "an authenticating proxy"
        )


def static_files() -> Any:
    """The dashboard's files (``static/``), wherever the package is installed."""
    return resources.files("marketswarm.agents.gateway").joinpath("static")


def page(name: str) -> HTMLResponse:
    """One of the dashboard's pages, with its Content-Security-Policy (set here, on the pages, rather
    than by a middleware every SSE event would pass through)."""
    return HTMLResponse(static_files().joinpath(name).read_text(), headers=PAGE_HEADERS)


async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """The token check, as an HTTP middleware: the dashboard's pages redirect to the sign-in, the API
    answers 401."""
    token = gateway_of(request).token
    if token is None or request.url.path.startswith(OPEN_PATHS):
        return await call_next(request)
    given = request.cookies.get(TOKEN_COOKIE, "")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    if hmac.compare_digest(given.encode(), token.encode()):
        return await call_next(request)
    if request.url.path == "/" or request.url.path.startswith("/static"):
        return RedirectResponse("/login", status_code=303)
    return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)


@router.get("/login", response_class=HTMLResponse)
async def login() -> HTMLResponse:
    return page("login.html")


@router.post("/auth")
async def sign_in(request: Request, token_field: str = Form(alias="token")) -> Response:
    gw = gateway_of(request)
    wait_s = gw.sign_ins.allow(request.client.host if request.client else "unknown")
    if wait_s is not None:
        gw.metrics.sse_refused.labels("sign-in").inc()
        raise HTTPException(429, "too many sign-in attempts; wait", {"Retry-After": str(max(1, round(wait_s)))})
    if gw.token is None or not hmac.compare_digest(token_field.encode(), gw.token.encode()):
        return RedirectResponse("/login?failed=1", status_code=303)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        TOKEN_COOKIE,
        token_field,
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # behind TLS (uvicorn reads X-Forwarded-Proto from its proxy)
    )
    return resp


@router.get("/", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return page("index.html")
