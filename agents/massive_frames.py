"""Massive (formerly Polygon.io) message shapes to typed events: WebSocket frames and REST snapshots.

WebSocket frames are JSON arrays of events: options ``T`` (trade: sym, p, s, x, c, t ms, q) and ``Q``
(quote: sym, bp, ap, bs, as, t ms, q), index ``V`` (value: T, val, t ms), ``status``, and aggregates
(``A``/``AM``, valid but unused). REST chain snapshots are pages of ``results`` with ``details``,
``last_quote``, ``last_trade``, ``greeks``, ``implied_volatility``, ``open_interest`` and
``underlying_asset`` (``price`` for equities, ``value`` for indices such as ``I:SPX``).
Greeks: provider gamma is taken as per 1.00 of the underlying (the values match Black-Scholes per
point; the spec's "per $0.01" wording does not match its own numbers).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from marketswarm.agents.parsing import DropReason, Parsed, RejectReason, num, req
from marketswarm.schemas.events import ChainContract, ChainSnapshot, ProviderStatus, Quote, Spot, Trade
from marketswarm.schemas.occ import INDEX_PREFIX, OptionSymbol, SymbolError, parse_occ

MS_TO_NS = 1_000_000


@dataclass(frozen=True)
class Limits:
    """Validation bounds for event times, relative to the frame's receive time."""

    max_future_ns: int = 60 * 1_000_000_000
    max_age_ns: int = 18 * 3600 * 1_000_000_000


