"""Every real Cboe chain ingests: contract counts, spot, expiries and download times as SOURCES.md lists."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from marketswarm.agents.normalize.cboe_csv import parse_cboe_csv
from marketswarm.schemas.cboefile import parse_download_time, underlying_of_file
from marketswarm.schemas.events import ChainSnapshot

ET = ZoneInfo("America/New_York")


def sources_table(shared: Path) -> dict[str, dict[str, str]]:
    """The provenance table of SOURCES.md: an oracle written independently of our parser."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in (shared / "SOURCES.md").read_text().splitlines():
        if line.startswith("| file |"):
            header = [c.strip() for c in line.strip("|").split("|")]
            continue
        if header and line.startswith("| ") and ".csv" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


def test_every_file_ingests_as_sources_md_says(real_data: Path) -> None:
    table = sources_table(real_data)
    files = sorted((real_data / "cboe").glob("*.csv"))
    assert len(files) == len(table) == 23
    for path in files:
        data = path.read_bytes()
        row = table[path.name]
        u = underlying_of_file(data)
        assert u == row["underlying"], path.name
        parsed = parse_cboe_csv(data, u, [u])
        assert parsed.rejects == [], (path.name, parsed.rejects[:3])
        [snap] = parsed.events
        assert isinstance(snap, ChainSnapshot)
        # Two legs per row, minus empty legs, counted straight from the CSV.
        legs = sum(1 for r in csv.reader(data.decode().splitlines()[4:]) for s in (r[1], r[12]) if s.strip())
        assert len(snap.contracts) == legs == int(row["contracts"]), path.name
        assert snap.spot == pytest.approx(float(row["spot (`Last`)"])), path.name
        assert len({c.expiry for c in snap.contracts}) == int(row["expiries"]), path.name
        # Line-3 time, as the table states it in ET (weekday, date, time).
        m = re.search(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2})", row["line-3 time"])
        assert m is not None
        local = dt.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M").replace(tzinfo=ET)
        assert snap.ts_ns == int(local.timestamp()) * 1_000_000_000, path.name
        # Roots map to the underlying; strikes are exact thousandths.
        assert {c.underlying for c in snap.contracts} == {u}
        for c in snap.contracts[:50]:
            assert c.symbol.endswith(f"{c.strike_x1000:08d}")


@pytest.mark.parametrize(
    ("cell", "iso"),
    [
        ("Date: February 5 2022, 8:09 PM EST", "2022-02-05T20:09:00-05:00"),
        ('"Date: June 11, 2022, 8:47 PM EDT"', "2022-06-11T20:47:00-04:00"),
        ("Date: February 7, 2023 at 5:34 PM EST", "2023-02-07T17:34:00-05:00"),
        ("Date: 9 June 2023, 1:40 PM EDT", "2023-06-09T13:40:00-04:00"),
        ("Date: 22 March 2024, 9:46 PM EDT", "2024-03-22T21:46:00-04:00"),
    ],
)
def test_download_time_formats(cell: str, iso: str) -> None:
    assert parse_download_time(cell) == int(dt.datetime.fromisoformat(iso).timestamp()) * 1_000_000_000


def test_quirks_adjusted_strike_mixed_roots_and_absent_sides(real_data: Path) -> None:
    qqq = parse_cboe_csv((real_data / "cboe/qqq_2024-03-22_2146ET.csv").read_bytes(), "QQQ", ["QQQ"])
    by = {c.symbol: c for c in qqq.events[0].contracts}  # type: ignore[union-attr]
    assert by["QQQ240621C00129780"].strike_x1000 == 129_780
    spx = parse_cboe_csv((real_data / "cboe/spx_2024-01-07_1052ET.csv").read_bytes(), "SPX", ["SPX"])
    roots = {c.root for c in spx.events[0].contracts}  # type: ignore[union-attr]
    assert roots == {"SPX", "SPXW"}
    c = {c.symbol: c for c in spx.events[0].contracts}["SPXW240105P01400000"]  # type: ignore[union-attr]
    assert c.bid is None and c.ask == 0.05  # bid 0 = no bid
    assert c.iv is None  # IV 0 = unknown


def test_bad_rows_lose_only_themselves() -> None:
    head = (
        "\nS&P 500 INDEX,Last: 4697.2402,Change:  8.5602\n"
        '"Date: January 7, 2024 at 10:52 AM EST",Bid: 1,Ask: 2,Size: 1*1,Volume: 0\n'
        "Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,"
        "Puts,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest\n"
    )
    tail = ",1,0,1.1,1.3,1,0.1,-0.5,0.01,10\n"
    good = "Fri Jan 05 2024,SPXW240105C04700000,1,0,1.0,1.2,1,0.1,0.5,0.01,10,4700.00,SPXW240105P04700000" + tail
    crossed = "Fri Jan 05 2024,SPXW240105C04705000,1,0,2.0,1.2,1,0.1,0.5,0.01,10,4705.00,SPXW240105P04705000" + tail
    short = "Fri Jan 05 2024,SPXW240105C04710000,1\n"
    badsym = (
        "Fri Jan 05 2024,SPXW24010XC04715000,1,0,1.0,1.2,1,0.1,0.5,0.01,10,4715.00,,1,0,1.1,1.3,1,0.1,-0.5,0.01,10\n"
    )
    parsed = parse_cboe_csv((head + good + crossed + short + badsym).encode(), "SPX", ["SPX"])
    reasons = sorted(r[0].value for r in parsed.rejects)
    assert reasons == ["bad_csv", "bad_symbol", "crossed_quote"]
    contracts = {c.symbol: c for c in parsed.events[0].contracts}  # type: ignore[union-attr]
    assert set(contracts) == {
        "SPXW240105C04700000", "SPXW240105P04700000", "SPXW240105C04705000", "SPXW240105P04705000"
    }  # fmt: skip
    assert contracts["SPXW240105C04705000"].bid is None  # the crossed quote is dropped, the contract kept


def test_not_a_chain_is_one_reject() -> None:
    parsed = parse_cboe_csv(b"hello,world\n", "SPX", ["SPX"])
    assert [r[0].value for r in parsed.rejects] == ["bad_csv"] and not parsed.events
