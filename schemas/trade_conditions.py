"""Options trade conditions: which prints count toward volume and flow, and which set the last price.

The ids and names are the provider's options trade conditions, as its REST conditions reference lists
them (``GET /v3/reference/conditions?asset_class=options&data_type=trade``; massive.com/docs, "Condition
Codes"). Each maps one OPRA last-sale message type (the four-letter code), and what a print of that
type does follows OPRA's definition of it (OPRA Binary Output Specification, "Message Type"):

* **Cancellations** (CANC, CNCL, CNCO, CNOL) report that an earlier print is void. They are not trades:
  they add no volume and set no price. The feed does not say which earlier print they void, so that
  print stays counted; every cancellation is counted (``marketswarm_trade_prints_total``) so an
  operator can see how much volume that leaves in.
* **Late or out-of-sequence reports** are real trades. A late report in sequence (LATE, OPNL) counts
  fully; one out of sequence (OSEQ, OPEN) counts toward volume but is not the last price, since later
  trades were already reported.
* **Complex-order legs** (multi-leg and stock-option trades, MLET through CBMO) are real contracts traded,
  so they count toward volume, but each leg is priced as part of its package, not against the
  contract's own market: they never set the last price.
* **Multilateral compression** (MCTP) closes positions at off-market prices by agreement: neither volume
  nor price.
* Regular prints (AUTO, REOP, ISOI, auctions, crosses, floor trades, extended hours) count fully.

A print with several conditions counts toward volume only if every one of them allows it, and sets the
last price only if every one allows that; a condition id not in the table is counted
(``unknown``) and treated as a regular print, so a new provider code never silently drops volume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    id: int
    code: str  # OPRA message type
    name: str  # the provider's name
    volume: bool  # counts toward volume and trade flow
    last: bool  # may set the last price


def _c(id_: int, code: str, name: str, volume: bool, last: bool) -> Condition:
    return Condition(id_, code, name, volume, last)


CONDITIONS: dict[int, Condition] = {
    c.id: c
    for c in (
        _c(201, "CANC", "Canceled", False, False),
        _c(202, "OSEQ", "Late and Out Of Sequence", True, False),
        _c(203, "CNCL", "Last and Canceled", False, False),
        _c(204, "LATE", "Late", True, True),
        _c(205, "CNCO", "Opening Trade and Canceled", False, False),
        _c(206, "OPEN", "Opening Trade, Late, and Out Of Sequence", True, False),
        _c(207, "CNOL", "Only Trade and Canceled", False, False),
        _c(208, "OPNL", "Opening Trade and Late", True, True),
        _c(209, "AUTO", "Automatic Execution", True, True),
        _c(210, "REOP", "Reopening Trade", True, True),
        _c(219, "ISOI", "Intermarket Sweep Order", True, True),
        _c(227, "SLAN", "Single Leg Auction Non ISO", True, True),
        _c(228, "SLAI", "Single Leg Auction ISO", True, True),
        _c(229, "SLCN", "Single Leg Cross Non ISO", True, True),
        _c(230, "SLCI", "Single Leg Cross ISO", True, True),
        _c(231, "SLFT", "Single Leg Floor Trade", True, True),
        _c(232, "MLET", "Multi Leg auto-electronic trade", True, False),
        _c(233, "MLAT", "Multi Leg Auction", True, False),
        _c(234, "MLCT", "Multi Leg Cross", True, False),
        _c(235, "MLFT", "Multi Leg floor trade", True, False),
        _c(236, "MESL", "Multi Leg auto-electronic trade against single leg(s)", True, False),
        _c(237, "TLAT", "Stock Options Auction", True, False),
        _c(238, "MASL", "Multi Leg Auction against single leg(s)", True, False),
        _c(239, "MFSL", "Multi Leg floor trade against single leg(s)", True, False),
        _c(240, "TLET", "Stock Options auto-electronic trade", True, False),
        _c(241, "TLCT", "Stock Options Cross", True, False),
        _c(242, "TLFT", "Stock Options floor trade", True, False),
        _c(243, "TESL", "Stock Options auto-electronic trade against single leg(s)", True, False),
        _c(244, "TASL", "Stock Options Auction against single leg(s)", True, False),
        _c(245, "TFSL", "Stock Options floor trade against single leg(s)", True, False),
        _c(246, "CBMO", "Multi Leg Floor Trade of Proprietary Products", True, False),
        _c(247, "MCTP", "Multilateral Compression Trade of Proprietary Products", False, False),
        _c(248, "EXHT", "Extended Hours Trade", True, True),
    )
}
CANCELLATIONS = frozenset(c.id for c in CONDITIONS.values() if c.code in ("CANC", "CNCL", "CNCO", "CNOL"))


@dataclass(frozen=True)
class Effect:
    volume: bool  # the print's size counts toward volume and flow
    last: bool  # the print may set the contract's last price
    label: str  # for counting: regular, cancel, excluded (no volume), no_last, unknown


REGULAR = Effect(True, True, "regular")


def effect(conditions: Iterable[int]) -> Effect:
    """What a print with these conditions does (no conditions: a regular print)."""
    volume = last = True
    unknown = cancel = False
    for cid in conditions:
        c = CONDITIONS.get(cid)
        if c is None:
            unknown = True
            continue
        volume &= c.volume
        last &= c.last
        cancel |= cid in CANCELLATIONS
    if cancel:
        return Effect(False, False, "cancel")
    if not volume:
        return Effect(False, last, "excluded")
    if not last:
        return Effect(True, False, "no_last")
    return Effect(True, True, "unknown") if unknown else REGULAR
