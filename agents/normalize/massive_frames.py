"""Massive (formerly Polygon.io) message shapes to typed events: WebSocket frames and REST snapshots.

WebSocket frames are JSON arrays of events: options ``T`` (trade: sym, p, s, x, c, t ms, q) and ``Q``
(quote: sym, bp, ap, bs, as, t ms, q), index ``V`` (value: T, val, t ms), ``status``, and aggregates
(``A``/``AM``, valid but unused). REST chain snapshots are pages of ``results`` with ``details``,
``last_quote``, ``last_trade``, ``greeks``, ``implied_volatility``, ``open_interest`` and
``underlying_asset`` (``price`` for equities, ``value`` for indices such as ``I:SPX``).
Greeks: provider gamma is taken as per 1.00 of the underlying (the values match Black-Scholes per
point; the spec's "per $0.01" wording does not match its own numbers).

Provider time: every value keeps the time the provider gave it (``underlying_asset.last_updated``,
``last_quote.last_updated``, ``last_trade.sip_timestamp``, the indices' ``last_updated``); a value
without one is marked ``rx_time`` and stamped with the receive time, and never beats a timed value
(agents/hydrate/hydrator.py). A REST time beyond ``max_future_ns`` of the receive time rejects that value only.
``timeframe: DELAYED`` is carried as ``delayed``. A chain page without ``results`` is an empty page
(the provider omits the key when a page is empty): it is counted, and the poll keeps its other pages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from marketswarm.agents.normalize.parsing import (
    MAX_GREEK,
    MAX_IV,
    MAX_PRICE,
    MAX_SEQ,
    NonFiniteError,
    Parsed,
    RangeError,
    bounded,
    count,
    num,
    req,
)
from marketswarm.schemas.events import ChainContract, ChainSnapshot, ProviderStatus, Quote, Spot, Trade, VolIndex
from marketswarm.schemas.occ import (
    INDEX_PREFIX,
    VOL_INDEX,
    VOL_INDEX_TICKER,
    OptionSymbol,
    SymbolError,
    parse_provider_option,
)
from marketswarm.schemas.rejects import DropReason, RejectReason, excerpt, text

MS_TO_NS = 1_000_000
MAX_CODE = 1_000_000  # exchange ids and trade condition codes are small integers
STANDARD_SHARES = 100  # deliverable shares of a standard equity or index option contract


@dataclass(frozen=True)
class Limits:
    """Validation bounds for event times, relative to the frame's receive time."""

    max_future_ns: int = 2 * 1_000_000_000
    max_age_ns: int = 18 * 3600 * 1_000_000_000


