"""Cboe delayed-quote CSV chains ("Download CSV" of cboe.com/delayed_quotes) to a ChainSnapshot.

Layout: line 1 empty; line 2 ``<name>,Last: <spot>,Change: ..`` (the name may be quoted); line 3
``Date: <download time> ET`` in several formats, possibly quoted, with quoted thousands in the other
cells; line 4 a 22-column header; then one row per (expiry, strike): the call on the left, the put on
the right. Quirks handled: the line-3 date formats (``February 5 2022, 8:09 PM EST``,
``June 11, 2022, 8:47 PM EDT``, ``February 7, 2023 at 5:34 PM EST``, day-first ``9 June 2023, 1:40 PM
EDT``); SPX/SPXW and NDX/NDXP roots mixed; IV = 0 means "no IV"; bid or ask 0 means that side is
absent; a leg with an empty symbol is absent. The download time is the snapshot's event time; it is
not the trading day (weekend downloads show the previous close). The spot is timed by it; the quotes
carry no time of their own (so a provider-timed quote beats them), and all of it is flagged delayed,
as the table is.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection

from marketswarm.agents.normalize.parsing import (
    MAX_GREEK,
    MAX_IV,
    MAX_PRICE,
    MAX_SIZE,
    NonFiniteError,
    Parsed,
    RangeError,
    bounded,
)
from marketswarm.schemas.cboefile import CboeFormatError, date_cell, parse_download_time
from marketswarm.schemas.events import ChainContract, ChainSnapshot
from marketswarm.schemas.occ import SymbolError, parse_occ, strike_to_x1000
from marketswarm.schemas.rejects import DropReason, RejectReason

HEADER = [
    "Expiration Date", "Calls", "Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta", "Gamma",
    "Open Interest", "Strike", "Puts", "Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta", "Gamma",
    "Open Interest",
]  # fmt: skip


def _f(cell: str) -> float | None:
    cell = cell.strip().replace(",", "")
    if not cell:
        return None
    v = float(cell)
    if not math.isfinite(v):
        raise NonFiniteError(f"non-finite value {cell!r}")
    return v


def parse_header(lines: list[list[str]], line3: str) -> tuple[float, int]:
    """(spot, download time ns) from line 2 (as CSV cells) and line 3 (raw)."""
    try:
        last = next(c for c in lines[1] if c.strip().startswith("Last:"))
        spot = float(last.split(":", 1)[1].strip().replace(",", ""))
    except (StopIteration, ValueError, IndexError) as exc:
        raise CboeFormatError(f"line 2 has no 'Last: <spot>': {lines[1] if len(lines) > 1 else ''}") from exc
    if not 0 < spot <= MAX_PRICE:  # also NaN
        raise CboeFormatError(f"line 2's spot {spot!r} is not a price")
    return spot, parse_download_time(date_cell(line3))


def parse_cboe_csv(data: bytes, underlying: str, configured: Collection[str]) -> Parsed:
    """A whole CSV file to one ChainSnapshot; a bad row side is rejected alone."""
    out = Parsed()
    try:
        lines = data.decode("utf-8-sig").splitlines()
        # The header lines are read one by one: a hand-edited line 3 can open a quote it never
        # closes ("Volume: 28,253,899), which would swallow the whole file in one csv.reader.
        head = [next(csv.reader([line]), []) for line in lines[:4]]
        spot, ts_ns = parse_header(head, lines[2] if len(lines) > 2 else "")
        if len(head) < 4 or [c.strip() for c in head[3]] != HEADER:
            raise CboeFormatError("line 4 is not the 22-column chain header")
    except (UnicodeDecodeError, csv.Error, CboeFormatError) as exc:
        out.reject(RejectReason.BAD_CSV, str(exc), data)
        return out
    contracts: list[ChainContract] = []
    try:
        _rows(out, lines, underlying, configured, contracts)
    except csv.Error as exc:
        out.reject(RejectReason.BAD_CSV, f"unreadable rows: {exc}", data)
    if contracts:
        out.events.append(
            ChainSnapshot(
                underlying=underlying,
                ts_ns=ts_ns,
                spot=spot,
                spot_ts_ns=ts_ns,  # the file states its spot as of its download time
                spot_delayed=True,  # Cboe's delayed quote table: quotes and last are delayed
                delayed=True,
                source="cboe.csv",
                contracts=tuple(sorted(contracts, key=lambda c: c.symbol)),
            )  # fmt: skip
        )
    return out


def _rows(
    out: Parsed, lines: list[str], underlying: str, configured: Collection[str], contracts: list[ChainContract]
) -> None:
    for lineno, row in enumerate(csv.reader(lines[4:]), start=5):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 22:
            out.reject(RejectReason.BAD_CSV, f"line {lineno}: {len(row)} fields, expected 22", ",".join(row))
            continue
        for side_cells in (row[1:11], row[12:22]):
            symbol = side_cells[0].strip()
            if not symbol:
                continue  # an empty leg
            try:
                c = _leg(out, lineno, row, symbol, side_cells, row[11], underlying, configured)
            except SymbolError as exc:
                out.reject(RejectReason.BAD_SYMBOL, f"line {lineno}: {exc}", ",".join(row))
                continue
            except RangeError as exc:
                out.reject(RejectReason.OUT_OF_RANGE, f"line {lineno}: {exc}", ",".join(row))
                continue
            except NonFiniteError as exc:
                out.reject(RejectReason.NON_FINITE, f"line {lineno}: {exc}", ",".join(row))
                continue
            except ValueError as exc:
                out.reject(RejectReason.BAD_CSV, f"line {lineno}: {exc}", ",".join(row))
                continue
            if c is None:
                out.drop(DropReason.UNCONFIGURED_UNDERLYING)
                continue
            contracts.append(c)


def _leg(
    out: Parsed,
    lineno: int,
    row: list[str],
    symbol: str,
    cells: list[str],
    strike_cell: str,
    underlying: str,
    configured: Collection[str],
) -> ChainContract | None:
    osym = parse_occ(symbol)
    if osym.underlying != underlying:
        if osym.underlying in configured:
            raise SymbolError(f"{symbol} belongs to {osym.underlying}, not {underlying}")
        return None
    if strike_to_x1000(strike_cell) != osym.strike_x1000:
        raise ValueError(f"strike column {strike_cell} disagrees with {symbol}")
    _, last, _net, bid, ask, volume, iv, delta, gamma, oi = cells
    b, a = _f(bid), _f(ask)
    # A bad quote loses the quote, not the contract: the chain's geometry stays what the file says.
    if (b is not None and b < 0) or (a is not None and a < 0):
        out.reject(RejectReason.NEGATIVE_PRICE, f"line {lineno}: {symbol} bid/ask {bid}/{ask}", ",".join(row))
        b = a = None
    if b is not None and a is not None and a > 0 and b > a:
        out.reject(RejectReason.CROSSED_QUOTE, f"line {lineno}: {symbol} bid {bid} > ask {ask}", ",".join(row))
        b = a = None
    if max(b or 0, a or 0) > MAX_PRICE:
        out.reject(RejectReason.OUT_OF_RANGE, f"line {lineno}: {symbol} bid/ask {bid}/{ask}", ",".join(row))
        b = a = None
    lastf = bounded(_f(last), "last", 0, MAX_PRICE)
    ivf = bounded(_f(iv), "iv", -MAX_IV, MAX_IV)
    oif = bounded(_f(oi), "open interest", 0, MAX_SIZE)
    vol = bounded(_f(volume), "volume", 0, MAX_SIZE)
    return ChainContract(
        **osym.identity(),
        bid=b if b else None,
        ask=a if a else None,
        last=lastf if lastf else None,
        iv=ivf if ivf else None,
        delta=bounded(_f(delta), "delta", -MAX_GREEK, MAX_GREEK),
        gamma=bounded(_f(gamma), "gamma", -MAX_GREEK, MAX_GREEK),
        oi=int(oif) if oif is not None else None,
        volume=int(vol) if vol is not None else None,
    )