def loads(data: bytes) -> Any:
    """orjson first; the standard library only for frames orjson refuses, so that a NaN or Infinity
    in one element rejects that element rather than the whole frame."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


class _Skip(Exception):
    pass


def _check_time(out: Parsed, ts_ns: int, rx_ns: int, limits: Limits, el: Any) -> None:
    if ts_ns > rx_ns + limits.max_future_ns:
        out.reject(RejectReason.FUTURE_TIMESTAMP, f"event time {ts_ns} is after receive time {rx_ns}", el)
        raise _Skip
    if ts_ns < rx_ns - limits.max_age_ns:
        out.reject(RejectReason.STALE_TIMESTAMP, f"event time {ts_ns} is before the session of {rx_ns}", el)
        raise _Skip


def parse_ws_frame(
    data: bytes, rx_ns: int, underlying: str, configured: Collection[str], limits: Limits = Limits()
) -> Parsed:
    """One WebSocket text frame to events. One bad element loses only that element."""
    out = Parsed()
    try:
        elements = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        out.reject(RejectReason.MALFORMED_JSON, str(exc), data)
        return out
    if isinstance(elements, dict):
        elements = [elements]
    if not isinstance(elements, list):
        out.reject(RejectReason.MALFORMED_FRAME, f"frame is a {type(elements).__name__}, not a list", data)
        return out
    for el in elements:
        try:
            _ws_element(out, el, rx_ns, underlying, configured, limits)
        except _Skip:
            pass
        except (KeyError, TypeError, AttributeError) as exc:
            out.reject(RejectReason.MALFORMED_ELEMENT, f"missing or mistyped field: {exc}", el)
        except (ValueError, OverflowError) as exc:
            text = str(exc)
            nonfinite = "non-finite" in text or "NaN" in text or "infinity" in text.lower()
            out.reject(RejectReason.NON_FINITE if nonfinite else RejectReason.MALFORMED_ELEMENT, text, el)
    return out


def _ours(out: Parsed, u: str, underlying: str, configured: Collection[str], el: Any) -> None:
    """Skip an element of another underlying: misrouted if configured, else dropped at the edge."""
    if u == underlying:
        return
    if u in configured:
        out.reject(RejectReason.MISROUTED, f"{u} element on the {underlying} stream", el)
    else:
        out.drop(DropReason.UNCONFIGURED_UNDERLYING)
    raise _Skip


def _route(out: Parsed, sym: Any, underlying: str, configured: Collection[str], el: Any) -> OptionSymbol:
    try:
        osym = parse_occ(sym)
    except SymbolError as exc:
        out.reject(RejectReason.BAD_SYMBOL, str(exc), el)
        raise _Skip from None
    _ours(out, osym.underlying, underlying, configured, el)
    return osym


def _ws_element(out: Parsed, el: Any, rx_ns: int, underlying: str, configured: Collection[str], limits: Limits) -> None:
    if not isinstance(el, dict):
        out.reject(RejectReason.MALFORMED_ELEMENT, f"element is a {type(el).__name__}, not an object", el)
        return
    ev = el.get("ev")
    if ev == "Q":
        sym = _route(out, el["sym"], underlying, configured, el).occ
        bid, ask = req(el["bp"]), req(el["ap"])
        bs, asz = int(el.get("bs", 0)), int(el.get("as", 0))
        ts_ns = int(el["t"]) * MS_TO_NS
        if bid < 0 or ask < 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"bid {bid} ask {ask}", el)
            return
        if bs < 0 or asz < 0:
            out.reject(RejectReason.BAD_SIZE, f"bid size {bs} ask size {asz}", el)
            return
        if ask > 0 and bid > ask:
            out.reject(RejectReason.CROSSED_QUOTE, f"bid {bid} > ask {ask}", el)
            return
        _check_time(out, ts_ns, rx_ns, limits, el)
        out.events.append(
            Quote(
                symbol=sym,
                underlying=underlying,
                bid=bid,
                ask=ask,
                bid_size=bs,
                ask_size=asz,
                ts_ns=ts_ns,
                seq=int(el.get("q", 0)),
            )  # fmt: skip
        )
    elif ev == "T":
        sym = _route(out, el["sym"], underlying, configured, el).occ
        px = req(el["p"])
        size = el["s"]
        ts_ns = int(el["t"]) * MS_TO_NS
        if px <= 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"trade price {px}", el)
            return
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            out.reject(RejectReason.BAD_SIZE, f"trade size {size!r}", el)
            return
        _check_time(out, ts_ns, rx_ns, limits, el)
        out.events.append(
            Trade(
                symbol=sym,
                underlying=underlying,
                px=px,
                size=size,
                ts_ns=ts_ns,
                seq=int(el.get("q", 0)),
                exchange=int(el.get("x", 0)),
                conditions=tuple(int(c) for c in el.get("c") or ()),
            )  # fmt: skip
        )
    elif ev == "V":
        ticker = str(el["T"])
        _ours(out, ticker.removeprefix(INDEX_PREFIX), underlying, configured, el)
        value = req(el["val"])
        ts_ns = int(el["t"]) * MS_TO_NS
        if value <= 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"index value {value}", el)
            return
        _check_time(out, ts_ns, rx_ns, limits, el)
        out.events.append(Spot(underlying=underlying, value=value, ts_ns=ts_ns))
    elif ev == "status":
        out.events.append(ProviderStatus(status=str(el["status"]), message=str(el.get("message", "")), ts_ns=rx_ns))
    elif ev in ("A", "AM"):
        out.drop(DropReason.UNUSED_EVENT)
    else:
        out.reject(RejectReason.UNKNOWN_EVENT, f"unknown event type {ev!r}", el)


# --- REST -----------------------------------------------------------------------------------


def parse_rest_chain(data: bytes, rx_ns: int, underlying: str, configured: Collection[str]) -> Parsed:
    """A chain poll: a JSON array of the REST pages' bodies (each ``{"results": [...]}``), in page
    order, to one ChainSnapshot. The snapshot's event time is the poll's receive time; each contract
    keeps its own quote and trade times."""
    out = Parsed()
    try:
        pages = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        out.reject(RejectReason.MALFORMED_JSON, str(exc), data)
        return out
    if isinstance(pages, dict):
        pages = [pages]
    if not isinstance(pages, list) or not all(isinstance(p, dict) and "results" in p for p in pages):
        out.reject(RejectReason.MALFORMED_FRAME, "a chain poll is a list of pages with 'results'", data)
        return out
    contracts: dict[str, ChainContract] = {}
    spot: float | None = None
    for page in pages:
        results = page["results"]
        if not isinstance(results, list):
            out.reject(RejectReason.MALFORMED_FRAME, "'results' is not a list", page)
            continue
        for el in results:
            try:
                c, s = _chain_element(out, el, underlying, configured)
            except _Skip:
                continue
            except (KeyError, TypeError, AttributeError) as exc:
                out.reject(RejectReason.MALFORMED_ELEMENT, f"missing or mistyped field: {exc}", el)
                continue
            contracts[c.symbol] = c  # a contract repeated across pages keeps its last record
            if s is not None:
                spot = s
    if contracts:
        out.events.append(
            ChainSnapshot(
                underlying=underlying,
                ts_ns=rx_ns,
                spot=spot,
                source="massive.rest",
                contracts=tuple(sorted(contracts.values(), key=lambda c: c.symbol)),
            )  # fmt: skip
        )
    return out


def _opt_num(out: Parsed, el: Any, name: str, value: Any) -> float | None:
    try:
        return num(value)
    except (ValueError, TypeError) as exc:
        out.reject(RejectReason.NON_FINITE, f"{name}: {exc}", el)
        return None


def _chain_element(
    out: Parsed, el: Any, underlying: str, configured: Collection[str]
) -> tuple[ChainContract, float | None]:
    if not isinstance(el, dict):
        out.reject(RejectReason.MALFORMED_ELEMENT, "chain result is not an object", el)
        raise _Skip
    details = el["details"]
    osym = _route(out, details["ticker"], underlying, configured, el)
    q = el.get("last_quote") or {}
    t = el.get("last_trade") or {}
    g = el.get("greeks") or {}
    bid = _opt_num(out, el, "bid", q.get("bid"))
    ask = _opt_num(out, el, "ask", q.get("ask"))
    if (bid is not None and bid < 0) or (ask is not None and ask < 0):
        out.reject(RejectReason.NEGATIVE_PRICE, f"bid {bid} ask {ask}", el)
        bid = ask = None
    if bid is not None and ask is not None and ask > 0 and bid > ask:
        out.reject(RejectReason.CROSSED_QUOTE, f"bid {bid} > ask {ask}", el)
        bid = ask = None
    iv = _opt_num(out, el, "implied_volatility", el.get("implied_volatility"))
    oi = el.get("open_interest")
    day = el.get("day") or {}
    ua = el.get("underlying_asset") or {}
    spot = _opt_num(out, el, "underlying", ua.get("value", ua.get("price")))
    last = _opt_num(out, el, "last_trade.price", t.get("price"))
    contract = ChainContract(
        symbol=osym.occ,
        underlying=osym.underlying,
        root=osym.root,
        expiry=osym.expiry.isoformat(),
        side=osym.side,
        strike_x1000=osym.strike_x1000,
        bid=bid,
        ask=ask,
        last=last if last is not None and last > 0 else None,
        iv=iv if iv is not None and iv > 0 else None,
        delta=_opt_num(out, el, "delta", g.get("delta")),
        gamma=_opt_num(out, el, "gamma", g.get("gamma")),
        oi=int(oi) if isinstance(oi, int | float) and oi >= 0 else None,
        volume=int(day["volume"]) if isinstance(day.get("volume"), int | float) else None,
        quote_ts_ns=int(q["last_updated"]) if isinstance(q.get("last_updated"), int) else None,
        trade_ts_ns=int(t["sip_timestamp"]) if isinstance(t.get("sip_timestamp"), int) else None,
    )
    return contract, spot if spot is not None and spot > 0 else None


def parse_rest_indices(data: bytes, rx_ns: int, underlying: str) -> Parsed:
    """The indices snapshot (``/v3/snapshot/indices``) to Spot events; NOT_FOUND items are dropped."""
    out = Parsed()
    try:
        body = loads(data)
        results = body["results"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        out.reject(RejectReason.MALFORMED_JSON, f"indices snapshot: {exc}", data)
        return out
    for el in results:
        if not isinstance(el, dict):
            out.reject(RejectReason.MALFORMED_ELEMENT, "not an object", el)
            continue
        if "error" in el:
            out.drop(DropReason.PROVIDER_ERROR_ITEM)
            continue
        ticker = str(el.get("ticker", ""))
        u = ticker[len(INDEX_PREFIX) :] if ticker.startswith(INDEX_PREFIX) else ticker
        if u != underlying:
            out.drop(DropReason.UNCONFIGURED_UNDERLYING)
            continue
        try:
            value = num(el.get("value"))
        except (ValueError, TypeError) as exc:
            out.reject(RejectReason.NON_FINITE, str(exc), el)
            continue
        if value is None or value <= 0:
            out.reject(RejectReason.MALFORMED_ELEMENT, "index without a positive value", el)
            continue
        out.events.append(Spot(underlying=underlying, value=value, ts_ns=rx_ns))
    return out