def loads(data: bytes) -> Any:
    """orjson first; the standard library only for frames orjson refuses, so that a NaN or Infinity
    in one element rejects that element rather than the whole frame."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _ms_to_ns(x: Any) -> int:
    """An event time in ms, an integer as the provider sends it, in ns; NaN or Infinity is
    NonFiniteError, any other type (a string, a fraction) TypeError."""
    if isinstance(x, float) and not math.isfinite(x):
        raise NonFiniteError(f"event time: non-finite number {x!r}")
    if isinstance(x, float) and x.is_integer() and abs(x) > MAX_SEQ:
        raise RangeError(f"event time {x!r} beyond any clock")  # an integer too long for int64, parsed as a float
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"event time must be an integer of milliseconds, not {type(x).__name__} {excerpt(x)[:40]}")
    return x * MS_TO_NS


def _in_time(out: Parsed, ts_ns: int, rx_ns: int, limits: Limits, el: Any) -> bool:
    """The event time is within bounds of the receive time; else the element is rejected."""
    if ts_ns > rx_ns + limits.max_future_ns:
        out.reject(RejectReason.FUTURE_TIMESTAMP, f"event time {ts_ns} is after receive time {rx_ns}", el)
        return False
    if ts_ns < rx_ns - limits.max_age_ns:
        out.reject(RejectReason.STALE_TIMESTAMP, f"event time {ts_ns} is before the session of {rx_ns}", el)
        return False
    return True


def parse_ws_frame(
    data: bytes,
    rx_ns: int,
    underlying: str,
    configured: Collection[str],
    limits: Limits = Limits(),
    delayed: bool = False,
) -> Parsed:
    """One WebSocket text frame to events (``delayed``: it came from the provider's delayed feed).
    One bad element loses only that element."""
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
            _ws_element(out, el, rx_ns, underlying, configured, limits, delayed)
        except (KeyError, TypeError, AttributeError) as exc:
            out.reject(RejectReason.MALFORMED_ELEMENT, f"missing or mistyped field: {exc}", el)
        except RangeError as exc:
            out.reject(RejectReason.OUT_OF_RANGE, str(exc), el)
        except (NonFiniteError, OverflowError) as exc:  # NaN, Infinity, or a float too large for an int
            out.reject(RejectReason.NON_FINITE, str(exc), el)
        except ValueError as exc:
            out.reject(RejectReason.MALFORMED_ELEMENT, str(exc), el)
    return out


def _ours(out: Parsed, u: str, underlying: str, configured: Collection[str], el: Any) -> bool:
    """The element is of this stream's underlying; else it is left out: misrouted if configured,
    dropped at the edge if not."""
    if u == underlying:
        return True
    if u in configured:
        out.reject(RejectReason.MISROUTED, f"{u} element on the {underlying} stream", el)
    else:
        out.drop(DropReason.UNCONFIGURED_UNDERLYING)
    return False


def _route(out: Parsed, sym: Any, underlying: str, configured: Collection[str], el: Any) -> OptionSymbol | None:
    """The element's contract if it is one of this stream's; None if it is left out (a bad symbol
    is rejected)."""
    try:
        osym = parse_provider_option(sym)
    except SymbolError as exc:
        out.reject(RejectReason.BAD_SYMBOL, str(exc), el)
        return None
    return osym if _ours(out, osym.underlying, underlying, configured, el) else None


def _ws_element(
    out: Parsed, el: Any, rx_ns: int, underlying: str, configured: Collection[str], limits: Limits, delayed: bool
) -> None:
    if not isinstance(el, dict):
        out.reject(RejectReason.MALFORMED_ELEMENT, f"element is a {type(el).__name__}, not an object", el)
        return
    ev = el.get("ev")
    if ev == "Q":
        osym = _route(out, el["sym"], underlying, configured, el)
        if osym is None:
            return
        bid, ask = req(el["bp"]), req(el["ap"])
        bs, asz = int(el.get("bs", 0)), int(el.get("as", 0))
        ts_ns = _ms_to_ns(el["t"])
        if bid < 0 or ask < 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"bid {bid} ask {ask}", el)
            return
        if bs < 0 or asz < 0:
            out.reject(RejectReason.BAD_SIZE, f"bid size {bs} ask size {asz}", el)
            return
        bounded(bid, "bid", 0, MAX_PRICE)
        bounded(ask, "ask", 0, MAX_PRICE)
        count(bs, "bid size")
        count(asz, "ask size")
        seq = count(el.get("q", 0), "sequence", MAX_SEQ)
        if ask > 0 and bid > ask:
            out.reject(RejectReason.CROSSED_QUOTE, f"bid {bid} > ask {ask}", el)
            return
        if not _in_time(out, ts_ns, rx_ns, limits, el):
            return
        out.events.append(
            Quote(
                symbol=osym.occ,
                underlying=underlying,
                bid=bid,
                ask=ask,
                bid_size=bs,
                ask_size=asz,
                ts_ns=ts_ns,
                seq=seq,
            )  # fmt: skip
        )
    elif ev == "T":
        tsym = _route(out, el["sym"], underlying, configured, el)
        if tsym is None:
            return
        px = req(el["p"])
        size = el["s"]
        ts_ns = _ms_to_ns(el["t"])
        if px <= 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"trade price {px}", el)
            return
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            out.reject(RejectReason.BAD_SIZE, f"trade size {size!r}", el)
            return
        bounded(px, "trade price", 0, MAX_PRICE)
        count(size, "trade size")
        seq, exchange = count(el.get("q", 0), "sequence", MAX_SEQ), count(el.get("x", 0), "exchange", MAX_CODE)
        conditions = tuple(count(c, "condition", MAX_CODE) for c in el.get("c") or ())
        if not _in_time(out, ts_ns, rx_ns, limits, el):
            return
        out.events.append(
            Trade(
                symbol=tsym.occ,
                underlying=underlying,
                px=px,
                size=size,
                ts_ns=ts_ns,
                seq=seq,
                exchange=exchange,
                conditions=conditions,
            )  # fmt: skip
        )
    elif ev == "V":
        ticker = el["T"]
        if not isinstance(ticker, str) or not ticker.startswith(INDEX_PREFIX):
            out.reject(RejectReason.BAD_SYMBOL, f"index ticker {excerpt(ticker)[:40]}: not {INDEX_PREFIX}<index>", el)
            return
        vol = ticker == VOL_INDEX_TICKER  # every underlying's input: each stream has its copy
        if not vol and not _ours(out, ticker.removeprefix(INDEX_PREFIX), underlying, configured, el):
            return
        value = req(el["val"])
        ts_ns = _ms_to_ns(el["t"])
        if value <= 0:
            out.reject(RejectReason.NEGATIVE_PRICE, f"index value {value}", el)
            return
        bounded(value, "index value", 0, MAX_PRICE)
        if not _in_time(out, ts_ns, rx_ns, limits, el):
            return
        if vol:
            out.events.append(VolIndex(name=VOL_INDEX, value=value, ts_ns=ts_ns, delayed=delayed))
        else:
            out.events.append(Spot(underlying=underlying, value=value, ts_ns=ts_ns, delayed=delayed))
    elif ev == "status":
        status, message = text(str(el["status"]), 100), text(str(el.get("message", "")))
        out.events.append(ProviderStatus(status=status, message=message, ts_ns=rx_ns))
    elif ev in ("A", "AM"):
        out.drop(DropReason.UNUSED_EVENT)
    else:
        out.reject(RejectReason.UNKNOWN_EVENT, f"unknown event type {ev!r}", el)


# --- REST -----------------------------------------------------------------------------------


def parse_rest_chain(
    data: bytes, rx_ns: int, underlying: str, configured: Collection[str], limits: Limits = Limits()
) -> Parsed:
    """A chain poll: a JSON array of the REST pages' bodies (each ``{"results": [...]}``), in page
    order, to one ChainSnapshot. The snapshot's time is the poll's receive time (the time of its
    analytics: IV, greeks, open interest); each contract keeps its own quote and trade times, and the
    spot its own. One bad page or element loses only itself."""
    out = Parsed()
    try:
        pages = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        out.reject(RejectReason.MALFORMED_JSON, str(exc), data)
        return out
    if isinstance(pages, dict):
        pages = [pages]
    if not isinstance(pages, list):
        out.reject(RejectReason.MALFORMED_FRAME, "a chain poll is a list of pages", data)
        return out
    contracts: dict[str, ChainContract] = {}
    spot: _Timed | None = None
    delayed = False
    for page in pages:
        if not isinstance(page, dict):
            out.reject(RejectReason.MALFORMED_FRAME, f"a chain page is a {type(page).__name__}, not an object", page)
            continue
        results = page.get("results")
        if results is None:
            out.drop(DropReason.EMPTY_PAGE)
            continue
        if not isinstance(results, list):
            out.reject(RejectReason.MALFORMED_FRAME, "'results' is not a list", page)
            continue
        for el in results:
            try:
                parsed = _chain_element(out, el, rx_ns, underlying, configured, limits)
            except (KeyError, TypeError, AttributeError) as exc:
                out.reject(RejectReason.MALFORMED_ELEMENT, f"missing or mistyped field: {exc}", el)
                continue
            except RangeError as exc:
                out.reject(RejectReason.OUT_OF_RANGE, str(exc), el)
                continue
            if parsed is None:
                continue  # left out, with its reason
            c, s, d = parsed
            contracts[c.symbol] = c  # a contract repeated across pages keeps its last record
            delayed |= d
            if s is not None and (spot is None or s.order() >= spot.order()):
                spot = s
    if contracts:
        out.events.append(
            ChainSnapshot(
                underlying=underlying,
                ts_ns=rx_ns,
                spot=spot.value if spot else None,
                spot_ts_ns=None if spot is None or spot.ts_ns is None else spot.ts_ns,
                spot_delayed=bool(spot and spot.delayed),
                delayed=delayed,
                source="massive.rest",
                contracts=tuple(sorted(contracts.values(), key=lambda c: c.symbol)),
            )  # fmt: skip
        )
    return out


@dataclass(frozen=True)
class _Timed:
    """A value with the provider's time (None: it gave none) and its timeframe."""

    value: float
    ts_ns: int | None
    delayed: bool

    def order(self) -> tuple[bool, int]:
        return (self.ts_ns is not None, self.ts_ns or 0)


def _opt_num(
    out: Parsed, el: Any, name: str, value: Any, lo: float = -MAX_PRICE, hi: float = MAX_PRICE
) -> float | None:
    """An optional number of a chain result; a bad one is rejected (counted) and left out."""
    try:
        return bounded(num(value), name, lo, hi)
    except RangeError as exc:
        out.reject(RejectReason.OUT_OF_RANGE, str(exc), el)
    except (ValueError, TypeError) as exc:
        out.reject(RejectReason.NON_FINITE, f"{name}: {exc}", el)
    return None


def _opt_count(out: Parsed, el: Any, name: str, value: Any) -> int | None:
    """An optional count (open interest, day volume, shares); None when absent or bad (a bad one
    is rejected and counted)."""
    if value is None:
        return None
    try:
        return count(value, name)
    except RangeError as exc:
        out.reject(RejectReason.OUT_OF_RANGE, str(exc), el)
    except NonFiniteError as exc:
        out.reject(RejectReason.NON_FINITE, str(exc), el)
    except TypeError as exc:
        out.reject(RejectReason.MALFORMED_ELEMENT, str(exc), el)
    return None


def _provider_ns(out: Parsed, el: Any, name: str, value: Any, rx_ns: int, limits: Limits) -> tuple[bool, int | None]:
    """(usable, the provider's time in ns or None: absent, or 0). A time of another type than an
    integer, or too far after receipt, rejects the value it dates."""
    if value is None or value == 0:
        return True, None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        detail = f"{name} must be a positive integer of ns, not {excerpt(value)[:40]}"
        out.reject(RejectReason.MALFORMED_ELEMENT, detail, el)
        return False, None
    if value > rx_ns + limits.max_future_ns:
        out.reject(RejectReason.FUTURE_TIMESTAMP, f"{name} {value} is after receive time {rx_ns}", el)
        return False, None
    return True, value


def _delayed(block: Mapping[str, Any]) -> bool:
    return block.get("timeframe") == "DELAYED"


def _chain_element(
    out: Parsed, el: Any, rx_ns: int, underlying: str, configured: Collection[str], limits: Limits
) -> tuple[ChainContract, _Timed | None, bool] | None:
    if not isinstance(el, dict):
        out.reject(RejectReason.MALFORMED_ELEMENT, "chain result is not an object", el)
        return None
    details = el["details"]
    osym = _route(out, details["ticker"], underlying, configured, el)
    if osym is None:
        return None
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
    ok, quote_ts = _provider_ns(out, el, "last_quote.last_updated", q.get("last_updated"), rx_ns, limits)
    if not ok:
        bid = ask = None
    iv = _opt_num(out, el, "implied_volatility", el.get("implied_volatility"), -MAX_IV, MAX_IV)
    oi = _opt_count(out, el, "open_interest", el.get("open_interest"))
    day = el.get("day") or {}
    volume = _opt_count(out, el, "day.volume", day.get("volume"))
    ua = el.get("underlying_asset") or {}
    value = _opt_num(out, el, "underlying", ua.get("value", ua.get("price")))
    ok, spot_ts = _provider_ns(out, el, "underlying_asset.last_updated", ua.get("last_updated"), rx_ns, limits)
    spot = _Timed(value, spot_ts, _delayed(ua)) if ok and value is not None and value > 0 else None
    last = _opt_num(out, el, "last_trade.price", t.get("price"))
    ok, trade_ts = _provider_ns(out, el, "last_trade.sip_timestamp", t.get("sip_timestamp"), rx_ns, limits)
    if not ok:
        last = None
    conditions = t.get("conditions") or ()
    shares = _opt_count(out, el, "shares_per_contract", details.get("shares_per_contract"))
    contract = ChainContract(
        **osym.identity(),
        bid=bid,
        ask=ask,
        last=last if last is not None and last > 0 else None,
        iv=iv if iv is not None and iv > 0 else None,
        delta=_opt_num(out, el, "delta", g.get("delta"), -MAX_GREEK, MAX_GREEK),
        gamma=_opt_num(out, el, "gamma", g.get("gamma"), -MAX_GREEK, MAX_GREEK),
        oi=oi,
        volume=volume,
        quote_ts_ns=quote_ts,
        trade_ts_ns=trade_ts,
        trade_conditions=tuple(
            c for c in conditions if isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_CODE
        ),
        shares=shares if shares and shares != STANDARD_SHARES else None,
    )
    return contract, spot, _delayed(q) or (last is not None and _delayed(t))


def parse_rest_indices(data: bytes, rx_ns: int, underlying: str, limits: Limits = Limits()) -> Parsed:
    """The indices snapshot (``/v3/snapshot/indices``) to Spot events at the provider's
    ``last_updated``; NOT_FOUND items are dropped."""
    out = Parsed()
    try:
        body = loads(data)
        results = body["results"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        out.reject(RejectReason.MALFORMED_JSON, f"indices snapshot: {exc}", data)
        return out
    if not isinstance(results, list):
        out.reject(RejectReason.MALFORMED_FRAME, "indices snapshot: 'results' is not a list", data)
        return out
    for el in results:
        if not isinstance(el, dict):
            out.reject(RejectReason.MALFORMED_ELEMENT, "not an object", el)
            continue
        if "error" in el:
            out.drop(DropReason.PROVIDER_ERROR_ITEM)
            continue
        ticker = el.get("ticker")
        if not isinstance(ticker, str):  # the provider answers "I:SPX" or, in its own example, "SPX"
            out.reject(RejectReason.BAD_SYMBOL, f"index ticker {excerpt(ticker)[:40]} is not a string", el)
            continue
        vol = ticker.removeprefix(INDEX_PREFIX) == VOL_INDEX
        if ticker.removeprefix(INDEX_PREFIX) != underlying and not vol:
            out.drop(DropReason.UNCONFIGURED_UNDERLYING)
            continue
        try:
            value = bounded(num(el.get("value")), "index value", 0, MAX_PRICE)
        except RangeError as exc:
            out.reject(RejectReason.OUT_OF_RANGE, str(exc), el)
            continue
        except (ValueError, TypeError) as exc:
            out.reject(RejectReason.NON_FINITE, str(exc), el)
            continue
        if value is None or value <= 0:
            out.reject(RejectReason.MALFORMED_ELEMENT, "index without a positive value", el)
            continue
        ok, ts = _provider_ns(out, el, "last_updated", el.get("last_updated"), rx_ns, limits)
        if ok and vol:
            out.events.append(
                VolIndex(name=VOL_INDEX, value=value, ts_ns=ts or rx_ns, rx_time=ts is None, delayed=_delayed(el))
            )
        elif ok:
            spot = Spot(underlying=underlying, value=value, ts_ns=ts or rx_ns, rx_time=ts is None, delayed=_delayed(el))
            out.events.append(spot)
    return out
