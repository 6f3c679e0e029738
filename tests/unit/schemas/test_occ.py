"""OCC symbols: parse, format, round trip, clear errors."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketswarm.schemas.occ import SymbolError, format_occ, parse_occ, strike_to_x1000


@pytest.mark.parametrize(
    ("symbol", "root", "underlying", "expiry", "side", "strike_x1000"),
    [
        ("SPXW240108C04700000", "SPXW", "SPX", dt.date(2024, 1, 8), "call", 4_700_000),
        ("O:SPXW230712C04500000", "SPXW", "SPX", dt.date(2023, 7, 12), "call", 4_500_000),
        ("SPX240119P04000000", "SPX", "SPX", dt.date(2024, 1, 19), "put", 4_000_000),
        ("NDXP240322C18000000", "NDXP", "NDX", dt.date(2024, 3, 22), "call", 18_000_000),
        ("NDX240322P00001000", "NDX", "NDX", dt.date(2024, 3, 22), "put", 1_000),
        ("RUTW240322C02000000", "RUTW", "RUT", dt.date(2024, 3, 22), "call", 2_000_000),
        ("XSP240322C00500000", "XSP", "XSP", dt.date(2024, 3, 22), "call", 500_000),
        ("QQQ240621C00129780", "QQQ", "QQQ", dt.date(2024, 6, 21), "call", 129_780),
        ("O:SPY241220P00720000", "SPY", "SPY", dt.date(2024, 12, 20), "put", 720_000),
        ("IWM250117C00200000", "IWM", "IWM", dt.date(2025, 1, 17), "call", 200_000),
        ("AAPL1250117C00150000", "AAPL1", "AAPL", dt.date(2025, 1, 17), "call", 150_000),
    ],
)
def test_parse(symbol: str, root: str, underlying: str, expiry: dt.date, side: str, strike_x1000: int) -> None:
    s = parse_occ(symbol)
    assert (s.root, s.underlying, s.expiry, s.side, s.strike_x1000) == (root, underlying, expiry, side, strike_x1000)
    assert s.occ == symbol.removeprefix("O:")
    assert s.provider == "O:" + s.occ


def test_adjusted_strike_is_exact() -> None:
    assert parse_occ("QQQ240621C00129780").strike == 129.78
    assert strike_to_x1000("129.78") == 129_780
    assert strike_to_x1000("4700.00") == 4_700_000
    assert strike_to_x1000(0.5) == 500


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "too short"),
        ("SPXW240108X04700000", "not ROOT"),
        ("SPXW241308C04700000", "invalid expiry"),
        ("SPXW240230C04700000", "invalid expiry"),
        ("spxw240108C04700000", "not ROOT"),
        ("TOOLONGROOT240108C04700000", "not ROOT"),
        ("SPXW240108C0470000", "not ROOT"),
        ("SPXW240108C00000000", "strike must be positive"),
        ("AAPL", "too short"),
        ("O:", "too short"),
    ],
)
def test_invalid_symbols_get_a_clear_error(bad: str, why: str) -> None:
    with pytest.raises(SymbolError, match=why):
        parse_occ(bad)


roots = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=6)
dates = st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31))
sides = st.sampled_from(["call", "put"])
strikes = st.integers(min_value=1, max_value=99_999_999)


@given(roots, dates, sides, strikes, st.booleans())
def test_format_then_parse_is_identity(root: str, expiry: dt.date, side: str, strike: int, prefix: bool) -> None:
    symbol = format_occ(root, expiry, side, strike, prefix=prefix)  # type: ignore[arg-type]
    parsed = parse_occ(symbol)
    assert (parsed.root, parsed.expiry, parsed.side, parsed.strike_x1000) == (root, expiry, side, strike)
    assert (parsed.provider if prefix else parsed.occ) == symbol


@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_symbol_error(text: str) -> None:
    try:
        s = parse_occ(text)
    except SymbolError:
        return
    assert s.occ == text.removeprefix("O:")
