"""A Cboe delayed-quote chain file's identity: its underlying and its download time (the snapshot's event time).

The file source reads these to route and time a file; normalize's parser (agents/normalize/cboe_csv.py)
reads the rest of it. Line 3 holds the download time, ``Date: <time> ET``, in several formats.
"""

from __future__ import annotations

import datetime as dt
import re

from marketswarm.schemas.occ import SymbolError, parse_occ

_TZ = {"EST": dt.timezone(dt.timedelta(hours=-5)), "EDT": dt.timezone(dt.timedelta(hours=-4))}
_DATE_FORMATS = ("%B %d %Y %I:%M %p", "%d %B %Y %I:%M %p")


class CboeFormatError(ValueError):
    """Raised when a file is not a Cboe delayed-quote chain (header lines or columns are wrong)."""


def parse_download_time(cell: str) -> int:
    """Line 3's date cell to epoch ns UTC, e.g. ``Date: February 7, 2023 at 5:34 PM EST``."""
    text = cell.strip().strip('"')
    if text.startswith("Date:"):
        text = text[len("Date:") :]
    text = re.sub(r"\s+at\s+", " ", text.replace(",", " "))
    text = re.sub(r"\s+", " ", text).strip()
    m = re.match(r"^(?P<body>.*\d{1,2}:\d{2} [AP]M) (?P<tz>E[SD]T)$", text)
    if m is None:
        raise CboeFormatError(f"unrecognised download time {cell!r}")
    for fmt in _DATE_FORMATS:
        try:
            local = dt.datetime.strptime(m.group("body"), fmt)
        except ValueError:
            continue
        return int(local.replace(tzinfo=_TZ[m.group("tz")]).timestamp()) * 1_000_000_000
    raise CboeFormatError(f"unrecognised download time {cell!r}")


def date_cell(line: str) -> str:
    """Line 3's date, read from the raw line: it may be quoted or not, and it contains commas."""
    m = re.search(r"Date:\s*(.*?)\s*\"?,\s*\"?Bid:", line) or re.search(r"Date:\s*(.*)$", line)
    if m is None:
        raise CboeFormatError(f"line 3 has no 'Date:' cell: {line!r}")
    return m.group(1).strip().strip('"')


def underlying_of_file(data: bytes) -> str | None:
    """The underlying of a chain file, from the first option symbol in it (SPXW -> SPX)."""
    for line in data.decode("utf-8-sig", "replace").splitlines()[4:50]:
        cells = line.split(",")
        if len(cells) > 1:
            try:
                return parse_occ(cells[1].strip()).underlying
            except SymbolError:
                continue
    return None
