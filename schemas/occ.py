"""OCC option symbols: parse and format, with or without the provider's ``O:`` prefix.

An OCC symbol is ``ROOT`` (1-6 characters) + ``YYMMDD`` + ``C``/``P`` + the strike in thousandths on
8 digits: ``SPXW240108C04700000`` is the SPX weekly call of 2024-01-08 at 4700. Strikes stay integers
in thousandths (``strike_x1000``) so adjusted strikes such as QQQ's 129.78 are exact.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

Side = Literal["call", "put"]

PROVIDER_PREFIX = "O:"
INDEX_PREFIX = "I:"
# The market's volatility index: an input of every underlying's models (schemas/events.py VolIndex).
VOL_INDEX = "VIX"
VOL_INDEX_TICKER = INDEX_PREFIX + VOL_INDEX

# Roots that are a different series of the same underlying: weeklies and PM-settled series of indices.
ROOT_TO_UNDERLYING: dict[str, str] = {
    "SPXW": "SPX",
    "SPXPM": "SPX",
    "NDXP": "NDX",
    "RUTW": "RUT",
    "XSPW": "XSP",
    "VIXW": "VIX",
    "DJXW": "DJX",
}
# Where two roots list the same (expiry, strike) -- SPX's AM-settled monthlies beside SPXW on the third
# Friday -- the heatmap grid takes the higher priority: the PM-settled weekly series traders quote.
ROOT_PRIORITY: dict[str, int] = {"SPXW": 2, "NDXP": 2, "RUTW": 2, "XSPW": 2, "SPXPM": 1}
# Index underlyings take the ``I:`` prefix at the provider; every other underlying is an equity/ETF.
INDEX_UNDERLYINGS = frozenset({"SPX", "NDX", "RUT", "XSP", "VIX", "DJX", "OEX", "XEO"})

_OCC = re.compile(r"^(?P<root>[A-Z0-9]{1,6})(?P<date>\d{6})(?P<cp>[CP])(?P<strike>\d{8})$")
_ADJUSTED_ROOT = re.compile(r"^(?P<base>[A-Z]+)\d$")


class SymbolError(ValueError):
    """Raised when a string is not a valid OCC option symbol; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class OptionSymbol:
    root: str
    underlying: str
    expiry: dt.date
    side: Side
    strike_x1000: int
    occ: str  # the canonical OCC string, no prefix (what format_occ gives back)

    @property
    def strike(self) -> float:
        return self.strike_x1000 / 1000

    @property
    def provider(self) -> str:
        return PROVIDER_PREFIX + self.occ

    def identity(self) -> dict[str, Any]:
        """The fields that name a contract in a chain snapshot (events.ChainContract), from its symbol."""
        return {
            "symbol": self.occ,
            "underlying": self.underlying,
            "root": self.root,
            "expiry": self.expiry.isoformat(),
            "side": self.side,
            "strike_x1000": self.strike_x1000,
        }


def underlying_of_root(root: str) -> str:
    """SPXW -> SPX, NDXP -> NDX; an adjusted equity root such as ``AAPL1`` -> AAPL; else the root."""
    if root in ROOT_TO_UNDERLYING:
        return ROOT_TO_UNDERLYING[root]
    m = _ADJUSTED_ROOT.match(root)
    if m and len(root) > 1:
        return m.group("base")
    return root


def parse_provider_option(symbol: str) -> OptionSymbol:
    """The provider's form, ``O:SPXW240108C04700000``, and only it: a bare OCC symbol is not what the
    provider sends (SymbolError)."""
    if not isinstance(symbol, str):
        raise SymbolError(f"option symbol must be a string, got {type(symbol).__name__}")
    if not symbol.startswith(PROVIDER_PREFIX):
        raise SymbolError(f"{symbol[:40]!r}: the provider's option symbols start with {PROVIDER_PREFIX!r}")
    return parse_occ(symbol)


@lru_cache(maxsize=262_144)
def parse_occ(symbol: str) -> OptionSymbol:
    """Parse ``SPXW240108C04700000`` or ``O:SPXW240108C04700000``; raise SymbolError if invalid."""
    if not isinstance(symbol, str):
        raise SymbolError(f"option symbol must be a string, got {type(symbol).__name__}")
    s = symbol[2:] if symbol.startswith(PROVIDER_PREFIX) else symbol
    m = _OCC.match(s)
    if m is None:
        if len(s) < 16:
            raise SymbolError(f"{symbol!r}: too short for ROOT+YYMMDD+C/P+8-digit strike")
        raise SymbolError(f"{symbol!r}: not ROOT(1-6 A-Z0-9)+YYMMDD+C/P+8-digit strike")
    d = m.group("date")
    try:
        expiry = dt.date(2000 + int(d[:2]), int(d[2:4]), int(d[4:6]))
    except ValueError as exc:
        raise SymbolError(f"{symbol!r}: invalid expiry date {d}") from exc
    strike_x1000 = int(m.group("strike"))
    if strike_x1000 <= 0:
        raise SymbolError(f"{symbol!r}: strike must be positive")
    root = m.group("root")
    return OptionSymbol(
        root=root,
        underlying=underlying_of_root(root),
        expiry=expiry,
        side="call" if m.group("cp") == "C" else "put",
        strike_x1000=strike_x1000,
        occ=s,  # the pattern admits only the canonical form
    )


def format_occ(root: str, expiry: dt.date, side: Side, strike_x1000: int, *, prefix: bool = False) -> str:
    """The inverse of parse_occ: ``format_occ('SPXW', date(2024,1,8), 'call', 4_700_000)``."""
    if not (1 <= len(root) <= 6) or not root.isalnum() or root.upper() != root:
        raise SymbolError(f"invalid root {root!r}")
    if not (0 < strike_x1000 < 100_000_000):
        raise SymbolError(f"strike {strike_x1000} (thousandths) does not fit 8 digits")
    if not (2000 <= expiry.year < 2100):
        raise SymbolError(f"expiry {expiry} outside 2000-2099")
    s = f"{root}{expiry:%y%m%d}{'C' if side == 'call' else 'P'}{strike_x1000:08d}"
    return PROVIDER_PREFIX + s if prefix else s


def strike_to_x1000(strike: float | str) -> int:
    """A strike as printed (``"129.78"``, 4700.0) to exact thousandths."""
    if isinstance(strike, str):
        whole, _, frac = strike.strip().partition(".")
        frac = (frac + "000")[:3]
        return int(whole or "0") * 1000 + int(frac)
    return int(round(strike * 1000))


def provider_index_ticker(underlying: str) -> str:
    """The provider's ticker for an underlying's spot/chain: ``I:SPX`` for indices, ``SPY`` for ETFs."""
    return INDEX_PREFIX + underlying if underlying in INDEX_UNDERLYINGS else underlying


def series_priority(root: str) -> int:
    return ROOT_PRIORITY.get(root, 0)
